//! Shared plumbing of the workspace's tests (the cross-crate tests in `tests/` and the
//! tests of `train/`): where the workspace, the data and the built binaries are, running
//! the binaries and the reference Python (`python/dino_ref` and the scripts beside the
//! tests), and the fixtures several test files use. Numeric comparison is
//! `dino_core::testing::assert_close`.

pub mod export;
pub mod http;
mod paths;
mod run;
pub mod runtime;
pub mod serve;
mod train;

pub use paths::{bin, data_dir, photos, root, s, scratch, sorted_files};
pub use run::{dynamic_deps, output_ok, python, run_ok, run_python};
pub use train::{TINY_CONFIG, cifar_subset, dino_train, write_tiny_config};
