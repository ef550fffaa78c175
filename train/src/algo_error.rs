//! Errors of the training-step algorithms (loss, schedules, optimizers, clipping, EMA).

use thiserror::Error;

/// What can go wrong in the algorithmic pieces of a DINO training step. Each variant says
/// which argument or which parameter is at fault.
#[derive(Debug, Error)]
pub enum AlgoError {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("invalid schedule: {0}")]
    Schedule(String),
    #[error("iteration {it} is past the end of the schedule ({len} iterations)")]
    PastSchedule { it: usize, len: usize },
    #[error("invalid DINO loss input: {0}")]
    LossShape(String),
    #[error("parameter `{name}`: {why}")]
    Param { name: String, why: String },
    #[error("optimizer state `{key}`: {why}")]
    State { key: String, why: String },
}

impl AlgoError {
    pub(crate) fn param(name: &str, why: impl Into<String>) -> Self {
        Self::Param {
            name: name.to_string(),
            why: why.into(),
        }
    }

    pub(crate) fn state(key: &str, why: impl Into<String>) -> Self {
        Self::State {
            key: key.to_string(),
            why: why.into(),
        }
    }
}
