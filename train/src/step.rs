//! One DINO optimisation step (the body of the official `train_one_epoch`), with
//! everything it updates: student, teacher, optimizer, loss centre, loss scale.

use anyhow::Result;
use tch::{Device, Tensor};

use crate::clip::{cancel_gradients_last_layer, clip_gradients};
use crate::config::TrainConfig;
use crate::device::Precision;
use crate::ema::{EmaPairs, FlatEma};
use crate::loss::DinoLoss;
use crate::model::DinoNet;
use crate::optim::{Optimizer, get_params_groups};
use crate::scaler::GradScaler;
use crate::schedule::{Schedules, StepValues};

pub struct DinoStep {
    pub student: DinoNet,
    pub teacher: DinoNet,
    pub optimizer: Optimizer,
    pub loss: DinoLoss,
    pub schedules: Schedules,
    pub precision: Precision,
    params: Vec<(String, Tensor)>,
    /// Teacher and student each in one flat buffer: the EMA is three kernels, not three per
    /// parameter, and AdamW a few per segment of the student's buffer.
    ema: FlatEma,
    scaler: Option<GradScaler>,
    clip_grad: f64,
    freeze_last_layer: usize,
}

/// What a step returns without synchronising with the device.
pub struct StepOut {
    pub loss: Tensor,
    pub teacher_out: Tensor,
    pub values: StepValues,
}

impl DinoStep {
    /// Fresh networks (libtorch must be seeded by the caller) for `niter` steps per epoch.
    pub fn new(cfg: &TrainConfig, niter: usize, device: Device) -> Result<Self> {
        let precision = Precision::resolve(cfg.optim.precision, device)?;
        let schedules = Schedules::new(&cfg.optim, &cfg.teacher, niter)?;
        let student = DinoNet::new(&cfg.vit()?, &cfg.head(), device);
        let teacher = DinoNet::teacher_of(&student, device);
        let params = student.trainable();
        let mut optimizer =
            Optimizer::new(cfg.optim.optimizer, get_params_groups(student.trainable()));
        let loss = DinoLoss::new(
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
        })
    }

    /// Global iteration `it` on crops `global` `[2b, 3, g, g]` and `local` `[n*b, 3, l, l]`.
    pub fn step(&mut self, global: &Tensor, local: Option<&Tensor>, it: usize) -> Result<StepOut> {
        self.step_with_phases(global, local, it, &mut |_| {})
    }

    /// [`DinoStep::step`], calling `phase` after each of its parts (`"forward"`,
    /// `"backward"`, `"update"`): `dino-train bench --breakdown` synchronises there to see
    /// where the time of a step goes.
    pub fn step_with_phases(
        &mut self,
        global: &Tensor,
        local: Option<&Tensor>,
        it: usize,
        phase: &mut dyn FnMut(&'static str),
    ) -> Result<StepOut> {
        let v = self.schedules.at(it)?;
        let epoch = v.epoch;
        let (student, teacher, dino_loss) = (&self.student, &self.teacher, &mut self.loss);
        let (loss, teacher_out) = crate::device::cuda_autocast(self.precision.autocast(), || {
            // The teacher sees the global views only.
            let t = tch::no_grad(|| teacher.forward_crops(&[global], true));
            let groups: Vec<&Tensor> = std::iter::once(global).chain(local).collect();
            let s = student.forward_crops(&groups, true);
            (dino_loss.forward(&s, &t, epoch), t)
        });
        let loss = loss?;
        phase("forward");
        self.optimizer.zero_grad();
        let finite = match self.scaler.as_mut() {
            None => {
                loss.backward();
                true
            }
            Some(s) => {
                s.scale(&loss).backward();
                let finite = s.unscale(&self.params);
                s.update(finite);
                finite
            }
        };
        phase("backward");
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
            teacher_out,
            values: v,
        })
    }
}
