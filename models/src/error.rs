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
    #[error("{path}: file kind `{kind}` holds no {wanted}")]
    WrongKind {
        path: PathBuf,
        kind: String,
        wanted: &'static str,
    },
}
