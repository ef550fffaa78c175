//! The per-parameter update rules, each following its reference operation by operation
//! (torch's single-tensor code path). [`adamw_update`] is also what the flat path runs on a
//! whole segment: element-wise ops on a concatenation give the same values as on the parts.

use tch::Tensor;

use super::{ADAMW_BETAS, ADAMW_EPS, LARS_ETA, MOMENTUM, OptimizerKind};
use crate::algo_error::AlgoError;

pub(super) fn init_state(
    kind: OptimizerKind,
    param: &Tensor,
    grad: &Tensor,
) -> Result<Vec<Tensor>, AlgoError> {
    Ok(match kind {
        OptimizerKind::AdamW => vec![param.f_zeros_like()?, param.f_zeros_like()?],
        // torch.optim.SGD starts the momentum buffer as a copy of the first (decayed)
        // gradient; `sgd_update` fills it on step 1.
        OptimizerKind::Sgd => vec![grad.f_zeros_like()?],
        OptimizerKind::Lars => vec![param.f_zeros_like()?],
    })
}

/// torch's `_single_tensor_adam` with `decoupled_weight_decay=True` (AdamW): decoupled
/// decay `p *= 1 - lr * wd`, moments `m.lerp_(g, 1 - b1)`, `v = v * b2 + (1 - b2) g^2`, then
/// `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`, bias corrections in f64.
pub(super) fn adamw_update(
    p: &mut Tensor,
    grad: &Tensor,
    state: &mut [Tensor],
    step: i64,
    lr: f64,
    wd: f64,
) -> Result<(), AlgoError> {
    let (beta1, beta2) = ADAMW_BETAS;
    let [exp_avg, exp_avg_sq] = state else {
        return Err(AlgoError::state("adamw", "expects exp_avg and exp_avg_sq"));
    };
    if wd != 0.0 {
        _ = p.f_mul_scalar_(1.0 - lr * wd)?;
    }
    _ = exp_avg.f_lerp_(grad, 1.0 - beta1)?;
    // tch's addcmul_ has no `value`; scaling one factor first is the same product.
    _ = exp_avg_sq
        .f_mul_scalar_(beta2)?
        .f_addcmul_(&grad.f_mul_scalar(1.0 - beta2)?, grad)?;
    let step = step as f64;
    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    let step_size = lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.powf(0.5);
    let denom = exp_avg_sq
        .f_sqrt()?
        .f_div_scalar(bias_correction2_sqrt)?
        .f_add_scalar_(ADAMW_EPS)?;
    _ = p.f_addcdiv_(&exp_avg.f_mul_scalar(-step_size)?, &denom)?;
    Ok(())
}

/// torch's `_single_tensor_sgd` with momentum 0.9, no dampening, no Nesterov: coupled decay
/// `g += wd * p`, buffer `b = g` on the first step then `b = 0.9 b + g`, `p -= lr * b`.
pub(super) fn sgd_update(
    p: &mut Tensor,
    grad: &Tensor,
    state: &mut [Tensor],
    step: i64,
    lr: f64,
    wd: f64,
) -> Result<(), AlgoError> {
    let [buf] = state else {
        return Err(AlgoError::state("sgd", "expects momentum_buffer"));
    };
    let grad = decayed(grad, p, wd)?;
    if step == 1 {
        buf.f_copy_(&grad)?;
    } else {
        _ = buf.f_mul_scalar_(MOMENTUM)?.f_add_(&grad)?;
    }
    _ = p.f_add_(&buf.f_mul_scalar(-lr)?)?;
    Ok(())
}

/// Official `utils.LARS.step` (from Barlow Twins): for parameters that are not 1-D, coupled
/// decay `dp = g + wd * p` and the layer-wise trust ratio `dp *= eta * |p| / |dp|` (1 when a
/// norm is 0); then `mu = 0.9 mu + dp`, `p -= lr * mu`.
pub(super) fn lars_update(
    p: &mut Tensor,
    grad: &Tensor,
    state: &mut [Tensor],
    lr: f64,
    wd: f64,
) -> Result<(), AlgoError> {
    let [mu] = state else {
        return Err(AlgoError::state("lars", "expects mu"));
    };
    let mut dp = grad.shallow_clone();
    if p.dim() != 1 {
        dp = decayed(&dp, p, wd)?;
        let param_norm = p.f_norm()?;
        let update_norm = dp.f_norm()?;
        let one = param_norm.f_ones_like()?;
        let ratio = param_norm.f_mul_scalar(LARS_ETA)?.f_div(&update_norm)?;
        // torch.where(|p| > 0, torch.where(|dp| > 0, ratio, 1), 1).
        let q = ratio
            .f_where_self(&update_norm.f_gt(0.0)?, &one)?
            .f_where_self(&param_norm.f_gt(0.0)?, &one)?;
        dp = dp.f_mul(&q)?;
    }
    _ = mu.f_mul_scalar_(MOMENTUM)?.f_add_(&dp)?;
    _ = p.f_add_(&mu.f_mul_scalar(-lr)?)?;
    Ok(())
}

/// `grad + wd * param` (torch's `grad.add(param, alpha=wd)`), or `grad` when `wd == 0`.
pub(super) fn decayed(grad: &Tensor, param: &Tensor, wd: f64) -> Result<Tensor, AlgoError> {
    if wd == 0.0 {
        Ok(grad.shallow_clone())
    } else {
        Ok(grad.f_add(&param.f_mul_scalar(wd)?)?)
    }
}
