//! The official DINO ViT forward pass as an ONNX graph.
//!
//! It computes what `vision_transformer.py` computes (pre-norm blocks, qkv with bias,
//! softmax(QK^T / sqrt(d)), exact erf GELU, final LayerNorm, CLS token) with as few nodes as
//! that allows, because node count and per-node overhead decide edge latency:
//! - tokens are kept as a 2-D `[batch * T, D]` matrix between blocks, so every Linear is
//!   one `Gemm` (bias fused, PyTorch's `[out, in]` weight used as is with `transB`);
//! - the CLS token, the (export-time interpolated) position embedding and the patch
//!   projection bias are folded into one constant, added after a zero `Pad` makes room for
//!   CLS (no Shape/Expand/Concat to broadcast CLS over the batch);
//! - the attention scale is folded into the query rows of the qkv weight (an exact power
//!   of two for every preset: head_dim 64);
//! - without `patch_tokens` (or a probe's patch mean), the last block and the final norm
//!   run on the CLS row only.
//!
//! A linear probe's `logits` are built in [`crate::probe`] from the CLS rows this
//! collects.

use std::collections::BTreeMap;
use std::path::Path;

use dino_core::VitConfig;
use dino_core::linear::LinearHead;
use dino_core::onnx_meta::{
    INPUT_IMAGE, OUTPUT_ATTENTION, OUTPUT_EMBEDDING, OUTPUT_LOGITS, OUTPUT_PATCH_TOKENS,
};
use dino_core::pos_embed::interpolate_pos_embed;
use dino_core::st::RawTensor;

use crate::dense::{Dense, dense, qkv_part};
use crate::error::ExportError;
use crate::onnx::graph::{Dim, Float, Graph, Linears, attr_float, attr_int, attr_ints};
use crate::onnx::proto::data_type;
use crate::probe;

/// Which optional outputs the graph has (`embedding` is always there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    pub patch_tokens: bool,
    pub attention: bool,
}

impl Outputs {
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = vec![OUTPUT_EMBEDDING];
        if self.patch_tokens {
            v.push(OUTPUT_PATCH_TOKENS);
        }
        if self.attention {
            v.push(OUTPUT_ATTENTION);
        }
        v
    }
}

#[derive(Clone, Debug)]
pub struct GraphOptions<'a> {
    pub img_size: usize,
    pub outputs: Outputs,
    pub opset: i64,
    pub float: Float,
    /// Gemm, or int8 weights with dynamically quantised activations, for the blocks'
    /// Linear layers (the patch embedding and a probe stay float).
    pub linears: Linears,
    /// A linear probe whose class scores become the `logits` output.
    pub linear: Option<&'a LinearHead>,
}

/// Backbone tensors (official names, no prefix) already checked against the config.
pub struct Weights<'a> {
    pub path: &'a Path,
    pub tensors: &'a BTreeMap<String, RawTensor>,
}

impl Weights<'_> {
    fn get(&self, key: &str) -> Result<Vec<f32>, ExportError> {
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| ExportError::MissingKey {
                path: self.path.to_path_buf(),
                key: key.to_string(),
            })?;
        Ok(t.to_f32(self.path, key)?)
    }
}

/// Builds the whole graph: input `image`, outputs as requested.
pub fn build(cfg: &VitConfig, w: &Weights, opts: &GraphOptions) -> Result<Graph, ExportError> {
    let t = (opts.img_size / cfg.patch_size).pow(2) + 1;
    let mut g = Graph::new(opts.opset, opts.float);
    g.linears = opts.linears;
    let x = image_input(&mut g, cfg, opts.img_size);
    let mut x = embed_tokens(&mut g, cfg, w, &x, opts.img_size)?;
    let avgpool = opts.linear.is_some_and(|h| h.config.avgpool_patchtokens);
    // The last block computes every token only when some output needs them.
    let all_tokens = opts.outputs.patch_tokens || avgpool;
    let probe_from = opts.linear.map_or(usize::MAX, |h| {
        cfg.depth.saturating_sub(h.config.n_last_blocks)
    });
    let (mut attn, mut cls) = (String::new(), Vec::new());
    for i in 0..cfg.depth {
        let cls_only = i + 1 == cfg.depth && !all_tokens;
        (x, attn) = block(&mut g, cfg, w, i, &x, t, cls_only)?;
        if i >= probe_from {
            // A CLS-only last block already returns the `[batch, D]` CLS rows.
            let name = format!("blocks.{i}/probe_cls");
            let row = if cls_only {
                x.clone()
            } else {
                cls_row(&mut g, &x, t, cfg.embed_dim, &name)
            };
            cls.push(row);
        }
    }
    let normed = final_outputs(&mut g, cfg, w, opts, &x, &attn, t)?;
    if let Some(h) = opts.linear {
        let out = internal_name(&g, OUTPUT_LOGITS);
        let layers = probe::Layers {
            cls: &cls,
            normed: normed.as_deref(),
            tokens: t,
        };
        probe::logits(&mut g, cfg, w, h, &layers, &out)?;
    }
    declare_outputs(&mut g, cfg, opts, t);
    Ok(g)
}

