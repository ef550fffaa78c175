//! Architecture configs of the DINO Vision Transformer and projection head.
//!
//! Field names follow the official `vision_transformer.py` / `main_dino.py` arguments so a
//! config reads the same as the paper's code. A config travels with every checkpoint (in
//! the safetensors metadata) and every ONNX file (in `metadata_props`).

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// ImageNet normalisation, the official default.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The backbone: a pre-norm ViT whose forward returns the normed CLS token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Preset name (`vit_tiny`, `vit_small`, `vit_base`) or `custom`.
    pub arch: String,
    pub patch_size: usize,
    /// The size the position embedding was learned at; other sizes are interpolated.
    pub img_size: usize,
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    /// Stochastic depth rate of the last block (linearly increasing over depth). Only the
    /// student uses it; inference ignores it.
    #[serde(default)]
    pub drop_path_rate: f64,
    /// LayerNorm epsilon; the official presets use 1e-6.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
}

/// Bounds of [`VitConfig::validate`]: several times the largest official model (ViT-B/8
/// at 224, ViT-g widths), far below what would exhaust memory from a crafted config.
const MAX_PATCH: usize = 64;
const MAX_IMG_SIZE: usize = 4096;
const MAX_DEPTH: usize = 64;
const MAX_WIDTH: usize = 8192;
const MAX_HEADS: usize = 128;
const MAX_IN_CHANS: usize = 16;
const MAX_MLP_RATIO: f64 = 16.0;
/// Bounds of [`HeadConfig::validate`] (the official out_dim is 65536).
const MAX_HEAD_DIM: usize = 1 << 18;
const MAX_HEAD_LAYERS: usize = 16;

/// The official ViT's settings that no preset changes.
const IN_CHANS: usize = 3;
const MLP_RATIO: f64 = 4.0;
const LAYER_NORM_EPS: f64 = 1e-6;
/// The size the official presets learn their position embedding at.
const PRESET_IMG_SIZE: usize = 224;

fn default_in_chans() -> usize {
    IN_CHANS
}
fn default_mlp_ratio() -> f64 {
    MLP_RATIO
}
fn default_true() -> bool {
    true
}
fn default_ln_eps() -> f64 {
    LAYER_NORM_EPS
}

/// The official architecture presets and their widths.
pub const PRESETS: [(&str, usize, usize, usize); 3] = [
    // (name, embed_dim, depth, num_heads)
    ("vit_tiny", 192, 12, 3),
    ("vit_small", 384, 12, 6),
    ("vit_base", 768, 12, 12),
];

impl VitConfig {
    /// A ViT of the given widths with the settings every official preset shares (their
    /// position-embedding size, MLP ratio, qkv bias, LayerNorm epsilon; no stochastic
    /// depth); not validated.
    pub fn new(
        arch: &str,
        patch_size: usize,
        embed_dim: usize,
        depth: usize,
        num_heads: usize,
    ) -> Self {
        Self {
            arch: arch.to_string(),
            patch_size,
            img_size: PRESET_IMG_SIZE,
            in_chans: IN_CHANS,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: MLP_RATIO,
            qkv_bias: true,
            drop_path_rate: 0.0,
            layer_norm_eps: LAYER_NORM_EPS,
        }
    }

    /// A named preset at a given patch size, with the official 224px position embedding.
    pub fn preset(arch: &str, patch_size: usize) -> Result<Self, CoreError> {
        let &(_, embed_dim, depth, num_heads) = PRESETS
            .iter()
            .find(|p| p.0 == arch)
            .ok_or_else(|| CoreError::UnknownArch(arch.to_string()))?;
        let cfg = Self::new(arch, patch_size, embed_dim, depth, num_heads);
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn with_img_size(mut self, img_size: usize) -> Self {
        self.img_size = img_size;
        self
    }

    /// Checks the invariants every consumer relies on, and ranges that bound what a file
    /// can make a tool allocate (configs travel inside checkpoints and models).
    pub fn validate(&self) -> Result<(), CoreError> {
        let bad = |why: String| Err(CoreError::InvalidConfig(why));
        if self.patch_size == 0 || self.img_size == 0 || self.depth == 0 || self.num_heads == 0 {
            return bad("patch_size, img_size, depth and num_heads must be positive".into());
        }
        for (name, v, max) in [
            ("patch_size", self.patch_size, MAX_PATCH),
            ("img_size", self.img_size, MAX_IMG_SIZE),
            ("depth", self.depth, MAX_DEPTH),
            ("embed_dim", self.embed_dim, MAX_WIDTH),
            ("num_heads", self.num_heads, MAX_HEADS),
            ("in_chans", self.in_chans, MAX_IN_CHANS),
        ] {
            if v == 0 || v > max {
                return bad(format!("{name} {v} is outside 1 to {max}"));
            }
        }
        let positive = |v: f64, max: f64| v.is_finite() && v > 0.0 && v <= max;
        if !positive(self.mlp_ratio, MAX_MLP_RATIO) || !positive(self.layer_norm_eps, 1.0) {
            return bad(format!(
                "mlp_ratio {} must be in (0, {MAX_MLP_RATIO}] and layer_norm_eps {} in (0, 1]",
                self.mlp_ratio, self.layer_norm_eps
            ));
        }
        if !self.img_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "img_size {} is not a multiple of patch_size {}",
                self.img_size, self.patch_size
            ));
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return bad(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return bad(format!(
                "drop_path_rate {} not in [0, 1)",
                self.drop_path_rate
            ));
        }
        Ok(())
    }

    /// Patches per side at the native size.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Tokens at the native size, CLS included.
    pub fn num_tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Drop-path rate of block `i`: linear from 0 to `drop_path_rate`, as the official code.
    pub fn drop_path_at(&self, i: usize) -> f64 {
        if self.depth <= 1 {
            return 0.0;
        }
        self.drop_path_rate * i as f64 / (self.depth - 1) as f64
    }
}

