//! Typed errors of the exporter and importer; each names the file and, where there is
//! one, the key.

use std::path::PathBuf;

use dino_core::CoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{path}: unknown checkpoint format: {why}")]
    UnknownFormat { path: PathBuf, why: String },
    #[error(
        "{path}: a safetensors file without dino-rs metadata ({why}); convert foreign weights first with `dino-export import {path} --arch <arch> --to teacher.safetensors`"
    )]
    ForeignSafetensors { path: PathBuf, why: String },
    #[error("{path}: cannot read the PyTorch file: {why}")]
    Pth { path: PathBuf, why: String },
    #[error("{path}: missing key `{key}`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: {why}")]
    Weights { path: PathBuf, why: String },
    #[error("{0}")]
    Options(String),
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ExportError {
    pub fn pth(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        Self::Pth {
            path: path.into(),
            why: why.into(),
        }
    }
}
