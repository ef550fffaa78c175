use std::path::PathBuf;

use dino_core::CoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Import(#[from] dino_import::ImportError),
    #[error("{path}: tensor `{key}`: {source}")]
    Tch {
        path: PathBuf,
        key: String,
        #[source]
        source: tch::TchError,
    },
    /// A head BatchNorm layer (`mlp.1`) that cannot normalise this batch.
    #[error("head BatchNorm `{layer}`: {why}")]
    BatchNorm { layer: String, why: String },
    /// Summing a head BatchNorm layer's batch statistics over the processes failed.
    #[error("head BatchNorm `{layer}`: summing the batch statistics over the processes: {source}")]
    BatchStatsSync {
        layer: String,
        #[source]
        source: crate::sync_bn::SyncError,
    },
    #[error("{path}: file kind `{kind}` holds no {wanted}")]
    WrongKind {
        path: PathBuf,
        kind: String,
        wanted: &'static str,
    },
}
