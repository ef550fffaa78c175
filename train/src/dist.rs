//! Training in several processes on torch.distributed's engine ([`dino_dist`]), as the
//! official `init_distributed_mode` and `main_dino.py` do: ranks from torchrun's or SLURM's
//! environment, Gloo for CPU tensors and NCCL for CUDA tensors, weights broadcast from rank
//! 0, gradients averaged before clipping, the loss centre from the all-reduced batch centre,
//! the head's BatchNorm statistics over all ranks (SyncBatchNorm), and files written by
//! rank 0 only.

use std::rc::Rc;
use std::time::Duration;

use dino_dist::{Backend, DistEnv, ProcessGroup};
use dino_models::BatchStatsSync;
use dino_models::sync_bn::SyncError;
use tch::{Device, Tensor};

use crate::algo_error::AlgoError;
use crate::config::TrainConfig;
use crate::device::{DeviceSpec, select_device};
use crate::error::{Result, TrainError};
use crate::loss::CenterReducer;

/// This process's place in a multi-process run, and its process group.
pub struct Dist {
    group: ProcessGroup,
    pub local_rank: usize,
}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dist(rank {} of {})", self.rank(), self.world_size())
    }
}

impl Dist {
    /// The process group of a launched run (`None` for a plain single process), and the
    /// device of this rank: `cuda:LOCAL_RANK` when `--device` is `auto` or `cuda` on a
    /// CUDA machine.
    pub fn from_env(cfg: &TrainConfig) -> Result<(Option<Rc<Self>>, Device)> {
        let Some(env) = DistEnv::from_env().map_err(dist_err)? else {
            return Ok((None, select_device(cfg.run.device)?));
        };
        let device = match cfg.run.device {
            DeviceSpec::Auto if tch::Cuda::is_available() => {
                select_device(DeviceSpec::Cuda(Some(env.local_rank)))?
            }
            DeviceSpec::Cuda(None) => select_device(DeviceSpec::Cuda(Some(env.local_rank)))?,
            spec => select_device(spec)?,
        };
        let backend = if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        };
        let timeout = Duration::from_secs(cfg.run.dist_timeout.max(1));
        let group = ProcessGroup::new(&env.config(backend, timeout)).map_err(dist_err)?;
        let dist = Self {
            group,
            local_rank: env.local_rank,
        };
        Ok((Some(Rc::new(dist)), device))
    }

    /// A group of this process alone or of the given config (tests, benchmarks).
    pub fn new(group: ProcessGroup) -> Self {
        Self {
            group,
            local_rank: 0,
        }
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// Rank 0 writes the files and shows the progress.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// Every rank takes rank 0's values of `tensors` (the weights at the start).
    pub fn broadcast(&self, tensors: &[&Tensor]) -> Result<()> {
        for t in tensors {
            self.group.broadcast_(t, 0).map_err(dist_err)?;
        }
        Ok(())
    }

    /// Averages the gradients of `params` over the ranks: one all-reduce of one flat
    /// buffer, then the averages copied back.
    pub fn average_gradients(&self, params: &[(String, Tensor)]) -> Result<()> {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return Ok(());
        }
        let flat: Vec<Tensor> = grads.iter().map(|g| g.reshape([-1])).collect();
        let buffer = Tensor::f_cat(&flat, 0)?;
        self.group.all_reduce_mean_(&buffer).map_err(dist_err)?;
        tch::no_grad(|| -> Result<()> {
            let mut at = 0;
            for g in &grads {
                let n = g.numel() as i64;
                g.shallow_clone()
                    .f_copy_(&buffer.f_narrow(0, at, n)?.f_view(g.size().as_slice())?)?;
                at += n;
            }
            Ok(())
        })
    }

    /// Every rank's `t` (same shape on every rank), in rank order.
    pub fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>> {
        self.group.all_gather(t).map_err(dist_err)
    }

    /// Tells the other ranks why this one stops, so that their error names it.
    pub fn report_failure(&self, why: &str) {
        let _ = self.group.report_failure(why);
    }
}

impl CenterReducer for Dist {
    fn sum_(&self, t: &Tensor) -> Result<(), AlgoError> {
        self.group
            .all_reduce_sum_(t)
            .map_err(|e| AlgoError::param("center", format!("distributed training: {e}")))
    }

    fn world_size(&self) -> usize {
        self.group.world_size()
    }
}

impl BatchStatsSync for Dist {
    fn all_reduce_sum(&self, stats: &Tensor) -> Result<Tensor, SyncError> {
        Ok(self.group.all_reduce_sum_autograd(stats)?)
    }
}

fn dist_err(e: dino_dist::DistError) -> TrainError {
    TrainError::Invalid(format!("distributed training: {e}"))
}
