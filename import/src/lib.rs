//! dino-import: official DINO weights into dino-rs, without libtorch or Python.
//!
//! Reads PyTorch `.pth` files (a small pickle VM that interprets, never executes) and
//! safetensors files with the official key names, infers the architecture from the
//! tensor shapes and writes a self-describing dino-rs backbone file. Both `dino-export`
//! (which also exports a `.pth` on the fly) and `dino-train import` use it, so the
//! trainer does not link the exporter and the exporter does not link libtorch.

pub mod error;
pub mod foreign;
pub mod format;
pub mod head;
pub mod pretrained;
pub mod pth;
pub mod request;
pub mod state;

pub use error::{ImportError, ImportFailed};
pub use foreign::{ImportOptions, Imported, import, infer_vit, read_foreign};
pub use format::Format;
pub use pretrained::{DEFAULT_CHECKPOINT_KEY, Pretrained, read_pretrained, read_pretrained_with};
pub use request::{ImportReport, ImportRequest};
pub use state::{TrainingState, read_training_state};