/// The `image` input, cast to float16 for an fp16 graph.
fn image_input(g: &mut Graph, cfg: &VitConfig, img: usize) -> String {
    let dims = [
        Dim::Named("batch"),
        Dim::Fixed(cfg.in_chans),
        Dim::Fixed(img),
        Dim::Fixed(img),
    ];
    g.input(INPUT_IMAGE, data_type::FLOAT, &dims);
    match g.float {
        Float::F32 => INPUT_IMAGE.to_string(),
        Float::F16 => g.node(
            "Cast",
            "image_fp16",
            &[INPUT_IMAGE],
            vec![attr_int("to", data_type::FLOAT16 as i64)],
        ),
    }
}

/// Patch embedding, CLS and position embedding: the `[batch * T, D]` tokens.
fn embed_tokens(
    g: &mut Graph,
    cfg: &VitConfig,
    w: &Weights,
    image: &str,
    img: usize,
) -> Result<String, ExportError> {
    let (d, p) = (cfg.embed_dim, cfg.patch_size);
    let t = (img / p) * (img / p) + 1;
    let pw = g.weight(
        "patch_embed.proj.weight",
        &[d, cfg.in_chans, p, p],
        &w.get("patch_embed.proj.weight")?,
    );
    let k = [p as i64, p as i64];
    let conv_attrs = vec![attr_ints("kernel_shape", &k), attr_ints("strides", &k)];
    let mut x = g.node("Conv", "patch_embed/proj", &[image, &pw], conv_attrs);
    let s = g.ints(&[0, d as i64, -1], false);
    x = g.node("Reshape", "patch_embed/flatten", &[&x, &s], vec![]);
    let pads = g.ints(&[0, 0, 1, 0, 0, 0], false);
    x = g.node("Pad", "patch_embed/make_room_for_cls", &[&x, &pads], vec![]);
    x = g.node(
        "Transpose",
        "patch_embed/tokens",
        &[&x],
        vec![attr_ints("perm", &[0, 2, 1])],
    );
    let mut tokens = interpolate_pos_embed(&w.get("pos_embed")?, d, p, (img, img));
    let (cls, bias) = (w.get("cls_token")?, w.get("patch_embed.proj.bias")?);
    for (i, row) in tokens.chunks_exact_mut(d).enumerate() {
        let add = if i == 0 { &cls } else { &bias };
        row.iter_mut().zip(add).for_each(|(r, a)| *r += a);
    }
    let tk = g.weight(
        "cls_token+pos_embed+patch_embed.proj.bias",
        &[1, t, d],
        &tokens,
    );
    x = g.node("Add", "patch_embed/add_cls_pos", &[&x, &tk], vec![]);
    let s = g.ints(&[-1, d as i64], false);
    Ok(g.node("Reshape", "tokens_2d", &[&x, &s], vec![]))
}

/// The final norm and the `embedding`, `patch_tokens` and `attention` values (before
/// any fp16 cast). Returns the normed tokens `[batch, T, D]` when the last block
/// computed all of them (`x` is then `[batch * T, D]`, else the CLS rows `[batch, D]`).
fn final_outputs(
    g: &mut Graph,
    cfg: &VitConfig,
    w: &Weights,
    opts: &GraphOptions,
    x: &str,
    attn: &str,
    t: usize,
) -> Result<Option<String>, ExportError> {
    let eps = cfg.layer_norm_eps as f32;
    let zero = g.ints(&[0], true);
    let emb_name = internal_name(g, OUTPUT_EMBEDDING);
    let all_tokens =
        opts.outputs.patch_tokens || opts.linear.is_some_and(|h| h.config.avgpool_patchtokens);
    let mut normed = None;
    if all_tokens {
        let y = layer_norm(g, w, x, "norm", eps, "norm")?;
        let tokens3 = g.ints(&[-1, t as i64, cfg.embed_dim as i64], false);
        let y = g.node("Reshape", "norm/tokens", &[&y, &tokens3], vec![]);
        g.node("Gather", &emb_name, &[&y, &zero], vec![attr_int("axis", 1)]);
        if opts.outputs.patch_tokens {
            let name = internal_name(g, OUTPUT_PATCH_TOKENS);
            patches(g, &y, t, 1, &name);
        }
        normed = Some(y);
    } else {
        layer_norm(g, w, x, "norm", eps, &emb_name)?;
    }
    if opts.outputs.attention {
        let row = g.node(
            "Gather",
            "attention/cls_row",
            &[attn, &zero],
            vec![attr_int("axis", 2)],
        );
        let name = internal_name(g, OUTPUT_ATTENTION);
        patches(g, &row, t, 2, &name);
    }
    Ok(normed)
}

