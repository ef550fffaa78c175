//! dino-run's library: DINO embeddings, k-NN classification against a gallery and
//! attention maps of models exported by `dino-export`, on ONNX Runtime alone.
//!
//! This crate must never depend on libtorch (`tch`), directly or through another crate:
//! the runtime ships as a small binary plus `libonnxruntime`.

pub mod attention;
pub mod engine;
pub mod error;
pub mod eval;
pub mod gallery;
pub mod knn_answer;
pub mod model;
pub mod pipeline;
pub mod serve;
pub mod session;

pub use error::RuntimeError;
pub use model::{Model, ModelInfo};
pub use session::{Device, SessionOptions};
