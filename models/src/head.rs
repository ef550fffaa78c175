//! The DINO projection head (the official `DINOHead`).
//!
//! A GELU MLP to a bottleneck, L2 normalisation, then a weight-normalised linear layer to
//! `out_dim` prototypes. With `norm_last_layer` the weight norm `g` stays frozen at 1, so
//! the last layer is a cosine classifier: the paper found this stabilises training.
//! With `use_bn` in a data-parallel run, the BatchNorm layers can sum their statistics
//! over the processes ([`DinoHead::set_batch_stats_sync`]).

use std::rc::Rc;

use dino_core::HeadConfig;
use dino_core::weights::head_linear_indices;
use tch::Tensor;
use tch::nn::{self, Module};

use crate::error::ModelError;
use crate::init::{linear, torch_default_uniform};
use crate::sync_bn::{BatchStatsSync, HeadBatchNorm};

#[derive(Debug)]
enum Layer {
    Linear(nn::Linear),
    BatchNorm(HeadBatchNorm),
    Gelu,
}

#[derive(Debug)]
pub struct DinoHead {
    pub cfg: HeadConfig,
    mlp: Vec<Layer>,
    /// Direction `v` of the last layer `[out_dim, bottleneck]`.
    pub weight_v: Tensor,
    /// Magnitude `g` of the last layer `[out_dim, 1]`; frozen when `norm_last_layer`.
    pub weight_g: Tensor,
    /// Sums the BatchNorm statistics over the processes of a data-parallel run.
    sync: Option<Rc<dyn BatchStatsSync>>,
}

impl DinoHead {
    pub fn new(p: &nn::Path, cfg: &HeadConfig) -> Self {
        let (i, h, b) = (
            cfg.in_dim as i64,
            cfg.hidden_dim as i64,
            cfg.bottleneck_dim as i64,
        );
        let mut mlp = Vec::new();
        if cfg.nlayers == 1 {
            mlp.push(Layer::Linear(linear(p / "mlp", i, b, true)));
        } else {
            let idx = head_linear_indices(cfg);
            for (layer, &k) in idx.iter().enumerate() {
                let fan_in = if layer == 0 { i } else { h };
                let last = layer + 1 == idx.len();
                let fan_out = if last { b } else { h };
                mlp.push(Layer::Linear(linear(p / "mlp" / k, fan_in, fan_out, true)));
                if !last {
                    if cfg.use_bn {
                        let name = format!("mlp.{}", k + 1);
                        let bn = HeadBatchNorm::new(p / "mlp" / (k + 1), name, h);
                        mlp.push(Layer::BatchNorm(bn));
                    }
                    mlp.push(Layer::Gelu);
                }
            }
        }
        let last = p / "last_layer";
        let weight_v = last.var(
            "weight_v",
            &[cfg.out_dim as i64, b],
            torch_default_uniform(b),
        );
        let weight_g = if cfg.norm_last_layer {
            last.ones_no_train("weight_g", &[cfg.out_dim as i64, 1])
        } else {
            last.var("weight_g", &[cfg.out_dim as i64, 1], nn::Init::Const(1.0))
        };
        Self {
            cfg: cfg.clone(),
            mlp,
            weight_v,
            weight_g,
            sync: None,
        }
    }

    /// Makes the BatchNorm layers (if any) normalise training batches with the statistics
    /// of every process's batch, as torch's `SyncBatchNorm`; `None`: this process's batch.
    pub fn set_batch_stats_sync(&mut self, sync: Option<Rc<dyn BatchStatsSync>>) {
        self.sync = sync;
    }

    /// The weight-normalised last-layer matrix `g * v / ||v||` (norm over each row).
    pub fn last_layer_weight(&self) -> Tensor {
        let norm = self
            .weight_v
            .norm_scalaropt_dim(2, [1], true)
            .to_kind(self.weight_v.kind());
        &self.weight_g * &self.weight_v / norm
    }

    /// `[b, in_dim]` -> bottleneck `[b, bottleneck]`, L2-normalised. Fails only where the
    /// BatchNorm statistics are summed over processes ([`DinoHead::set_batch_stats_sync`]).
    pub fn f_bottleneck(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let mut x = x.shallow_clone();
        for layer in &self.mlp {
            x = match layer {
                Layer::Linear(l) => l.forward(&x),
                Layer::BatchNorm(bn) => bn.forward(&x, train, self.sync.as_deref())?,
                Layer::Gelu => x.gelu("none"),
            };
        }
        // F.normalize(x, dim=-1, p=2, eps=1e-12)
        let n = x
            .norm_scalaropt_dim(2, [-1], true)
            .clamp_min(1e-12)
            .to_kind(x.kind());
        Ok(x / n)
    }

    /// [`DinoHead::f_bottleneck`], panicking on its errors (tch's convention).
    pub fn bottleneck(&self, x: &Tensor, train: bool) -> Tensor {
        self.f_bottleneck(x, train)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `[b, in_dim]` -> logits `[b, out_dim]`; fails as [`DinoHead::f_bottleneck`].
    pub fn f_forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let z = self.f_bottleneck(x, train)?;
        Ok(z.linear(&self.last_layer_weight().to_kind(z.kind()), None::<Tensor>))
    }

    /// [`DinoHead::f_forward_t`], panicking on its errors (tch's convention).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.f_forward_t(x, train).unwrap_or_else(|e| panic!("{e}"))
    }
}