/// Entries 1..T (the patches, without CLS) of `x` along `axis`.
pub(crate) fn patches(g: &mut Graph, x: &str, t: usize, axis: i64, name: &str) -> String {
    let (start, end, axes) = (
        g.ints(&[1], false),
        g.ints(&[t as i64], false),
        g.ints(&[axis], false),
    );
    g.node("Slice", name, &[x, &start, &end, &axes], vec![])
}

/// Declares the requested outputs, float32 (cast from float16 in an fp16 graph).
fn declare_outputs(g: &mut Graph, cfg: &VitConfig, opts: &GraphOptions, t: usize) {
    let (d, n, batch) = (cfg.embed_dim, t - 1, Dim::Named("batch"));
    let shapes: [(&str, bool, Vec<Dim>); 4] = [
        (OUTPUT_EMBEDDING, true, vec![batch.clone(), Dim::Fixed(d)]),
        (
            OUTPUT_PATCH_TOKENS,
            opts.outputs.patch_tokens,
            vec![batch.clone(), Dim::Fixed(n), Dim::Fixed(d)],
        ),
        (
            OUTPUT_ATTENTION,
            opts.outputs.attention,
            vec![batch.clone(), Dim::Fixed(cfg.num_heads), Dim::Fixed(n)],
        ),
        (
            OUTPUT_LOGITS,
            opts.linear.is_some(),
            vec![
                batch,
                Dim::Fixed(opts.linear.map_or(0, |h| h.config.num_classes())),
            ],
        ),
    ];
    for (name, wanted, dims) in shapes {
        if !wanted {
            continue;
        }
        if g.float == Float::F16 {
            let src = internal_name(g, name);
            g.node(
                "Cast",
                name,
                &[&src],
                vec![attr_int("to", data_type::FLOAT as i64)],
            );
        }
        g.output(name, data_type::FLOAT, &dims);
    }
}

/// The name a graph output has before the final fp16 -> fp32 cast (itself in fp32).
fn internal_name(g: &Graph, output: &str) -> String {
    match g.float {
        Float::F32 => output.to_string(),
        Float::F16 => format!("{output}_fp16"),
    }
}

/// One pre-norm block; returns the new tokens and the attention probabilities
/// `[batch, heads, T, T]`. With `cls_only` (the last block when no patch tokens are
/// wanted) only the CLS query is computed: the result is `[batch, D]` and the
/// probabilities are `[batch, heads, 1, T]`, the same values for a twelfth less work.
fn block(
    g: &mut Graph,
    cfg: &VitConfig,
    w: &Weights,
    i: usize,
    x: &str,
    t: usize,
    cls_only: bool,
) -> Result<(String, String), ExportError> {
    let d = cfg.embed_dim;
    let eps = cfg.layer_norm_eps as f32;
    let key = |s: &str| format!("blocks.{i}.{s}");
    let name = |s: &str| format!("blocks.{i}/{s}");

    let h = layer_norm(g, w, x, &key("norm1"), eps, &name("norm1"))?;
    let [q, k, v, residual] = query_key_value(g, cfg, w, i, (&h, x), t, cls_only)?;
    let kt = g.node(
        "Transpose",
        &name("attn/k_t"),
        &[&k],
        vec![attr_ints("perm", &[0, 1, 3, 2])],
    );
    let scores = g.node("MatMul", &name("attn/scores"), &[&q, &kt], vec![]);
    let attn = g.node(
        "Softmax",
        &name("attn/softmax"),
        &[&scores],
        vec![attr_int("axis", -1)],
    );
    let mut ctx = g.node("MatMul", &name("attn/context"), &[&attn, &v], vec![]);
    if !cls_only {
        let perm = vec![attr_ints("perm", &[0, 2, 1, 3])];
        ctx = g.node("Transpose", &name("attn/tokens_first"), &[&ctx], perm);
    }
    let s = g.ints(&[-1, d as i64], false);
    let ctx = g.node("Reshape", &name("attn/merge_heads"), &[&ctx, &s], vec![]);
    let o = linear(g, w, &ctx, &key("attn.proj"), &name("attn/proj"), [d, d])?;
    let x = g.node("Add", &name("residual1"), &[&residual, &o], vec![]);

    let h = layer_norm(g, w, &x, &key("norm2"), eps, &name("norm2"))?;
    let hidden = cfg.mlp_hidden();
    let h = linear(g, w, &h, &key("mlp.fc1"), &name("mlp/fc1"), [hidden, d])?;
    let h = gelu(g, &h, &name("mlp/gelu"));
    let h = linear(g, w, &h, &key("mlp.fc2"), &name("mlp/fc2"), [d, hidden])?;
    let x = g.node("Add", &name("residual2"), &[&x, &h], vec![]);
    Ok((x, attn))
}

