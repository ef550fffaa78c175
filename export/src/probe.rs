//! A linear probe (`dino-train linear`, after `eval_linear.py`) as the `logits` output.
//!
//! The features are those of the official `LinearClassifier` input (see
//! [`dino_core::linear`]): the final-normed CLS tokens of the last `n_last_blocks` blocks
//! in block order, and with `avgpool_patchtokens` (defined for one block only) the mean
//! of the last block's normed patch tokens, interleaved with the CLS token value by value.
//! The graph concatenates CLS and patch mean as two blocks instead and permutes the
//! weight's columns to match at export time: the same scores, two nodes fewer.

use std::path::Path;

use dino_core::VitConfig;
use dino_core::linear::LinearHead;

use crate::error::ExportError;
use crate::onnx::graph::{Graph, attr_int, attr_ints};
use crate::vit::{Weights, gemm, layer_norm, patches};

/// Reads the probe at `path` and checks it against the backbone read from `backbone`
/// (its config and its weights' `fingerprint`).
pub fn load(
    path: &Path,
    backbone: &Path,
    vit: &VitConfig,
    fingerprint: &str,
) -> Result<LinearHead, ExportError> {
    let head = LinearHead::read(path)?;
    let c = &head.config;
    let mismatch = |why: String| ExportError::LinearMismatch {
        head: path.to_path_buf(),
        backbone: backbone.to_path_buf(),
        why,
    };
    c.validate(Some(vit)).map_err(mismatch)?;
    if c.avgpool_patchtokens && c.n_last_blocks != 1 {
        return Err(ExportError::Weights {
            path: path.to_path_buf(),
            why: format!(
                "avgpool_patchtokens with n_last_blocks {}: the official feature layout \
                 (eval_linear.py) pairs the patch mean with one block's CLS token only",
                c.n_last_blocks
            ),
        });
    }
    if c.backbone_fingerprint != fingerprint {
        return Err(mismatch(format!(
            "it was trained on the backbone with fingerprint {}, this one has {}; export \
             the backbone it was trained on, or train a probe on this one (dino-train linear)",
            short(&c.backbone_fingerprint),
            short(fingerprint)
        )));
    }
    Ok(head)
}

fn short(fp: &str) -> &str {
    fp.get(..12).unwrap_or(fp)
}

/// What the backbone part of the graph provides to the probe.
pub struct Layers<'a> {
    /// The un-normed CLS rows `[batch, D]` of the last `n_last_blocks` blocks, in order.
    pub cls: &'a [String],
    /// The last block's normed tokens `[batch, T, D]` (present with `avgpool_patchtokens`).
    pub normed: Option<&'a str>,
    /// Tokens per image, CLS included.
    pub tokens: usize,
}

/// Adds the probe's nodes; its class scores `[batch, num_classes]` are named `out`.
pub fn logits(
    g: &mut Graph,
    cfg: &VitConfig,
    w: &Weights,
    head: &LinearHead,
    layers: &Layers,
    out: &str,
) -> Result<(), ExportError> {
    let (d, n) = (cfg.embed_dim, layers.cls.len());
    let eps = cfg.layer_norm_eps as f32;
    // One LayerNorm over the `[batch * n, D]` CLS rows (image-major, block order).
    let rows = match layers.cls {
        [one] => one.clone(),
        many => {
            let refs: Vec<&str> = many.iter().map(String::as_str).collect();
            let cat = g.node("Concat", "probe/cls", &refs, vec![attr_int("axis", 1)]);
            let s = g.ints(&[-1, d as i64], false);
            g.node("Reshape", "probe/cls_rows", &[&cat, &s], vec![])
        }
    };
    let mut feats = layer_norm(g, w, &rows, "norm", eps, "probe/cls_normed")?;
    if n > 1 {
        let s = g.ints(&[-1, (n * d) as i64], false);
        feats = g.node("Reshape", "probe/cls_features", &[&feats, &s], vec![]);
    }
    if head.config.avgpool_patchtokens {
        let normed = layers.normed.ok_or_else(|| ExportError::Weights {
            path: w.path.to_path_buf(),
            why: "internal: the patch mean needs the last block's tokens".into(),
        })?;
        let p = patches(g, normed, layers.tokens, 1, "probe/patch_tokens");
        let mean = mean_over_axis1(g, &p, "probe/patch_mean");
        let attrs = vec![attr_int("axis", 1)];
        feats = g.node("Concat", "probe/features", &[&feats, &mean], attrs);
    }
    let (c, f) = (head.config.num_classes(), head.config.feat_dim());
    let wt = g.weight("linear.weight", &[c, f], &blocked_columns(head));
    let bt = g.weight("linear.bias", &[c], &head.bias);
    gemm(g, out, &feats, &wt, &bt);
    Ok(())
}

/// `ReduceMean` over axis 1, dropping it (axes an attribute before opset 18, an input since).
fn mean_over_axis1(g: &mut Graph, x: &str, name: &str) -> String {
    let keep = attr_int("keepdims", 0);
    if g.opset >= 18 {
        let axes = g.ints(&[1], false);
        g.node("ReduceMean", name, &[x, &axes], vec![keep])
    } else {
        g.node(
            "ReduceMean",
            name,
            &[x],
            vec![attr_ints("axes", &[1]), keep],
        )
    }
}

/// The weight `[C, F]` for features laid out as `[CLS blocks..., patch mean]`: with
/// `avgpool_patchtokens` the file's column `2j` (CLS value `j`) goes to `j` and `2j + 1`
/// (patch-mean value `j`) to `D + j`; otherwise the layouts agree.
fn blocked_columns(head: &LinearHead) -> Vec<f32> {
    let f = head.config.feat_dim();
    if !head.config.avgpool_patchtokens {
        return head.weight.clone();
    }
    let half = f / 2;
    let mut out = vec![0f32; head.weight.len()];
    for (src, dst) in head.weight.chunks_exact(f).zip(out.chunks_exact_mut(f)) {
        for j in 0..half {
            dst[j] = src[2 * j];
            dst[half + j] = src[2 * j + 1];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino_core::linear::LinearHeadConfig;

    #[test]
    fn interleaved_columns_become_blocks() {
        let config = LinearHeadConfig {
            classes: vec!["a".into(), "b".into()],
            embed_dim: 2,
            n_last_blocks: 1,
            avgpool_patchtokens: true,
            backbone_fingerprint: String::new(),
        };
        // Row r: [c0, m0, c1, m1] = r*10 + [0, 1, 2, 3].
        let weight = vec![0., 1., 2., 3., 10., 11., 12., 13.];
        let mut head = LinearHead {
            config,
            weight,
            bias: vec![0.; 2],
        };
        assert_eq!(blocked_columns(&head), [0., 2., 1., 3., 10., 12., 11., 13.]);
        head.config.avgpool_patchtokens = false;
        head.config.embed_dim = 4;
        assert_eq!(blocked_columns(&head), head.weight);
    }
}
