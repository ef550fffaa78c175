//! Parameter creation with the official initialisation.
//!
//! The official `_init_weights` gives every `nn.Linear` a truncated normal (std 0.02,
//! cut at ±2 absolute) and a zero bias, and every LayerNorm weight 1 / bias 0. Convolutions
//! and the head's last layer keep PyTorch's default `nn.Linear`/`nn.Conv2d` init
//! (kaiming-uniform with a = sqrt(5), i.e. U(±1/sqrt(fan_in))), because the official code
//! creates or skips them outside `apply(_init_weights)`.

use tch::{Tensor, nn};

/// `trunc_normal_(std)` as timm/DINO: inverse-CDF sampling within [a, b] = [-2, 2].
pub fn trunc_normal_(t: &mut Tensor, std: f64) {
    let (a, b) = (-2.0f64, 2.0f64);
    let cdf = |x: f64| (1.0 + erf(x / std::f64::consts::SQRT_2)) / 2.0;
    let (l, u) = (cdf(a / std), cdf(b / std));
    tch::no_grad(|| {
        let _ = t.uniform_(2.0 * l - 1.0, 2.0 * u - 1.0);
        let _ = t.erfinv_();
        let _ = t.g_mul_scalar_(std * std::f64::consts::SQRT_2);
        let _ = t.clamp_(a, b);
    });
}

/// erf through the Numerical Recipes `erfc` Chebyshev fit (|error| < 1.2e-7): only the
/// truncation bounds depend on it, and those sit at 100 sigma for std 0.02.
fn erf(x: f64) -> f64 {
    // erfc(|x|) = t * exp(-x^2 + P(t)), t = 1 / (1 + |x|/2), P in Horner form.
    const P: [f64; 10] = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ];
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = P.iter().rev().fold(0.0, |acc, c| acc * t + c);
    let y = 1.0 - t * (-x * x + poly).exp();
    if x >= 0.0 { y } else { -y }
}

/// An `nn.Linear` with the official init: weight trunc-normal(0.02), bias zero.
pub fn linear(p: nn::Path, fan_in: i64, fan_out: i64, bias: bool) -> nn::Linear {
    let mut ws = p.var("weight", &[fan_out, fan_in], nn::Init::Const(0.0));
    trunc_normal_(&mut ws, 0.02);
    let bs = bias.then(|| p.var("bias", &[fan_out], nn::Init::Const(0.0)));
    nn::Linear { ws, bs }
}

/// PyTorch's default `nn.Linear`/`nn.Conv2d` weight init: U(±1/sqrt(fan_in)).
pub fn torch_default_uniform(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// LayerNorm with weight 1, bias 0 and the given epsilon.
pub fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunc_normal_has_requested_spread() {
        tch::manual_seed(0);
        let mut t = Tensor::zeros([100_000], (tch::Kind::Float, tch::Device::Cpu));
        trunc_normal_(&mut t, 0.02);
        let std = t.std(true).double_value(&[]);
        let mean = t.mean(tch::Kind::Float).double_value(&[]);
        assert!((std - 0.02).abs() < 5e-4, "std {std}");
        assert!(mean.abs() < 5e-4, "mean {mean}");
    }

    #[test]
    fn erf_matches_known_values() {
        assert!((erf(0.5) - 0.520_499_877_813_046_5).abs() < 1e-7);
        assert!((erf(-1.0) + 0.842_700_792_949_714_9).abs() < 1e-7);
    }
}
