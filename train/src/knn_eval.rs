//! k-NN evaluation of the teacher (the official `eval_knn.py` protocol): L2-normalised
//! CLS features of a labelled train and val ImageFolder, weighted k-NN vote of dino-core.

use std::path::Path;

use dino_core::EvalTransform;
use dino_core::image_io::{ImageFolder, load_rgb};
use dino_core::knn::{knn_accuracy, l2_normalize_rows};
use dino_core::preprocess::{eval_transform_into, image_len, validate};
use dino_models::VisionTransformer;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::model::DinoNet;

/// Images per forward pass: bounds memory for any dataset size.
pub const EVAL_BATCH: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnnResult {
    pub top1: f64,
    pub top5: f64,
    pub train_images: usize,
    pub val_images: usize,
    pub skipped: usize,
}

/// Features of every readable image of `root`: `(rows [n, d] L2-normalised, labels,
/// class count, files skipped)`.
pub fn extract(
    model: &VisionTransformer,
    root: &Path,
    t: &EvalTransform,
    device: Device,
    quiet: bool,
) -> Result<(Vec<f32>, Vec<usize>, usize, usize)> {
    validate(t)?;
    let folder = ImageFolder::scan(root)?;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(folder.samples.len() as u64).with_style(
            ProgressStyle::with_template("features {prefix} [{bar:30}] {pos}/{len} ({eta})")
                .expect("valid template"),
        )
    };
    bar.set_prefix(root.display().to_string());
    let (s, len) = (t.crop_size as i64, image_len(t));
    let (mut feats, mut labels, mut skipped) = (Vec::new(), Vec::new(), 0);
    for chunk in folder.samples.chunks(EVAL_BATCH) {
        // Decode and preprocess in parallel; unreadable files are reported and skipped.
        let done: Vec<Option<(Vec<f32>, usize)>> = chunk
            .par_iter()
            .map(|(path, label)| match load_rgb(path) {
                Ok(img) => {
                    let mut buf = vec![0f32; len];
                    eval_transform_into(&img, t, &mut buf);
                    Some((buf, *label))
                }
                Err(e) => {
                    crate::metrics::warn_line(&bar, &format!("warning: skipping {e}"));
                    None
                }
            })
            .collect();
        skipped += done.iter().filter(|d| d.is_none()).count();
        let ok: Vec<(Vec<f32>, usize)> = done.into_iter().flatten().collect();
        bar.inc(chunk.len() as u64);
        if ok.is_empty() {
            continue;
        }
        let pixels: Vec<f32> = ok.iter().flat_map(|(b, _)| b.iter().copied()).collect();
        let x = Tensor::from_slice(&pixels)
            .view([ok.len() as i64, 3, s, s])
            .to_device(device);
        let f = tch::no_grad(|| model.forward(&x))
            .to_kind(Kind::Float)
            .to_device(Device::Cpu);
        feats.extend(Vec::<f32>::try_from(f.flatten(0, -1))?);
        labels.extend(ok.iter().map(|(_, l)| *l));
    }
    bar.finish_and_clear();
    if labels.is_empty() {
        return Err(TrainError::run(root, "no readable image"));
    }
    let dim = model.cfg.embed_dim;
    l2_normalize_rows(&mut feats, dim);
    Ok((feats, labels, folder.classes.len(), skipped))
}

/// Weighted k-NN top-1/top-5 (percent) of `val` against `train`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &VisionTransformer,
    train: &Path,
    val: &Path,
    t: &EvalTransform,
    k: usize,
    temperature: f64,
    device: Device,
    quiet: bool,
) -> Result<KnnResult> {
    let (tf, tl, classes, s1) = extract(model, train, t, device, quiet)?;
    let (vf, vl, vclasses, s2) = extract(model, val, t, device, quiet)?;
    if classes != vclasses {
        return Err(TrainError::run(
            val,
            format!("{vclasses} classes, but {} has {classes}", train.display()),
        ));
    }
    let dim = model.cfg.embed_dim;
    let (top1, top5) = knn_accuracy(&tf, &tl, dim, classes, &vf, &vl, k, temperature as f32)?;
    Ok(KnnResult {
        top1,
        top5,
        train_images: tl.len(),
        val_images: vl.len(),
        skipped: s1 + s2,
    })
}

/// The periodic evaluation of a running training job (teacher backbone).
pub fn during_training(
    cfg: &TrainConfig,
    teacher: &DinoNet,
    device: Device,
    quiet: bool,
) -> Result<KnnResult> {
    let k = &cfg.knn;
    let unset = |key: &str| TrainError::Invalid(format!("{key} is not set"));
    let (train, val) = (
        k.knn_train.as_deref().ok_or_else(|| unset("knn_train"))?,
        k.knn_val.as_deref().ok_or_else(|| unset("knn_val"))?,
    );
    evaluate(
        &teacher.backbone,
        train,
        val,
        &cfg.eval_transform(),
        k.knn_k,
        k.knn_temperature,
        device,
        quiet,
    )
}
