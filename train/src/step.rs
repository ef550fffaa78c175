//! One DINO optimisation step (the body of the official `train_one_epoch`), with
//! everything it updates: student, teacher, optimizer, loss centre, loss scale. Its state
//! goes into checkpoints through [`DinoStep::state`] and comes back with
//! [`DinoStep::restore`].

use std::rc::Rc;

use tch::{Device, Tensor};

use dino_models::io::{from_raw, load_checked};

use crate::checkpoint::{Checkpoint, StepState};
use crate::clip::{cancel_gradients_last_layer, clip_gradients};
use crate::config::TrainConfig;
use crate::device::Precision;
use crate::dist::Dist;
use crate::ema::{EmaPairs, FlatEma};
use crate::error::Result;
use crate::loss::{DinoLoss, TeacherStats};
use crate::model::DinoNet;
use crate::optim::{Optimizer, get_params_groups};
use crate::pretrained::StartWeights;
use crate::scaler::GradScaler;
use crate::schedule::{Schedules, StepValues};

pub struct DinoStep {
    student: DinoNet,
    teacher: DinoNet,
    optimizer: Optimizer,
    loss: DinoLoss,
    schedules: Schedules,
    precision: Precision,
    params: Vec<(String, Tensor)>,
    /// Teacher and student each in one flat buffer: the EMA is three kernels, not three per
    /// parameter, and AdamW a few per segment of the student's buffer.
    ema: FlatEma,
    scaler: Option<GradScaler>,
    clip_grad: f64,
    freeze_last_layer: usize,
    /// The other processes of a multi-process run.
    dist: Option<Rc<Dist>>,
}

/// What a step returns (without synchronising with the device, unless observed).
pub struct StepOut {
    pub loss: Tensor,
    pub values: StepValues,
    /// The teacher's entropy as the loss saw it (centre before this step's update), for
    /// an observed step ([`DinoStep::step_observed`]).
    pub teacher_stats: Option<TeacherStats>,
}

impl DinoStep {
    /// Fresh networks (libtorch must be seeded by the caller) for `niter` steps per epoch.
    pub fn new(cfg: &TrainConfig, niter: usize, device: Device) -> Result<Self> {
        Self::with_dist(cfg, niter, device, None)
    }

    /// [`DinoStep::new`] for one rank of a multi-process run: the weights are rank 0's, the
    /// learning rate is scaled by the total batch, gradients and the centre are averaged
    /// over the ranks.
    pub fn with_dist(
        cfg: &TrainConfig,
        niter: usize,
        device: Device,
        dist: Option<Rc<Dist>>,
    ) -> Result<Self> {
        let world = dist.as_ref().map_or(1, |d| d.world_size());
        let precision = Precision::resolve(cfg.optim.precision, device)?;
        let schedules = Schedules::for_world(&cfg.optim, &cfg.teacher, niter, world)?;
        let mut student = DinoNet::new(&cfg.vit()?, &cfg.head(), device);
        let mut teacher = DinoNet::teacher_of(&student, device);
        let params = student.trainable();
        let mut optimizer =
            Optimizer::new(cfg.optim.optimizer, get_params_groups(student.trainable()));
        let mut loss = DinoLoss::new(
            &cfg.teacher,
            cfg.model.out_dim,
            2 + cfg.augment.local_crops_number,
            schedules.teacher_temp.clone(),
            device,
        )?;
        let ema = FlatEma::new(EmaPairs::new(
            teacher.trainable_and_frozen(),
            student.trainable_and_frozen(),
        )?)?;
        // AdamW's segments are contiguous ranges of the student's buffer (SGD, LARS: no-op).
        optimizer.use_flat_buffer(ema.student())?;
        if let Some(d) = &dist {
            // As the official code converts both networks to SyncBatchNorm; the teacher stays
            // in training mode, so it normalises with the global batch statistics too.
            if cfg.model.use_bn_in_head {
                student.sync_batch_stats(d.clone());
                teacher.sync_batch_stats(d.clone());
            }
            // Every variable, in name order (the same on every rank).
            let vars: std::collections::BTreeMap<String, Tensor> = (student.vs.variables())
                .into_iter()
                .map(|(k, t)| (format!("student.{k}"), t))
                .chain(
                    teacher
                        .vs
                        .variables()
                        .into_iter()
                        .map(|(k, t)| (format!("teacher.{k}"), t)),
                )
                .collect();
            d.broadcast(&vars.values().collect::<Vec<_>>())?;
            loss.reduce_center_with(d.clone());
        }
        Ok(Self {
            student,
            teacher,
            optimizer,
            loss,
            schedules,
            precision,
            params,
            ema,
            scaler: (precision == Precision::Fp16).then(GradScaler::default),
            clip_grad: cfg.optim.clip_grad,
            freeze_last_layer: cfg.optim.freeze_last_layer,
            dist,
        })
    }

    /// Global iteration `it` on crops `global` `[2b, 3, g, g]` and `local` `[n*b, 3, l, l]`.
    pub fn step(&mut self, global: &Tensor, local: Option<&Tensor>, it: usize) -> Result<StepOut> {
        self.run(global, local, it, false, &mut |_| {})
    }

