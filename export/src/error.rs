//! Typed errors of the exporter; each names the file and, where there is one, the key.
//! Reading a `.pth` or foreign file fails with `dino-import`'s own error, passed through.

use std::path::PathBuf;

use dino_core::CoreError;
use dino_import::ImportError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("{path}: missing key `{key}`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: {why}")]
    Weights { path: PathBuf, why: String },
    #[error("{head}: this linear head does not fit the backbone {backbone}: {why}")]
    LinearMismatch {
        head: PathBuf,
        backbone: PathBuf,
        why: String,
    },
    #[error("{0}")]
    Options(String),
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
