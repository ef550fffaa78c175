//! Gradient surgery of the official training step, between `backward` and `optimizer.step`:
//! per-parameter clipping (`utils.clip_gradients`) and freezing the head's last layer during
//! the first epochs (`utils.cancel_gradients_last_layer`).

use std::collections::BTreeSet;

use tch::{Kind, Tensor};

use crate::algo_error::AlgoError;

/// Added to each norm before dividing, as in the official code.
pub const CLIP_EPS: f64 = 1e-6;

/// The gradient norms [`clip_gradients`] measured, before clipping.
#[derive(Debug)]
pub struct GradNorms {
    /// Names of the parameters that had a gradient, in the order given.
    pub names: Vec<String>,
    /// Their 2-norms, a 1-D fp32 tensor on the parameters' device (reading it synchronises).
    pub norms: Tensor,
}

impl GradNorms {
    /// The norms as numbers (one device synchronisation).
    pub fn to_vec(&self) -> Result<Vec<f32>, AlgoError> {
        Ok(Vec::<f32>::try_from(&self.norms.f_to_kind(Kind::Float)?)?)
    }
}

/// Official `utils.clip_gradients`: each gradient is clipped on its own (not the global norm)
/// to norm `clip`: `coef = clip / (|g| + 1e-6)`, and `g *= coef` when `coef < 1`.
///
/// The branch is taken on the device (`g *= where(coef < 1, coef, 1)`, and `x * 1` is
/// exact) so that clipping never waits for the GPU; the result is the same. The norms are
/// stacked so the coefficients are a few kernels over one vector instead of a few per
/// parameter (the same element-wise arithmetic, so the same values): small models spend
/// most of their optimiser time in per-tensor kernel overhead.
pub fn clip_gradients(params: &[(String, Tensor)], clip: f64) -> Result<GradNorms, AlgoError> {
    if clip.is_nan() || clip <= 0.0 {
        return Err(AlgoError::param(
            "clip_grad",
            format!("must be positive, got {clip}"),
        ));
    }
    tch::no_grad(|| -> Result<GradNorms, AlgoError> {
        let mut names = Vec::new();
        let mut grads = Vec::new();
        for (name, p) in params {
            let grad = p.grad();
            if grad.defined() {
                names.push(name.clone());
                grads.push(grad);
            }
        }
        if grads.is_empty() {
            let norms = Tensor::f_zeros([0], (Kind::Float, tch::Device::Cpu))?;
            return Ok(GradNorms { names, norms });
        }
        let norms = grads
            .iter()
            .map(|g| g.f_norm())
            .collect::<Result<Vec<_>, _>>()?;
        let norms = Tensor::f_stack(&norms, 0)?;
        // Python's `clip / t` is `t.reciprocal() * clip`.
        let coef = norms
            .f_add_scalar(CLIP_EPS)?
            .f_reciprocal()?
            .f_mul_scalar(clip)?;
        let one = coef.f_ones_like()?;
        let coef = coef.f_where_self(&coef.f_lt(1.0)?, &one)?;
        for (i, grad) in grads.iter_mut().enumerate() {
            _ = grad.f_mul_(&coef.f_select(0, i as i64)?)?;
        }
        Ok(GradNorms {
            names,
            norms: norms.f_to_kind(Kind::Float)?,
        })
    })
}

/// Whether a parameter belongs to the head's last layer (official test: `"last_layer" in n`).
pub fn is_last_layer(name: &str) -> bool {
    name.contains("last_layer")
}

/// Parameters whose gradient was cancelled for this step. The official code sets their
/// `grad` to `None`, so the optimizer skips them altogether (no weight decay, no moment
/// update, no step count); tch cannot unset a gradient, so the optimizer is told instead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CancelledGrads(BTreeSet<String>);

impl CancelledGrads {
    /// Nothing cancelled.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// Official `utils.cancel_gradients_last_layer`: while `epoch < freeze_last_layer`, the
/// gradients of the last layer of the head are dropped (here zeroed, and reported so the
/// optimizer skips those parameters). Freezing it during the first epoch helps training
/// start (paper appendix).
pub fn cancel_gradients_last_layer(
    epoch: usize,
    params: &[(String, Tensor)],
    freeze_last_layer: usize,
) -> CancelledGrads {
    let mut cancelled = CancelledGrads::none();
    if epoch >= freeze_last_layer {
        return cancelled;
    }
    for (name, p) in params {
        if is_last_layer(name) {
            let mut p = p.shallow_clone();
            p.zero_grad();
            cancelled.0.insert(name.clone());
        }
    }
    cancelled
}