/// The DINO projection head: MLP, L2-normalised bottleneck, weight-normalised last layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    pub in_dim: usize,
    pub out_dim: usize,
    #[serde(default)]
    pub use_bn: bool,
    #[serde(default = "default_true")]
    pub norm_last_layer: bool,
    #[serde(default = "default_nlayers")]
    pub nlayers: usize,
    #[serde(default = "default_hidden")]
    pub hidden_dim: usize,
    #[serde(default = "default_bottleneck")]
    pub bottleneck_dim: usize,
}

/// The official DINO head's depth and widths (`main_dino.py`'s `DINOHead` defaults).
pub const HEAD_NLAYERS: usize = 3;
pub const HEAD_HIDDEN_DIM: usize = 2048;
pub const HEAD_BOTTLENECK_DIM: usize = 256;

fn default_nlayers() -> usize {
    HEAD_NLAYERS
}
fn default_hidden() -> usize {
    HEAD_HIDDEN_DIM
}
fn default_bottleneck() -> usize {
    HEAD_BOTTLENECK_DIM
}

impl HeadConfig {
    /// The official defaults for a backbone of width `in_dim`.
    pub fn new(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            out_dim,
            use_bn: false,
            norm_last_layer: true,
            nlayers: HEAD_NLAYERS,
            hidden_dim: HEAD_HIDDEN_DIM,
            bottleneck_dim: HEAD_BOTTLENECK_DIM,
        }
    }

    pub fn validate(&self) -> Result<(), CoreError> {
        if self.nlayers == 0 || self.out_dim == 0 || self.bottleneck_dim == 0 {
            return Err(CoreError::InvalidConfig(
                "head nlayers, out_dim and bottleneck_dim must be positive".into(),
            ));
        }
        for (name, v, max) in [
            ("in_dim", self.in_dim, MAX_WIDTH),
            ("out_dim", self.out_dim, MAX_HEAD_DIM),
            ("hidden_dim", self.hidden_dim, MAX_HEAD_DIM),
            ("bottleneck_dim", self.bottleneck_dim, MAX_HEAD_DIM),
            ("nlayers", self.nlayers, MAX_HEAD_LAYERS),
        ] {
            if v > max {
                return Err(CoreError::InvalidConfig(format!(
                    "head {name} {v} is above {max}"
                )));
            }
        }
        Ok(())
    }
}

/// How images are turned into model input at evaluation and deployment time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalTransform {
    /// Shorter side after the bicubic resize (the official 256 for a 224 crop). Equal to
    /// `crop_size` for native-size evaluation of small images.
    pub resize_size: usize,
    pub crop_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl EvalTransform {
    /// The official eval transform: resize to `crop * 256 / 224`, centre crop, ImageNet stats.
    pub fn standard(crop_size: usize) -> Self {
        Self {
            resize_size: crop_size * 256 / 224,
            crop_size,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_sizes_are_refused() {
        let ok = VitConfig::preset("vit_base", 8).unwrap();
        assert!(ok.validate().is_ok());
        for (f, v) in [
            ("depth", 100_000),
            ("embed_dim", 1 << 30),
            ("img_size", 1 << 20),
            ("patch_size", 1024),
        ] {
            let mut c = ok.clone();
            match f {
                "depth" => c.depth = v,
                "embed_dim" => c.embed_dim = v,
                "img_size" => c.img_size = v,
                _ => c.patch_size = v,
            }
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(f), "{f}: {e}");
        }
        let mut c = ok.clone();
        c.mlp_ratio = f64::NAN;
        assert!(c.validate().is_err());
        let mut h = HeadConfig::new(768, 65536);
        assert!(h.validate().is_ok());
        h.out_dim = 1 << 40;
        assert!(h.validate().unwrap_err().to_string().contains("out_dim"));
    }

    #[test]
    fn presets_have_official_widths() {
        let s = VitConfig::preset("vit_small", 16).unwrap();
        assert_eq!((s.embed_dim, s.depth, s.num_heads), (384, 12, 6));
        assert_eq!(s.num_tokens(), 197);
        assert!(matches!(
            VitConfig::preset("vit_huge", 16),
            Err(CoreError::UnknownArch(_))
        ));
    }

    #[test]
    fn rejects_inconsistent_sizes() {
        let mut c = VitConfig::preset("vit_tiny", 16).unwrap();
        c.img_size = 100;
        assert!(c.validate().is_err());
    }

    #[test]
    fn drop_path_is_linear_over_depth() {
        let mut c = VitConfig::preset("vit_tiny", 16).unwrap();
        c.drop_path_rate = 0.1;
        assert_eq!(c.drop_path_at(0), 0.0);
        assert!((c.drop_path_at(11) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn unknown_fields_are_errors() {
        let r: Result<VitConfig, _> = serde_json::from_str(
            r#"{"arch":"custom","patch_size":4,"img_size":32,"embed_dim":8,"depth":1,"num_heads":2,"bogus":1}"#,
        );
        assert!(r.is_err());
    }
}
