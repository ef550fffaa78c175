//! The linear probe of `eval_linear.py` (Caron et al., 2021) as a file: one linear layer
//! over frozen backbone features, with the class names and the feature recipe it was
//! trained on, so that `dino-export --linear-head` and the runtime need nothing else.
//!
//! Features (the official `LinearClassifier` input), `D = embed_dim`:
//! - without `avgpool_patchtokens`: the final-normed CLS tokens of the last
//!   `n_last_blocks` blocks, concatenated oldest block first: `feat[b * D + i]` is
//!   channel `i` of the `b`-th kept block's CLS token;
//! - with `avgpool_patchtokens` (official only with `n_last_blocks = 1`: its
//!   `torch.cat((cls.unsqueeze(-1), mean.unsqueeze(-1)), -1).reshape(B, -1)` needs the two
//!   widths equal), the CLS token and the mean of the last block's normed patch tokens
//!   **interleaved** per channel: `feat[2 * i] = cls[i]`, `feat[2 * i + 1] = mean[i]`.
//!   `dino-train linear` refuses `avgpool_patchtokens` with more than one block.
//!
//! The file holds `linear.weight` `float32 [num_classes, feat_dim]` and `linear.bias`
//! `[num_classes]`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::VitConfig;
use crate::error::CoreError;
use crate::st::{self, RawTensor, StFile};

/// `dino_rs.kind` of a linear-probe file.
pub const KIND_LINEAR: &str = "linear_head";
/// JSON [`LinearHeadConfig`], in the safetensors file and in an ONNX model's
/// `metadata_props` when the model has a `logits` output.
pub const META_LINEAR: &str = "dino_rs.linear";
pub const KEY_WEIGHT: &str = "linear.weight";
pub const KEY_BIAS: &str = "linear.bias";

/// Largest class count accepted from a file (ImageNet-21k has 21,843).
const MAX_CLASSES: usize = 100_000;
/// Largest `n_last_blocks` accepted from a file (deeper than any ViT dino-rs builds).
const MAX_LAST_BLOCKS: usize = 64;

/// What a linear probe was trained on and predicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearHeadConfig {
    /// Class names in label order (the ImageFolder's sorted sub-folders).
    pub classes: Vec<String>,
    /// Width of one block's CLS token (the backbone's `embed_dim`).
    pub embed_dim: usize,
    pub n_last_blocks: usize,
    pub avgpool_patchtokens: bool,
    /// [`crate::onnx_meta::fingerprint`] of the backbone the probe was trained on.
    pub backbone_fingerprint: String,
}

impl LinearHeadConfig {
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Length of the concatenated feature vector.
    pub fn feat_dim(&self) -> usize {
        self.embed_dim * (self.n_last_blocks + usize::from(self.avgpool_patchtokens))
    }

    /// Checks the ranges, and against the backbone when given.
    pub fn validate(&self, vit: Option<&VitConfig>) -> Result<(), String> {
        let n = self.classes.len();
        if !(1..=MAX_CLASSES).contains(&n) {
            return Err(format!("{n} classes (expected 1 to {MAX_CLASSES})"));
        }
        if !(1..=MAX_LAST_BLOCKS).contains(&self.n_last_blocks) {
            return Err(format!(
                "n_last_blocks {} (expected 1 to {MAX_LAST_BLOCKS})",
                self.n_last_blocks
            ));
        }
        if self.embed_dim == 0 {
            return Err("embed_dim 0".into());
        }
        if self.avgpool_patchtokens && self.n_last_blocks != 1 {
            return Err(format!(
                "avgpool_patchtokens with n_last_blocks {} (the official layout exists for 1 only)",
                self.n_last_blocks
            ));
        }
        if let Some(v) = vit {
            if v.embed_dim != self.embed_dim {
                return Err(format!(
                    "trained on features of width {}, the backbone's embed_dim is {}",
                    self.embed_dim, v.embed_dim
                ));
            }
            if self.n_last_blocks > v.depth {
                return Err(format!(
                    "uses the last {} blocks, the backbone has {}",
                    self.n_last_blocks, v.depth
                ));
            }
        }
        Ok(())
    }
}

