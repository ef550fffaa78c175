//! Typed errors of the importer. Each names the file and, where there is one, the
//! checkpoint entry, tensor key or archive entry at fault, so that a failed import says
//! where to look; the binaries add nothing but the `importing A to B` line.

use std::path::PathBuf;

use dino_core::CoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImportError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{path}: unknown checkpoint format: {why}")]
    UnknownFormat { path: PathBuf, why: String },
    /// The `.pth` archive as a whole: not a zip, no `data.pkl`, foreign byte order.
    #[error("{path}: cannot read the PyTorch file: {why}")]
    Pth { path: PathBuf, why: String },
    /// An entry of the archive (`data.pkl`, a storage) that cannot be read or unpickled.
    #[error("{path}: cannot read the PyTorch file: {entry}: {why}")]
    Entry {
        path: PathBuf,
        entry: String,
        why: String,
    },
    /// A tensor whose storage or view is unusable.
    #[error("{path}: cannot read the PyTorch file: tensor `{key}`: {why}")]
    Tensor {
        path: PathBuf,
        key: String,
        why: String,
    },
    /// `--key` names an entry the checkpoint does not have.
    #[error("{path}: cannot read the PyTorch file: no entry `{key}`; the file has: {}", .found.join(", "))]
    NoEntry {
        path: PathBuf,
        key: String,
        found: Vec<String>,
    },
    #[error("{path}: no tensors found{}", .entry.as_ref().map(|e| format!(" in entry `{e}`")).unwrap_or_default())]
    NoTensors {
        path: PathBuf,
        entry: Option<String>,
    },
    /// Tensors that are not a DINO ViT backbone, or not the one `--arch`/`--patch-size` say.
    #[error("{path}: {why}")]
    Weights { path: PathBuf, why: String },
}

impl ImportError {
    pub fn pth(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        Self::Pth {
            path: path.into(),
            why: why.into(),
        }
    }

    pub fn weights(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        Self::Weights {
            path: path.into(),
            why: why.into(),
        }
    }
}

/// A failed `import` subcommand: the two files, then the cause (what a user reads first).
#[derive(Debug, Error)]
#[error("importing {} to {}", .file.display(), .to.display())]
pub struct ImportFailed {
    pub file: PathBuf,
    pub to: PathBuf,
    #[source]
    pub source: Box<ImportError>,
}
