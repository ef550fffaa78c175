//! Where a new run's weights start when not from scratch.
//!
//! - `pretrained_weights`: a backbone (dino-rs `teacher.safetensors` or checkpoint, official
//!   `.pth`) into the student; the teacher starts as its copy, as in a fresh run; the head
//!   is fresh.
//! - `init_from`: a whole training state (official `checkpoint.pth` or dino-rs
//!   `checkpoint.safetensors`): student and teacher with their heads, and the loss centre.
//!
//! The architecture must be the configuration's; only the image size may differ, and then
//! the position embedding is resized as the official `interpolate_pos_encoding` does. The
//! files are read at the start of a new run only: `--resume` continues from the run's own
//! checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dino_core::pos_embed::interpolate_pos_embed;
use dino_core::st::RawTensor;
use dino_core::weights::{backbone_shapes, head_shapes};
use dino_core::{HeadConfig, VitConfig};
use dino_import::head::{infer_head, split_head};
use dino_import::{DEFAULT_CHECKPOINT_KEY, infer_vit, read_pretrained_with, read_training_state};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};

/// Weights to start from, keyed as the networks' variables (`backbone.*`, `head.*`), at
/// the configuration's architecture and image size.
pub struct StartWeights {
    pub path: PathBuf,
    /// The student's tensors: the backbone, and the head with `init_from`.
    pub student: BTreeMap<String, RawTensor>,
    /// The teacher's (`None`: the teacher copies the student).
    pub teacher: Option<BTreeMap<String, RawTensor>>,
    /// The loss centre `[1, out_dim]`.
    pub center: Option<RawTensor>,
    /// `(key, shape)` of every tensor of `student` (and `teacher`), for the checked load.
    pub expected: Vec<(String, Vec<usize>)>,
}

/// Reads the weights `cfg` starts from, if it names any.
pub fn start_weights(cfg: &TrainConfig) -> Result<Option<StartWeights>> {
    match (&cfg.init.pretrained_weights, &cfg.init.init_from) {
        (Some(path), _) => pretrained_backbone(cfg, path).map(Some),
        (None, Some(path)) => training_state(cfg, path).map(Some),
        (None, None) => Ok(None),
    }
}

fn pretrained_backbone(cfg: &TrainConfig, path: &Path) -> Result<StartWeights> {
    // The official default key falls back to the whole file (a backbone state dict), as
    // `load_pretrained_weights` does; any other key must be there.
    let key = Some(cfg.init.checkpoint_key.as_str()).filter(|k| *k != DEFAULT_CHECKPOINT_KEY);
    let want = cfg.vit()?;
    let p = read_pretrained_with(path, key, Some(want.num_heads))?;
    ensure_same_vit(path, &p.vit, &want)?;
    let backbone = resize_pos_embed(path, p.tensors, &p.vit, &want)?;
    Ok(StartWeights {
        path: path.to_path_buf(),
        student: prefixed("backbone.", backbone),
        teacher: None,
        center: None,
        expected: prefixed_shapes("backbone.", backbone_shapes(&want)),
    })
}

fn training_state(cfg: &TrainConfig, path: &Path) -> Result<StartWeights> {
    let s = read_training_state(path)?;
    let want = cfg.vit()?;
    let want_head = cfg.head();
    let vit = match s.vit {
        Some(v) => v,
        None => infer_vit(path, &under("backbone.", &s.student), Some(want.num_heads))?,
    };
    ensure_same_vit(path, &vit, &want)?;
    let file_head = match s.head {
        Some(h) => h,
        None => infer_head(path, &under("head.", &s.student))?,
    };
    ensure_same_head(path, &file_head, &want_head)?;
    let net = |tensors: BTreeMap<String, RawTensor>| -> Result<BTreeMap<String, RawTensor>> {
        let (head, backbone) = split_head(tensors);
        let backbone = resize_pos_embed(path, under("backbone.", &backbone), &vit, &want)?;
        let mut out = prefixed("backbone.", backbone);
        out.extend(prefixed("head.", head));
        out.retain(|k, _| !k.ends_with("num_batches_tracked"));
        Ok(out)
    };
    let mut expected = prefixed_shapes("backbone.", backbone_shapes(&want));
    expected.extend(prefixed_shapes("head.", head_shapes(&want_head)));
    // BatchNorm's `num_batches_tracked` is in official files, not in the networks here.
    expected.retain(|(k, _)| !k.ends_with("num_batches_tracked"));
    Ok(StartWeights {
        path: path.to_path_buf(),
        student: net(s.student)?,
        teacher: Some(net(s.teacher)?),
        center: Some(s.center),
        expected,
    })
}