/// Block `i`'s queries, keys and values `[batch, heads, T, head_dim]` from the normed
/// tokens `h`, and the residual stream `x` the attention output is added to. With
/// `cls_only` the queries and the residual are the CLS row's alone.
fn query_key_value(
    g: &mut Graph,
    cfg: &VitConfig,
    w: &Weights,
    i: usize,
    (h, x): (&str, &str),
    t: usize,
    cls_only: bool,
) -> Result<[String; 4], ExportError> {
    let (d, heads, hd) = (cfg.embed_dim, cfg.num_heads, cfg.head_dim());
    let key = |s: &str| format!("blocks.{i}.{s}");
    let name = |s: &str| format!("blocks.{i}/{s}");
    // qkv with the 1/sqrt(head_dim) scale folded into the query rows.
    let scale = (hd as f64).powf(-0.5) as f32;
    let mut wqkv = w.get(&key("attn.qkv.weight"))?;
    wqkv[..d * d].iter_mut().for_each(|v| *v *= scale);
    let mut bqkv = if cfg.qkv_bias {
        w.get(&key("attn.qkv.bias"))?
    } else {
        vec![0.0; 3 * d]
    };
    bqkv[..d].iter_mut().for_each(|v| *v *= scale);
    let (wq, bq) = (
        key("attn.qkv.weight.q_scaled"),
        key("attn.qkv.bias.q_scaled"),
    );
    if !cls_only {
        let qkv = qkv_part(&wq, &wqkv, &bq, &bqkv, d);
        let qkv = dense(g, &name("attn/qkv"), h, &qkv);
        let [q, k, v] = split_heads(g, cfg, &qkv, t, &name("attn"));
        return Ok([q, k, v, x.to_string()]);
    }
    let (wk, bk) = (key("attn.qkv.weight.kv"), key("attn.qkv.bias.kv"));
    let kv = qkv_part(&wk, &wqkv[d * d..], &bk, &bqkv[d..], d);
    let kv = dense(g, &name("attn/kv"), h, &kv);
    let [k, v] = split_heads(g, cfg, &kv, t, &name("attn"));
    let hc = cls_row(g, h, t, d, &name("attn/cls_in"));
    let q = qkv_part(&wq, &wqkv[..d * d], &bq, &bqkv[..d], d);
    let q = dense(g, &name("attn/q_cls"), &hc, &q);
    let s = g.ints(&[-1, heads as i64, 1, hd as i64], false);
    let q = g.node("Reshape", &name("attn/q_heads"), &[&q, &s], vec![]);
    Ok([q, k, v, cls_row(g, x, t, d, &name("cls"))])
}

/// `[batch * T, N * D]` projections to `N` tensors `[batch, heads, T, head_dim]`.
fn split_heads<const N: usize>(
    g: &mut Graph,
    cfg: &VitConfig,
    x: &str,
    t: usize,
    prefix: &str,
) -> [String; N] {
    let n = N;
    let (heads, hd) = (cfg.num_heads as i64, cfg.head_dim() as i64);
    let s = g.ints(&[-1, t as i64, n as i64 * heads, hd], false);
    let x = g.node(
        "Reshape",
        &format!("{prefix}/split_heads"),
        &[x, &s],
        vec![],
    );
    let perm = vec![attr_ints("perm", &[0, 2, 1, 3])];
    let x = g.node("Transpose", &format!("{prefix}/heads_first"), &[&x], perm);
    let sizes = g.ints(&vec![heads; n], false);
    // q, k, v; or k, v when the query is computed apart.
    let names: [String; N] =
        std::array::from_fn(|j| format!("{prefix}/{}", ["q", "k", "v"][3 - N + j]));
    let attrs = vec![attr_int("axis", 1)];
    g.node_n(
        "Split",
        &format!("{prefix}/split"),
        &[&x, &sizes],
        attrs,
        &names,
    );
    names
}

