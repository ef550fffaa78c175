//! The error of dino-train's orchestration modules (configuration, checkpoints, the
//! training loop, evaluation, metrics). The algorithmic and data modules have their own
//! typed errors ([`AlgoError`], [`DataError`]), wrapped here; every variant names the file,
//! the option or the position in training concerned, so the binary only adds context.

use std::path::PathBuf;

use dino_core::CoreError;
use dino_models::ModelError;
use thiserror::Error;

use crate::algo_error::AlgoError;
use crate::config::ConfigError;
use crate::data::DataError;

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint or output folder that does not fit the run asked for.
    #[error("{}: {why}", path.display())]
    Run { path: PathBuf, why: String },
    /// The loss went NaN or infinite; nothing was written after the last good checkpoint.
    #[error(
        "{what} is {value} at epoch {epoch}, step {step}: training stopped; the last good checkpoint ({}) is intact",
        checkpoint.display()
    )]
    NonFinite {
        what: &'static str,
        value: f64,
        epoch: usize,
        step: usize,
        checkpoint: PathBuf,
    },
    #[error("device `{spec}`: {why}")]
    Device { spec: String, why: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Algo(#[from] AlgoError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Import(#[from] dino_import::ImportError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn run(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        Self::Run {
            path: path.into(),
            why: why.into(),
        }
    }
}
