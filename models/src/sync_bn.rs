//! The head's BatchNorm, optionally over the batch of every process of a data-parallel run
//! (torch's `nn.SyncBatchNorm`, which the official `main_dino.py` uses for the student and
//! the teacher as soon as the model has BatchNorm layers).
//!
//! Synchronised, a training forward sums `x`, `x²` and the row count over the processes in
//! one differentiable all-reduce, normalises with the global mean and biased variance, and
//! moves the running statistics with the global mean and unbiased variance: every process
//! computes what one process would on the concatenated batch. The backward of that
//! all-reduce sums the gradients of the statistics over the processes; the gradients of
//! the parameters, averaged over the processes afterwards (each loss a mean over its
//! share of the batch), are then those of the loss on the whole batch. Evaluation uses the
//! running statistics and does not communicate.

use std::fmt::Debug;

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::error::ModelError;

/// The error of a [`BatchStatsSync`].
pub type SyncError = Box<dyn std::error::Error + Send + Sync>;

/// Sums batch statistics over the processes of a data-parallel run. Every process must
/// call it in the same order, train-mode forwards included under `no_grad`.
pub trait BatchStatsSync: Debug {
    /// The sum of `stats` over every process, as a new tensor whose backward sums the
    /// incoming gradient over the processes (`torch.distributed.nn.functional.all_reduce`).
    fn all_reduce_sum(&self, stats: &Tensor) -> Result<Tensor, SyncError>;
}

/// A `BatchNorm1d` of the head, with the config it was made with (tch keeps it private).
#[derive(Debug)]
pub(crate) struct HeadBatchNorm {
    bn: nn::BatchNorm,
    cfg: nn::BatchNormConfig,
    /// The official key of the layer (`mlp.1`), for errors.
    name: String,
}

impl HeadBatchNorm {
    pub fn new(p: nn::Path, name: String, channels: i64) -> Self {
        let cfg = nn::BatchNormConfig::default();
        Self {
            bn: nn::batch_norm1d(p, channels, cfg),
            cfg,
            name,
        }
    }

    /// `[n, channels]` normalised; over every process when `sync` is set and `train`.
    pub fn forward(
        &self,
        x: &Tensor,
        train: bool,
        sync: Option<&dyn BatchStatsSync>,
    ) -> Result<Tensor, ModelError> {
        match sync {
            Some(sync) if train => self.synced(x, sync),
            _ => Ok(self.bn.forward_t(x, train)),
        }
    }

    /// Training forward on the global batch statistics. They are accumulated in float64,
    /// so that `E[x²] - E[x]²` keeps float32's precision.
    fn synced(&self, x: &Tensor, sync: &dyn BatchStatsSync) -> Result<Tensor, ModelError> {
        let size = x.size();
        let [rows, channels] = size[..] else {
            return Err(self.error(format!("expected [rows, channels], got {size:?}")));
        };
        if rows < 2 {
            return Err(self.error(format!(
                "a training batch needs at least 2 rows per process, got {rows}"
            )));
        }
        let xd = x.to_kind(Kind::Double);
        let count = Tensor::from_slice(&[rows as f64]).to_device(x.device());
        let local = Tensor::cat(
            &[
                xd.sum_dim_intlist(0, false, Kind::Double),
                xd.square().sum_dim_intlist(0, false, Kind::Double),
                count,
            ],
            0,
        );
        let global = sync
            .all_reduce_sum(&local)
            .map_err(|source| ModelError::BatchStatsSync {
                layer: self.name.clone(),
                source,
            })?;
        let n = global.narrow(0, 2 * channels, 1);
        let mean = global.narrow(0, 0, channels) / &n;
        let var = (global.narrow(0, channels, channels) / &n - mean.square()).clamp_min(0.0);
        self.update_running(&mean, &var, &n);
        let invstd = (var + self.cfg.eps).rsqrt().to_kind(Kind::Float);
        let scale = match &self.bn.ws {
            Some(w) => invstd * w,
            None => invstd,
        };
        let y = (x.to_kind(Kind::Float) - mean.to_kind(Kind::Float)) * scale;
        let y = match &self.bn.bs {
            Some(b) => y + b,
            None => y,
        };
        Ok(y.to_kind(x.kind()))
    }

    /// `running = (1 - momentum) * running + momentum * batch`, the variance unbiased over
    /// the global count, as BatchNorm and SyncBatchNorm do.
    fn update_running(&self, mean: &Tensor, var: &Tensor, n: &Tensor) {
        let m = self.cfg.momentum;
        tch::no_grad(|| {
            let unbiased = var * n / (n - 1.0);
            for (running, batch) in [
                (&self.bn.running_mean, mean),
                (&self.bn.running_var, &unbiased),
            ] {
                let next = running.to_kind(Kind::Double) * (1.0 - m) + batch.detach() * m;
                running.shallow_clone().copy_(&next.to_kind(running.kind()));
            }
        });
    }

    fn error(&self, why: String) -> ModelError {
        ModelError::BatchNorm {
            layer: self.name.clone(),
            why,
        }
    }
}