/// Row 0 (the CLS token) of each image of `[batch * T, D]` tokens, as `[batch, D]`.
pub(crate) fn cls_row(g: &mut Graph, x: &str, t: usize, d: usize, name: &str) -> String {
    let s = g.ints(&[-1, t as i64, d as i64], false);
    let x3 = g.node("Reshape", &format!("{name}/tokens"), &[x, &s], vec![]);
    let zero = g.ints(&[0], true);
    g.node("Gather", name, &[&x3, &zero], vec![attr_int("axis", 1)])
}

pub(crate) fn gemm(g: &mut Graph, name: &str, x: &str, w: &str, b: &str) -> String {
    g.node("Gemm", name, &[x, w, b], vec![attr_int("transB", 1)])
}

/// `nn.Linear` with weights `{key}.weight` `[out, in]` and `{key}.bias`.
fn linear(
    g: &mut Graph,
    w: &Weights,
    x: &str,
    key: &str,
    name: &str,
    [out, inp]: [usize; 2],
) -> Result<String, ExportError> {
    let wk = format!("{key}.weight");
    let bk = format!("{key}.bias");
    let (weight, bias) = (w.get(&wk)?, w.get(&bk)?);
    let d = Dense {
        weight_key: &wk,
        weight: &weight,
        bias_key: &bk,
        bias: &bias,
        shape: [out, inp],
    };
    Ok(dense(g, name, x, &d))
}

/// LayerNorm over the last axis: the opset-17 op, or its decomposition below 17.
pub(crate) fn layer_norm(
    g: &mut Graph,
    w: &Weights,
    x: &str,
    key: &str,
    eps: f32,
    out: &str,
) -> Result<String, ExportError> {
    let gk = format!("{key}.weight");
    let bk = format!("{key}.bias");
    let gamma = w.get(&gk)?;
    let gamma = g.weight(&gk, &[gamma.len()], &gamma);
    let beta = w.get(&bk)?;
    let beta = g.weight(&bk, &[beta.len()], &beta);
    if g.opset >= 17 {
        let attrs = vec![attr_int("axis", -1), attr_float("epsilon", eps)];
        return Ok(g.node("LayerNormalization", out, &[x, &gamma, &beta], attrs));
    }
    let mean_attrs = || vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)];
    let mean = g.node("ReduceMean", &format!("{out}/mean"), &[x], mean_attrs());
    let dx = g.node("Sub", &format!("{out}/centered"), &[x, &mean], vec![]);
    let two = g.scalar(2.0);
    let sq = g.node("Pow", &format!("{out}/squared"), &[&dx, &two], vec![]);
    let var = g.node("ReduceMean", &format!("{out}/var"), &[&sq], mean_attrs());
    let eps = g.scalar(eps);
    let var = g.node("Add", &format!("{out}/var_eps"), &[&var, &eps], vec![]);
    let sd = g.node("Sqrt", &format!("{out}/std"), &[&var], vec![]);
    let y = g.node("Div", &format!("{out}/normed"), &[&dx, &sd], vec![]);
    let y = g.node("Mul", &format!("{out}/scaled"), &[&y, &gamma], vec![]);
    Ok(g.node("Add", out, &[&y, &beta], vec![]))
}

/// Exact (erf) GELU: the opset-20 op, or `x * 0.5 * (1 + erf(x / sqrt 2))` below 20, in
/// the node order ONNX Runtime fuses back into one kernel.
fn gelu(g: &mut Graph, x: &str, out: &str) -> String {
    if g.opset >= 20 {
        return g.node("Gelu", out, &[x], vec![]);
    }
    let sqrt2 = g.scalar(std::f32::consts::SQRT_2);
    let one = g.scalar(1.0);
    let half = g.scalar(0.5);
    let y = g.node("Div", &format!("{out}/div"), &[x, &sqrt2], vec![]);
    let y = g.node("Erf", &format!("{out}/erf"), &[&y], vec![]);
    let y = g.node("Add", &format!("{out}/add"), &[&y, &one], vec![]);
    let y = g.node("Mul", &format!("{out}/mul"), &[x, &y], vec![]);
    g.node("Mul", out, &[&y, &half], vec![])
}
