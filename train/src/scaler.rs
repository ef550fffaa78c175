//! Dynamic loss scaling for float16 autocast (torch's `GradScaler`, which the official
//! code uses with `--use_fp16`): the loss is multiplied by a large scale so small
//! gradients survive float16, gradients are unscaled before clipping, and a step whose
//! gradients overflowed is skipped while the scale backs off.

use tch::{Kind, Tensor};

#[derive(Debug)]
pub struct GradScaler {
    scale: f64,
    good_steps: usize,
}

/// torch.cuda.amp.GradScaler defaults.
const INIT_SCALE: f64 = (1u32 << 16) as f64;
const GROWTH: f64 = 2.0;
const BACKOFF: f64 = 0.5;
const GROWTH_INTERVAL: usize = 2000;

impl Default for GradScaler {
    fn default() -> Self {
        Self {
            scale: INIT_SCALE,
            good_steps: 0,
        }
    }
}

impl GradScaler {
    pub fn scale(&self, loss: &Tensor) -> Tensor {
        loss * self.scale
    }

    /// Divides every gradient by the scale; returns whether all are finite (one host
    /// read-back).
    pub fn unscale(&self, params: &[(String, Tensor)]) -> bool {
        let inv = 1.0 / self.scale;
        let mut bad: Option<Tensor> = None;
        tch::no_grad(|| {
            for (_, p) in params {
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = g.g_mul_scalar_(inv);
                let nonfinite = g.isfinite().logical_not().any().to_kind(Kind::Int64);
                bad = Some(match bad.take() {
                    Some(b) => b + nonfinite,
                    None => nonfinite,
                });
            }
        });
        bad.is_none_or(|b| b.int64_value(&[]) == 0)
    }

    /// Grows the scale after a run of good steps, halves it after an overflow.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps == GROWTH_INTERVAL {
                self.scale *= GROWTH;
                self.good_steps = 0;
            }
        } else {
            self.scale *= BACKOFF;
            self.good_steps = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_skips_and_backs_off() {
        let p = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut s = GradScaler::default();
        s.scale(&(&p * 2.0).sum(Kind::Float)).backward();
        let params = vec![("p".to_string(), p.shallow_clone())];
        assert!(s.unscale(&params));
        let g = Vec::<f32>::try_from(p.grad()).unwrap();
        assert_eq!(g, vec![2.0, 2.0, 2.0]);
        s.update(true);
        let mut grad = p.grad();
        let _ = grad.fill_(f64::INFINITY);
        assert!(!s.unscale(&params));
        s.update(false);
        assert_eq!(s.scale, INIT_SCALE * BACKOFF);
    }
}