/// The file's backbone must be the configuration's (the image size aside).
fn ensure_same_vit(path: &Path, file: &VitConfig, want: &VitConfig) -> Result<()> {
    let describe = |v: &VitConfig| {
        format!(
            "{}/{} (embed_dim {}, depth {}, num_heads {}, mlp_ratio {}, qkv_bias {})",
            v.arch, v.patch_size, v.embed_dim, v.depth, v.num_heads, v.mlp_ratio, v.qkv_bias
        )
    };
    let same = file.patch_size == want.patch_size
        && file.embed_dim == want.embed_dim
        && file.depth == want.depth
        && file.num_heads == want.num_heads
        && file.in_chans == want.in_chans
        && file.mlp_hidden() == want.mlp_hidden()
        && file.qkv_bias == want.qkv_bias;
    if same {
        return Ok(());
    }
    Err(TrainError::run(
        path,
        format!(
            "the weights are {}, the configuration trains {}: set --arch/--patch_size (and embed_dim, depth, num_heads) to the weights'",
            describe(file),
            describe(want)
        ),
    ))
}

/// The file's head must be the configuration's. A head whose `weight_g` is still all ones
/// may be continued with `norm_last_layer` either way.
fn ensure_same_head(path: &Path, file: &HeadConfig, want: &HeadConfig) -> Result<()> {
    let norm_ok = file.norm_last_layer == want.norm_last_layer || file.norm_last_layer;
    let same = HeadConfig {
        norm_last_layer: want.norm_last_layer,
        ..file.clone()
    } == *want;
    if same && norm_ok {
        return Ok(());
    }
    let describe = |h: &HeadConfig| {
        format!(
            "out_dim {}, use_bn_in_head {}, norm_last_layer {}, {} layers, head_hidden_dim {}, head_bottleneck_dim {}, in_dim {}",
            h.out_dim,
            h.use_bn,
            h.norm_last_layer,
            h.nlayers,
            h.hidden_dim,
            h.bottleneck_dim,
            h.in_dim
        )
    };
    Err(TrainError::run(
        path,
        format!(
            "the DINO head is {}, the configuration has {}",
            describe(file),
            describe(want)
        ),
    ))
}

/// The backbone with its position embedding at `want`'s image size (the official
/// `interpolate_pos_encoding` of a `want.img_size` square input).
fn resize_pos_embed(
    path: &Path,
    mut backbone: BTreeMap<String, RawTensor>,
    file: &VitConfig,
    want: &VitConfig,
) -> Result<BTreeMap<String, RawTensor>> {
    if file.img_size == want.img_size {
        return Ok(backbone);
    }
    let Some(pe) = backbone.get("pos_embed") else {
        return Ok(backbone); // reported as missing by the checked load
    };
    let values = pe.to_f32(path, "pos_embed")?;
    let (d, p, img) = (want.embed_dim, want.patch_size, want.img_size);
    let resized = interpolate_pos_embed(&values, d, p, (img, img));
    let shape = vec![1, resized.len() / d, d];
    backbone.insert("pos_embed".into(), RawTensor::from_f32(shape, &resized));
    Ok(backbone)
}

fn prefixed(prefix: &str, t: BTreeMap<String, RawTensor>) -> BTreeMap<String, RawTensor> {
    t.into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
}

/// The entries of `t` under `prefix`, without it.
fn under(prefix: &str, t: &BTreeMap<String, RawTensor>) -> BTreeMap<String, RawTensor> {
    t.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
        .collect()
}

fn prefixed_shapes(prefix: &str, v: Vec<(String, Vec<usize>)>) -> Vec<(String, Vec<usize>)> {
    v.into_iter()
        .map(|(k, s)| (format!("{prefix}{k}"), s))
        .collect()
}
