//! The DINO projection head of a foreign file, read off its tensor shapes: official files
//! carry no config, so `out_dim`, the widths, BatchNorm and the depth come from the
//! `DINOHead` keys (`mlp.{0,2,4}.weight`, `last_layer.weight_v`, ...), and
//! `norm_last_layer` from `last_layer.weight_g` (frozen at 1 when it was set).

use std::collections::BTreeMap;
use std::path::Path;

use dino_core::HeadConfig;
use dino_core::st::RawTensor;
use dino_core::weights::{check_shapes, head_shapes};

use crate::error::ImportError;

/// The head config `tensors` (keys without the `head.` prefix) describe, checked against
/// the official layout of that config.
pub fn infer_head(
    path: &Path,
    tensors: &BTreeMap<String, RawTensor>,
) -> Result<HeadConfig, ImportError> {
    let bad = |why: String| ImportError::weights(path, format!("not a DINO head: {why}"));
    let shape = |k: &str| -> Result<&[usize], ImportError> {
        tensors
            .get(k)
            .map(|t| t.shape.as_slice())
            .ok_or_else(|| bad(format!("missing key `head.{k}`")))
    };
    let &[out_dim, bottleneck_dim] = shape("last_layer.weight_v")? else {
        return Err(bad("`head.last_layer.weight_v` is not a matrix".into()));
    };
    // The Linear layers of the MLP, in Sequential order (BatchNorm weights are vectors).
    let mut linears: Vec<(usize, &[usize])> = tensors
        .iter()
        .filter_map(|(k, t)| {
            let i = k.strip_prefix("mlp.")?.strip_suffix(".weight")?;
            Some((i.parse().ok()?, t.shape.as_slice()))
        })
        .filter(|(_, s)| s.len() == 2)
        .collect();
    linears.sort_by_key(|(i, _)| *i);
    let (nlayers, in_dim, hidden_dim) = match (tensors.get("mlp.weight"), linears.as_slice()) {
        (Some(w), _) if w.shape.len() == 2 => (1, w.shape[1], 0),
        (_, [first, .., _]) => (linears.len(), first.1[1], first.1[0]),
        _ => return Err(bad("no `head.mlp.*` layers".into())),
    };
    let weight_g = tensors
        .get("last_layer.weight_g")
        .ok_or_else(|| bad("missing key `head.last_layer.weight_g`".into()))?;
    let g = weight_g.to_f32(path, "head.last_layer.weight_g")?;
    let mut cfg = HeadConfig {
        use_bn: tensors.contains_key("mlp.1.running_mean"),
        norm_last_layer: g.iter().all(|&v| v == 1.0),
        nlayers,
        bottleneck_dim,
        ..HeadConfig::new(in_dim, out_dim)
    };
    if nlayers > 1 {
        cfg.hidden_dim = hidden_dim;
    }
    let found = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();
    check_shapes(path, &head_shapes(&cfg), &found)?;
    Ok(cfg)
}

/// The entries of `tensors` under `head.`, without the prefix; the others are returned apart.
pub fn split_head(
    tensors: BTreeMap<String, RawTensor>,
) -> (BTreeMap<String, RawTensor>, BTreeMap<String, RawTensor>) {
    let (head, rest): (BTreeMap<_, _>, BTreeMap<_, _>) = tensors
        .into_iter()
        .partition(|(k, _)| k.starts_with("head."));
    let head = head
        .into_iter()
        .map(|(k, v)| (k["head.".len()..].to_string(), v))
        .collect();
    (head, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero tensors of every key of `cfg`'s head, `weight_g` filled with `g`.
    fn head(cfg: &HeadConfig, g: f32) -> BTreeMap<String, RawTensor> {
        head_shapes(cfg)
            .into_iter()
            .map(|(k, s)| {
                let n = s.iter().product::<usize>();
                let fill = if k.ends_with("weight_g") { g } else { 0.0 };
                let t = RawTensor::from_f32(s, &vec![fill; n]);
                (k, t)
            })
            .collect()
    }

    #[test]
    fn configs_come_back_from_their_shapes() {
        let base = HeadConfig {
            hidden_dim: 48,
            bottleneck_dim: 16,
            ..HeadConfig::new(24, 64)
        };
        for cfg in [
            base.clone(),
            HeadConfig {
                use_bn: true,
                ..base.clone()
            },
            HeadConfig {
                nlayers: 1,
                ..base.clone()
            },
            HeadConfig {
                nlayers: 2,
                use_bn: true,
                ..base.clone()
            },
        ] {
            let got = infer_head(Path::new("h.pth"), &head(&cfg, 1.0)).unwrap();
            let want = HeadConfig {
                hidden_dim: if cfg.nlayers == 1 { got.hidden_dim } else { 48 },
                ..cfg.clone()
            };
            assert_eq!(got, want);
        }
        // A trained weight norm means norm_last_layer was off.
        let got = infer_head(Path::new("h.pth"), &head(&base, 0.7)).unwrap();
        assert!(!got.norm_last_layer);
    }

    #[test]
    fn missing_or_foreign_tensors_are_named() {
        let cfg = HeadConfig::new(24, 64);
        let mut t = head(&cfg, 1.0);
        t.remove("mlp.2.bias");
        let e = infer_head(Path::new("h.pth"), &t).unwrap_err().to_string();
        assert!(e.contains("h.pth") && e.contains("mlp.2.bias"), "{e}");
        let e = infer_head(Path::new("h.pth"), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("h.pth") && e.contains("last_layer.weight_v"),
            "{e}"
        );
    }
}