    /// [`DinoStep::step`], with the teacher statistics of this step when `observe` (one
    /// host synchronisation: the training loop asks on its logging steps only).
    pub fn step_observed(
        &mut self,
        global: &Tensor,
        local: Option<&Tensor>,
        it: usize,
        observe: bool,
    ) -> Result<StepOut> {
        self.run(global, local, it, observe, &mut |_| {})
    }

    /// [`DinoStep::step`], calling `phase` after each of its parts (`"forward"`,
    /// `"backward"`, `"allreduce"` with several ranks, `"update"`): `dino-train bench --breakdown`
    /// synchronises there to see where the time of a step goes.
    pub fn step_with_phases(
        &mut self,
        global: &Tensor,
        local: Option<&Tensor>,
        it: usize,
        phase: &mut dyn FnMut(&'static str),
    ) -> Result<StepOut> {
        self.run(global, local, it, false, phase)
    }

    fn run(
        &mut self,
        global: &Tensor,
        local: Option<&Tensor>,
        it: usize,
        observe: bool,
        phase: &mut dyn FnMut(&'static str),
    ) -> Result<StepOut> {
        let v = self.schedules.at(it)?;
        let epoch = v.epoch;
        let (student, teacher, dino_loss) = (&self.student, &self.teacher, &mut self.loss);
        let forward = crate::device::cuda_autocast(self.precision.autocast(), || {
            // The teacher sees the global views only: [2b, out_dim].
            let t = tch::no_grad(|| teacher.forward_crops(&[global], true))?;
            let groups: Vec<&Tensor> = std::iter::once(global).chain(local).collect();
            let s = student.forward_crops(&groups, true)?; // [(2 + n) * b, out_dim]
            // Before the loss, which moves the centre: what the loss sees.
            let stats = observe
                .then(|| dino_loss.teacher_stats(&t, epoch))
                .transpose()?;
            Ok::<_, crate::error::TrainError>((dino_loss.forward(&s, &t, epoch)?, stats))
        });
        let (loss, teacher_stats) = forward?;
        phase("forward");
        let finite = self.backward(&loss, phase)?;
        // A float16 overflow skips the update, as GradScaler.step does.
        if finite {
            if self.clip_grad > 0.0 {
                clip_gradients(&self.params, self.clip_grad)?;
            }
            let cancelled =
                cancel_gradients_last_layer(epoch, &self.params, self.freeze_last_layer);
            self.optimizer.step(v.lr, v.wd, &cancelled)?;
        }
        self.ema.update(v.momentum)?;
        phase("update");
        Ok(StepOut {
            loss: loss.detach(),
            values: v,
            teacher_stats,
        })
    }

    /// Gradients of `loss` (scaled and unscaled under fp16), averaged over the ranks of a
    /// multi-process run; whether they are finite.
    /// (`phase`: `"backward"`, then `"allreduce"` when there are other ranks.)
    fn backward(&mut self, loss: &Tensor, phase: &mut dyn FnMut(&'static str)) -> Result<bool> {
        self.optimizer.zero_grad();
        // Fallible: with SyncBatchNorm, the backward runs collectives.
        match &self.scaler {
            None => loss.f_backward()?,
            Some(s) => s.scale(loss).f_backward()?,
        }
        phase("backward");
        if let Some(d) = &self.dist {
            d.average_gradients(&self.params)?;
            phase("allreduce");
        }
        Ok(match self.scaler.as_mut() {
            None => true,
            Some(s) => {
                let finite = s.unscale(&self.params);
                s.update(finite);
                finite
            }
        })
    }

    pub fn student(&self) -> &DinoNet {
        &self.student
    }

    pub fn teacher(&self) -> &DinoNet {
        &self.teacher
    }

    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    pub fn loss(&self) -> &DinoLoss {
        &self.loss
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// What a checkpoint keeps of the step: both networks, the optimizer, the loss centre.
    pub fn state(&self) -> StepState<'_> {
        StepState {
            student: &self.student,
            teacher: &self.teacher,
            optimizer: &self.optimizer,
            loss: &self.loss,
        }
    }

    /// Starts from `w` ([`crate::pretrained`]) instead of fresh weights: the student's
    /// tensors, then the teacher's (or a copy of the student) and the centre. Before the
    /// first step; the optimizer stays fresh.
    pub fn start_from(&mut self, w: &StartWeights) -> Result<()> {
        load_checked(&self.student.vs, &w.student, &w.expected, &w.path)?;
        match &w.teacher {
            Some(t) => load_checked(&self.teacher.vs, t, &w.expected, &w.path)?,
            None => tch::no_grad(|| {
                let src = self.student.vs.variables();
                for (name, mut dst) in self.teacher.vs.variables() {
                    dst.copy_(&src[&name]);
                }
            }),
        }
        if let Some(c) = &w.center {
            self.loss
                .set_center(&from_raw(c, &w.path, "center")?)
                .map_err(|e| crate::error::TrainError::run(&w.path, format!("loss centre: {e}")))?;
        }
        Ok(())
    }

    /// Continues from `ck`'s state (the caller checked it was made by a compatible config).
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        ck.restore_nets(&self.student, &self.teacher)?;
        ck.restore_optimizer(&mut self.optimizer)?;
        ck.restore_center(&mut self.loss)
    }
}
