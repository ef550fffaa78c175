//! dino-models: the DINO Vision Transformer and projection head on libtorch.
//!
//! Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (ICCV 2021).
//! Parameters are created under the official weight names, so files round-trip with the
//! released PyTorch checkpoints and timm.

pub mod error;
pub mod head;
pub mod init;
pub mod io;
pub mod sync_bn;
pub mod vit;

pub use error::ModelError;
pub use head::DinoHead;
pub use sync_bn::BatchStatsSync;
pub use vit::VisionTransformer;
