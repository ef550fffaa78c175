//! The official `LinearClassifier` and its optimisation: one `nn.Linear` (weight
//! normal(0, 0.01), bias zero), SGD with momentum 0.9 and no weight decay, cross-entropy,
//! the learning rate annealed to 0 by `CosineAnnealingLR` stepped once per epoch.

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainError};

/// SGD momentum of `eval_linear.py`.
pub const MOMENTUM: f64 = 0.9;
/// Standard deviation of the initial weights.
const INIT_STD: f64 = 0.01;

/// `CosineAnnealingLR(optimizer, epochs, eta_min=0)` after `epoch` scheduler steps.
pub fn cosine_lr(base_lr: f64, epoch: usize, epochs: usize) -> f64 {
    base_lr * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs.max(1) as f64).cos()) / 2.0
}

/// The linear scaling rule: `lr * batch_size * world / 256`.
pub fn scaled_lr(lr: f64, batch_size: usize, world: usize) -> f64 {
    lr * (batch_size * world) as f64 / 256.0
}

/// One linear layer over frozen features, with its optimiser.
pub struct LinearProbe {
    vs: nn::VarStore,
    linear: nn::Linear,
    opt: nn::Optimizer,
    base_lr: f64,
    epochs: usize,
}

impl LinearProbe {
    /// A fresh classifier (drawn from libtorch's generator: seed it with
    /// `tch::manual_seed`); `base_lr` is the already scaled learning rate of epoch 0.
    pub fn new(
        feat_dim: usize,
        num_classes: usize,
        base_lr: f64,
        epochs: usize,
        device: Device,
    ) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let cfg = nn::LinearConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let linear = nn::linear(
            vs.root() / "linear",
            feat_dim as i64,
            num_classes as i64,
            cfg,
        );
        let opt = nn::Sgd {
            momentum: MOMENTUM,
            dampening: 0.0,
            wd: 0.0,
            nesterov: false,
        }
        .build(&vs, base_lr)?;
        Ok(Self {
            vs,
            linear,
            opt,
            base_lr,
            epochs,
        })
    }

    /// Replaces the weights (row-major `[num_classes, feat_dim]`) and bias.
    pub fn set_weights(&mut self, weight: &[f32], bias: &[f32]) -> Result<()> {
        let (ws, bs) = (&mut self.linear.ws, self.linear.bs.as_mut());
        let shape = ws.size();
        if weight.len() as i64 != shape[0] * shape[1] || bias.len() as i64 != shape[0] {
            return Err(TrainError::Invalid(format!(
                "linear weights of {} and {} values for a {shape:?} layer",
                weight.len(),
                bias.len()
            )));
        }
        let device = self.vs.device();
        tch::no_grad(|| -> Result<()> {
            ws.f_copy_(
                &Tensor::from_slice(weight)
                    .view([shape[0], shape[1]])
                    .to_device(device),
            )?;
            if let Some(bs) = bs {
                bs.f_copy_(&Tensor::from_slice(bias).to_device(device))?;
            }
            Ok(())
        })
    }

    /// The weights and bias as CPU vectors.
    pub fn weights(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let get = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(Vec::<f32>::try_from(
                t.detach()
                    .to_device(Device::Cpu)
                    .to_kind(Kind::Float)
                    .flatten(0, -1),
            )?)
        };
        let bias = match &self.linear.bs {
            Some(b) => get(b)?,
            None => Vec::new(),
        };
        Ok((get(&self.linear.ws)?, bias))
    }

    /// Sets the learning rate of `epoch` (the scheduler after `epoch` steps).
    pub fn start_epoch(&mut self, epoch: usize) -> f64 {
        let lr = cosine_lr(self.base_lr, epoch, self.epochs);
        self.opt.set_lr(lr);
        lr
    }

    pub fn logits(&self, feats: &Tensor) -> Tensor {
        self.linear.forward(feats)
    }

    /// One SGD step on a batch; returns the mean cross-entropy before the step.
    pub fn step(&mut self, feats: &Tensor, labels: &Tensor) -> Result<f64> {
        let loss = self.logits(feats).cross_entropy_for_logits(labels);
        self.opt.backward_step(&loss);
        let v = loss.double_value(&[]);
        if !v.is_finite() {
            return Err(TrainError::Invalid(format!(
                "the linear probe's loss is {v}: lower --lr"
            )));
        }
        Ok(v)
    }
}

/// Accuracy of a probe on labelled features (percent), as `utils.accuracy`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accuracy {
    pub top1: f64,
    /// `None` under 5 classes (the official script reports top-1 only then).
    pub top5: Option<f64>,
    /// Mean cross-entropy per image.
    pub loss: f64,
    pub images: usize,
}

/// Top-1/top-5 and loss of `logits` on `feats` `[n, d]` against `labels` `[n]`, `batch`
/// rows at a time.
pub fn accuracy(
    logits: impl Fn(&Tensor) -> Tensor,
    feats: &Tensor,
    labels: &Tensor,
    num_classes: usize,
    batch: usize,
) -> Accuracy {
    let n = feats.size()[0];
    let (mut c1, mut c5, mut loss) = (0i64, 0i64, 0f64);
    let mut start = 0;
    while start < n {
        let len = (batch as i64).min(n - start);
        let (x, y) = (feats.narrow(0, start, len), labels.narrow(0, start, len));
        let out = tch::no_grad(|| logits(&x));
        loss += out.cross_entropy_for_logits(&y).double_value(&[]) * len as f64;
        let k = 5.min(num_classes as i64);
        let (_, pred) = out.topk(k, 1, true, true);
        let hit = pred.eq_tensor(&y.unsqueeze(1));
        c1 += hit.narrow(1, 0, 1).sum(Kind::Int64).int64_value(&[]);
        c5 += hit.sum(Kind::Int64).int64_value(&[]);
        start += len;
    }
    let pct = |c: i64| 100.0 * c as f64 / n.max(1) as f64;
    Accuracy {
        top1: pct(c1),
        top5: (num_classes >= 5).then(|| pct(c5)),
        loss: loss / n.max(1) as f64,
        images: n as usize,
    }
}
