//! The official DINO weight names and shapes.
//!
//! Keys equal those of the released PyTorch checkpoints (`vision_transformer.py`,
//! `DINOHead`), so a dino-rs file loads into timm or the official code and back.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{HeadConfig, VitConfig};
use crate::error::CoreError;

/// Expected `(key, shape)` of every backbone parameter, in module order.
pub fn backbone_shapes(cfg: &VitConfig) -> Vec<(String, Vec<usize>)> {
    let d = cfg.embed_dim;
    let h = cfg.mlp_hidden();
    let p = cfg.patch_size;
    let mut v = vec![
        ("cls_token".to_string(), vec![1, 1, d]),
        ("pos_embed".to_string(), vec![1, cfg.num_tokens(), d]),
        (
            "patch_embed.proj.weight".to_string(),
            vec![d, cfg.in_chans, p, p],
        ),
        ("patch_embed.proj.bias".to_string(), vec![d]),
    ];
    for i in 0..cfg.depth {
        let b = |s: &str| format!("blocks.{i}.{s}");
        v.push((b("norm1.weight"), vec![d]));
        v.push((b("norm1.bias"), vec![d]));
        v.push((b("attn.qkv.weight"), vec![3 * d, d]));
        if cfg.qkv_bias {
            v.push((b("attn.qkv.bias"), vec![3 * d]));
        }
        v.push((b("attn.proj.weight"), vec![d, d]));
        v.push((b("attn.proj.bias"), vec![d]));
        v.push((b("norm2.weight"), vec![d]));
        v.push((b("norm2.bias"), vec![d]));
        v.push((b("mlp.fc1.weight"), vec![h, d]));
        v.push((b("mlp.fc1.bias"), vec![h]));
        v.push((b("mlp.fc2.weight"), vec![d, h]));
        v.push((b("mlp.fc2.bias"), vec![d]));
    }
    v.push(("norm.weight".to_string(), vec![d]));
    v.push(("norm.bias".to_string(), vec![d]));
    v
}

/// Index in `nn.Sequential` of each Linear of the head MLP, as the official `DINOHead`
/// builds it (`Linear[, BN], GELU` repeated, then the bottleneck `Linear`).
pub fn head_linear_indices(cfg: &HeadConfig) -> Vec<usize> {
    if cfg.nlayers == 1 {
        return vec![];
    }
    let stride = if cfg.use_bn { 3 } else { 2 };
    (0..cfg.nlayers).map(|i| i * stride).collect()
}

/// Expected `(key, shape)` of every head tensor (BatchNorm buffers included).
pub fn head_shapes(cfg: &HeadConfig) -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    if cfg.nlayers == 1 {
        v.push(("mlp.weight".into(), vec![cfg.bottleneck_dim, cfg.in_dim]));
        v.push(("mlp.bias".into(), vec![cfg.bottleneck_dim]));
    } else {
        let idx = head_linear_indices(cfg);
        for (layer, &i) in idx.iter().enumerate() {
            let fan_in = if layer == 0 {
                cfg.in_dim
            } else {
                cfg.hidden_dim
            };
            let fan_out = if layer + 1 == idx.len() {
                cfg.bottleneck_dim
            } else {
                cfg.hidden_dim
            };
            v.push((format!("mlp.{i}.weight"), vec![fan_out, fan_in]));
            v.push((format!("mlp.{i}.bias"), vec![fan_out]));
            if cfg.use_bn && layer + 1 < idx.len() {
                let bn = i + 1;
                for s in ["weight", "bias", "running_mean", "running_var"] {
                    v.push((format!("mlp.{bn}.{s}"), vec![cfg.hidden_dim]));
                }
                v.push((format!("mlp.{bn}.num_batches_tracked"), vec![]));
            }
        }
    }
    v.push(("last_layer.weight_g".into(), vec![cfg.out_dim, 1]));
    v.push((
        "last_layer.weight_v".into(),
        vec![cfg.out_dim, cfg.bottleneck_dim],
    ));
    v
}

/// Compares what a file holds with what an architecture needs, and reports every
/// missing key, unexpected key and shape mismatch by name in one error.
pub fn check_shapes(
    path: &Path,
    expected: &[(String, Vec<usize>)],
    found: &BTreeMap<String, Vec<usize>>,
) -> Result<(), CoreError> {
    let mut lines = Vec::new();
    for (k, shape) in expected {
        match found.get(k) {
            None => lines.push(format!("  missing key `{k}` (expected shape {shape:?})")),
            Some(s) if s != shape => lines.push(format!(
                "  shape mismatch for `{k}`: file has {s:?}, architecture needs {shape:?}"
            )),
            Some(_) => {}
        }
    }
    for k in found.keys() {
        if !expected.iter().any(|(e, _)| e == k) {
            lines.push(format!("  unexpected key `{k}`"));
        }
    }
    if lines.is_empty() {
        Ok(())
    } else {
        Err(CoreError::KeyMismatch {
            path: path.to_path_buf(),
            report: lines.join("\n"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_small_has_official_parameter_count() {
        let cfg = VitConfig::preset("vit_small", 16).unwrap();
        let n: usize = backbone_shapes(&cfg)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // ViT-S/16 as released: 21,665,664 parameters (timm num_classes=0 agrees).
        assert_eq!(n, 21_665_664);
    }

    #[test]
    fn head_keys_follow_sequential_indices() {
        let h = HeadConfig::new(384, 65536);
        let keys: Vec<_> = head_shapes(&h).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "mlp.0.weight",
                "mlp.0.bias",
                "mlp.2.weight",
                "mlp.2.bias",
                "mlp.4.weight",
                "mlp.4.bias",
                "last_layer.weight_g",
                "last_layer.weight_v"
            ]
        );
        let bn = HeadConfig { use_bn: true, ..h };
        let keys: Vec<_> = head_shapes(&bn).into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"mlp.1.running_var".to_string()));
        assert!(keys.contains(&"mlp.6.weight".to_string()));
    }

    #[test]
    fn mismatch_report_names_every_key() {
        let cfg = VitConfig::preset("vit_tiny", 16).unwrap();
        let mut found: BTreeMap<_, _> = backbone_shapes(&cfg).into_iter().collect();
        found.remove("norm.bias");
        found.insert("cls_token".into(), vec![1, 1, 7]);
        found.insert("head.weight".into(), vec![10, 192]);
        let err = check_shapes(Path::new("m.safetensors"), &backbone_shapes(&cfg), &found)
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.safetensors"));
        assert!(err.contains("missing key `norm.bias`"));
        assert!(err.contains("shape mismatch for `cls_token`"));
        assert!(err.contains("unexpected key `head.weight`"));
    }
}
