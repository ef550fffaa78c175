use std::path::PathBuf;

use thiserror::Error;

/// Errors of the libtorch-free core. Each names the file and, where there is one, the key.
#[derive(Debug, Error)]
pub enum CoreError {
    #[error("unknown architecture `{0}` (expected one of vit_tiny, vit_small, vit_base)")]
    UnknownArch(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a safetensors file: {why}")]
    NotSafetensors { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    Format { path: PathBuf, why: String },
    #[error(
        "{path}: metadata `{key}` is missing; the file was not written by dino-rs (convert official .pth files with `dino-train import`)"
    )]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{path}: metadata `{key}` is not valid: {why}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        why: String,
    },
    #[error("{path}: tensor `{key}` has dtype {dtype}, which dino-rs cannot read")]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{path}: the weights do not match the architecture:\n{report}")]
    KeyMismatch { path: PathBuf, report: String },
    #[error("{path}: {why}")]
    Image { path: PathBuf, why: String },
}

impl CoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
