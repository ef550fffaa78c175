//! dino-core: what the trainer, the exporter and the edge runtime share, without libtorch.
//!
//! The runtime (`dino-run`) must never link libtorch, and cargo unifies features across a
//! workspace, so everything the three tools have in common lives here, in a crate that
//! does not depend on `tch` at all: architecture configs, the official weight names,
//! safetensors I/O with self-describing metadata, the position-embedding interpolation,
//! image preprocessing and the k-NN vote.

pub mod config;
pub mod error;
pub mod pos_embed;
pub mod st;
pub mod weights;

pub use config::{EvalTransform, HeadConfig, VitConfig};
pub use error::CoreError;
pub mod attention;
pub mod heatmap;
pub mod image_io;
pub mod image_set;
pub mod knn;
pub mod linear;
pub mod onnx_digest;
pub mod onnx_meta;
pub mod preprocess;
pub mod testing;
