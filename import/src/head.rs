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
    let bad = |why: String| ImportError::Weights {
        path: path.to_path_buf(),
        why: format!("not a DINO head: {why}"),
    };
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
