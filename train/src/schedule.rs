//! Per-iteration hyper-parameter schedules of DINO (official `utils.cosine_scheduler` and the
//! teacher-temperature schedule of `main_dino.DINOLoss`).
//!
//! The official trainer computes every schedule once, as a numpy array with one value per
//! iteration (or per epoch for the teacher temperature), and indexes it with the global
//! iteration `it = len(data_loader) * epoch + i`. The values here are computed with the same
//! f64 operations in the same order as numpy, so they agree to the last bit or two.

use crate::algo_error::AlgoError;
use crate::config::{OptimConfig, TeacherConfig};

/// `numpy.linspace(start, stop, num)` with its exact arithmetic: `i * step + start` with
/// `step = (stop - start) / (num - 1)`, the last value set to `stop`, and the `step == 0`
/// special case (`i / div * delta + start`).
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let div = num - 1;
    let delta = stop - start;
    let mut y: Vec<f64> = if div > 0 {
        let step = delta / div as f64;
        if step == 0.0 {
            (0..num)
                .map(|i| i as f64 / div as f64 * delta + start)
                .collect()
        } else {
            (0..num).map(|i| i as f64 * step + start).collect()
        }
    } else {
        vec![0.0 * delta + start]
    };
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// Official `utils.cosine_scheduler`: a linear warmup from `start_warmup_value` to
/// `base_value` over `warmup_epochs * niter_per_ep` iterations, then a half cosine from
/// `base_value` down (or up) to `final_value`; `epochs * niter_per_ep` values in all.
///
/// Each value is `final + 0.5 * (base - final) * (1 + cos(pi * i / n))` for the `n`
/// post-warmup iterations, evaluated in numpy's order.
pub fn cosine_scheduler(
    base_value: f64,
    final_value: f64,
    epochs: usize,
    niter_per_ep: usize,
    warmup_epochs: usize,
    start_warmup_value: f64,
) -> Result<Vec<f64>, AlgoError> {
    let total = epochs * niter_per_ep;
    let warmup_iters = warmup_epochs * niter_per_ep;
    if total == 0 {
        return Err(AlgoError::Schedule(format!(
            "{epochs} epochs of {niter_per_ep} iterations is an empty schedule"
        )));
    }
    if warmup_iters > total {
        return Err(AlgoError::Schedule(format!(
            "{warmup_epochs} warmup epochs exceed the {epochs} training epochs"
        )));
    }
    let mut schedule = if warmup_epochs > 0 {
        linspace(start_warmup_value, base_value, warmup_iters)
    } else {
        Vec::new()
    };
    let n = (total - warmup_iters) as f64;
    let half_range = 0.5 * (base_value - final_value);
    schedule.extend(
        (0..total - warmup_iters).map(|i| {
            final_value + half_range * (1.0 + (std::f64::consts::PI * i as f64 / n).cos())
        }),
    );
    Ok(schedule)
}

/// The teacher temperature per epoch (official `DINOLoss.teacher_temp_schedule`):
/// `linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)` followed by
/// `teacher_temp` for the remaining epochs. A too hot teacher makes the start of training
/// unstable, hence the warmup from a lower temperature.
pub fn teacher_temp_schedule(
    warmup_teacher_temp: f64,
    teacher_temp: f64,
    warmup_teacher_temp_epochs: usize,
    epochs: usize,
) -> Result<Vec<f64>, AlgoError> {
    if warmup_teacher_temp_epochs > epochs {
        return Err(AlgoError::Schedule(format!(
            "{warmup_teacher_temp_epochs} teacher temperature warmup epochs exceed the {epochs} training epochs"
        )));
    }
    if !(warmup_teacher_temp > 0.0 && teacher_temp > 0.0) {
        return Err(AlgoError::Schedule(format!(
            "teacher temperatures must be positive (got {warmup_teacher_temp} and {teacher_temp})"
        )));
    }
    let mut s = linspace(
        warmup_teacher_temp,
        teacher_temp,
        warmup_teacher_temp_epochs,
    );
    s.extend(std::iter::repeat_n(
        1.0 * teacher_temp,
        epochs - warmup_teacher_temp_epochs,
    ));
    Ok(s)
}

/// The values one training iteration uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepValues {
    pub epoch: usize,
    pub lr: f64,
    /// Weight decay of the regularised parameter group.
    pub wd: f64,
    /// Teacher EMA momentum.
    pub momentum: f64,
    pub teacher_temp: f64,
}

/// All schedules of a run, as in `main_dino.train_dino`.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedules {
    pub niter_per_ep: usize,
    /// `cosine_scheduler(lr * batch_size / 256, min_lr, ..., warmup_epochs)`, per iteration.
    pub lr: Vec<f64>,
    /// `cosine_scheduler(weight_decay, weight_decay_end, ...)`, per iteration.
    pub wd: Vec<f64>,
    /// `cosine_scheduler(momentum_teacher, 1, ...)`, per iteration.
    pub momentum: Vec<f64>,
    /// Per epoch.
    pub teacher_temp: Vec<f64>,
}

impl Schedules {
    /// The schedules of `optim.epochs` epochs of `niter_per_ep` iterations: learning rate and
    /// weight decay from `optim` (the lr for a batch of `optim.batch_size`), teacher momentum
    /// and temperature from `teacher`.
    pub fn new(
        optim: &OptimConfig,
        teacher: &TeacherConfig,
        niter_per_ep: usize,
    ) -> Result<Self, AlgoError> {
        Self::for_world(optim, teacher, niter_per_ep, 1)
    }

    /// The schedules of `world_size` processes, each with `optim.batch_size` images per step.
    pub fn for_world(
        optim: &OptimConfig,
        teacher: &TeacherConfig,
        niter_per_ep: usize,
        world_size: usize,
    ) -> Result<Self, AlgoError> {
        let (o, t, epochs) = (optim, teacher, optim.epochs);
        // Linear scaling rule (Goyal et al.): the base lr is given for a total batch of 256.
        let base_lr = o.lr * (o.batch_size * world_size.max(1)) as f64 / 256.0;
        Ok(Self {
            niter_per_ep,
            lr: cosine_scheduler(
                base_lr,
                o.min_lr,
                epochs,
                niter_per_ep,
                o.warmup_epochs,
                0.0,
            )?,
            wd: cosine_scheduler(
                o.weight_decay,
                o.weight_decay_end,
                epochs,
                niter_per_ep,
                0,
                0.0,
            )?,
            momentum: cosine_scheduler(t.momentum_teacher, 1.0, epochs, niter_per_ep, 0, 0.0)?,
            teacher_temp: teacher_temp_schedule(
                t.warmup_teacher_temp,
                t.teacher_temp,
                t.warmup_teacher_temp_epochs,
                epochs,
            )?,
        })
    }

    /// Number of iterations of the whole run.
    pub fn len(&self) -> usize {
        self.lr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lr.is_empty()
    }

    /// The values at global iteration `it` (`niter_per_ep * epoch + i`).
    pub fn at(&self, it: usize) -> Result<StepValues, AlgoError> {
        let past = || AlgoError::PastSchedule {
            it,
            len: self.len(),
        };
        let epoch = it / self.niter_per_ep.max(1);
        Ok(StepValues {
            epoch,
            lr: *self.lr.get(it).ok_or_else(past)?,
            wd: *self.wd.get(it).ok_or_else(past)?,
            momentum: *self.momentum.get(it).ok_or_else(past)?,
            teacher_temp: *self.teacher_temp.get(epoch).ok_or_else(past)?,
        })
    }
}
