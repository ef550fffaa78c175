//! Per-iteration hyper-parameter schedules of DINO (official `utils.cosine_scheduler` and the
//! teacher-temperature schedule of `main_dino.DINOLoss`).
//!
//! The official trainer computes every schedule once, as a numpy array with one value per
//! iteration (or per epoch for the teacher temperature), and indexes it with the global
//! iteration `it = len(data_loader) * epoch + i`. The values here are computed with the same
//! f64 operations in the same order as numpy, so they agree to the last bit or two.

use crate::algo_error::AlgoError;

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

/// The hyper-parameters the schedules are built from, named and defaulted as the official
/// `main_dino.py` arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleConfig {
    pub epochs: usize,
    pub niter_per_ep: usize,
    /// Total batch size over all processes (`batch_size_per_gpu * world_size`).
    pub batch_size: usize,
    /// Learning rate at the end of the warmup for a batch of 256 (linear scaling rule).
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_epochs: usize,
    pub weight_decay: f64,
    pub weight_decay_end: f64,
    pub momentum_teacher: f64,
    pub warmup_teacher_temp: f64,
    pub teacher_temp: f64,
    pub warmup_teacher_temp_epochs: usize,
}

impl ScheduleConfig {
    /// The official defaults for the given run length and batch size.
    pub fn official(epochs: usize, niter_per_ep: usize, batch_size: usize) -> Self {
        Self {
            epochs,
            niter_per_ep,
            batch_size,
            lr: 0.0005,
            min_lr: 1e-6,
            warmup_epochs: 10,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            momentum_teacher: 0.996,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.04,
            warmup_teacher_temp_epochs: 0,
        }
    }
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
    pub fn new(c: &ScheduleConfig) -> Result<Self, AlgoError> {
        // Linear scaling rule (Goyal et al.): the base lr is given for a batch of 256.
        let base_lr = c.lr * c.batch_size as f64 / 256.0;
        Ok(Self {
            niter_per_ep: c.niter_per_ep,
            lr: cosine_scheduler(
                base_lr,
                c.min_lr,
                c.epochs,
                c.niter_per_ep,
                c.warmup_epochs,
                0.0,
            )?,
            wd: cosine_scheduler(
                c.weight_decay,
                c.weight_decay_end,
                c.epochs,
                c.niter_per_ep,
                0,
                0.0,
            )?,
            momentum: cosine_scheduler(c.momentum_teacher, 1.0, c.epochs, c.niter_per_ep, 0, 0.0)?,
            teacher_temp: teacher_temp_schedule(
                c.warmup_teacher_temp,
                c.teacher_temp,
                c.warmup_teacher_temp_epochs,
                c.epochs,
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