/// A linear probe with its weights, row-major `[num_classes, feat_dim]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearHead {
    pub config: LinearHeadConfig,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl LinearHead {
    /// Reads and checks a `linear.safetensors` written by `dino-train linear`.
    pub fn read(path: &Path) -> Result<Self, CoreError> {
        let f = StFile::read(path)?;
        f.check_format()?;
        let kind = f.meta(st::META_KIND)?;
        if kind != KIND_LINEAR {
            return Err(CoreError::Format {
                path: path.to_path_buf(),
                why: format!(
                    "a `{kind}` file, not a linear probe (`dino-train linear` writes one)"
                ),
            });
        }
        let config: LinearHeadConfig = f.meta_json(META_LINEAR)?;
        config
            .validate(None)
            .map_err(|why| CoreError::BadMetadata {
                path: path.to_path_buf(),
                key: META_LINEAR.into(),
                why,
            })?;
        let (c, d) = (config.num_classes(), config.feat_dim());
        let weight = tensor(&f, KEY_WEIGHT, &[c, d])?;
        let bias = tensor(&f, KEY_BIAS, &[c])?;
        Ok(Self {
            config,
            weight,
            bias,
        })
    }

    /// Writes the probe atomically.
    pub fn write(&self, path: &Path) -> Result<(), CoreError> {
        let (c, d) = (self.config.num_classes(), self.config.feat_dim());
        if self.weight.len() != c * d || self.bias.len() != c {
            return Err(CoreError::Format {
                path: path.to_path_buf(),
                why: format!(
                    "weights of {} and {} values for {c} classes x {d} features",
                    self.weight.len(),
                    self.bias.len()
                ),
            });
        }
        let mut tensors = BTreeMap::new();
        tensors.insert(
            KEY_WEIGHT.into(),
            RawTensor::from_f32(vec![c, d], &self.weight),
        );
        tensors.insert(KEY_BIAS.into(), RawTensor::from_f32(vec![c], &self.bias));
        let mut meta = std::collections::HashMap::new();
        meta.insert(st::META_FORMAT.into(), st::FORMAT_V1.into());
        meta.insert(st::META_KIND.into(), KIND_LINEAR.into());
        meta.insert(st::META_VERSION.into(), env!("CARGO_PKG_VERSION").into());
        meta.insert(
            META_LINEAR.into(),
            serde_json::to_string(&self.config).expect("the config serialises"),
        );
        st::write_atomic(path, &tensors, meta)
    }
}

/// A float32 tensor of exactly `shape`, with finite values.
fn tensor(f: &StFile, key: &str, shape: &[usize]) -> Result<Vec<f32>, CoreError> {
    let bad = |why: String| CoreError::BadMetadata {
        path: f.path.clone(),
        key: key.into(),
        why,
    };
    let t = f
        .tensors
        .get(key)
        .ok_or_else(|| bad("tensor missing".into()))?;
    if t.shape != shape {
        return Err(bad(format!("shape {:?}, expected {shape:?}", t.shape)));
    }
    let v = t.to_f32(&f.path, key)?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(bad("holds NaN or infinite values".into()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> LinearHead {
        let config = LinearHeadConfig {
            classes: vec!["cat".into(), "dog".into(), "emu".into()],
            embed_dim: 2,
            n_last_blocks: 3,
            avgpool_patchtokens: false,
            backbone_fingerprint: "ab".into(),
        };
        let d = config.feat_dim();
        LinearHead {
            weight: (0..3 * d).map(|i| i as f32 * 0.5).collect(),
            bias: vec![1.0, -1.0, 0.25],
            config,
        }
    }

    #[test]
    fn round_trips_and_checks_kind() {
        let dir = std::env::temp_dir().join(format!("dino-linear-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("linear.safetensors");
        let h = head();
        assert_eq!(h.config.feat_dim(), 6);
        h.write(&p).unwrap();
        assert_eq!(LinearHead::read(&p).unwrap(), h);

        let other = dir.join("backbone.safetensors");
        let vit = VitConfig::preset("vit_tiny", 16).unwrap();
        let meta = st::backbone_metadata(&vit, None, None, st::KIND_BACKBONE);
        st::write_atomic(&other, &BTreeMap::new(), meta).unwrap();
        let e = LinearHead::read(&other).unwrap_err().to_string();
        assert!(e.contains("not a linear probe"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validate_checks_against_the_backbone() {
        let mut c = head().config;
        let mut vit = VitConfig::preset("vit_tiny", 16).unwrap();
        assert!(c.validate(Some(&vit)).unwrap_err().contains("embed_dim"));
        c.embed_dim = vit.embed_dim;
        assert!(c.validate(Some(&vit)).is_ok());
        let mut pooled = c.clone();
        pooled.avgpool_patchtokens = true;
        assert!(pooled.validate(None).unwrap_err().contains("avgpool"));
        pooled.n_last_blocks = 1;
        assert!(pooled.validate(Some(&vit)).is_ok());
        vit.depth = 1;
        assert!(c.validate(Some(&vit)).unwrap_err().contains("blocks"));
        c.classes.clear();
        assert!(c.validate(None).unwrap_err().contains("0 classes"));
    }
}
