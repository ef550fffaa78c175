//! k-NN evaluation of the teacher (the official `eval_knn.py` protocol): L2-normalised
//! CLS features of a labelled train and val ImageFolder, weighted k-NN vote of dino-core.

use std::path::{Path, PathBuf};

use dino_core::EvalTransform;
use dino_core::image_io::{ImageFolder, load_rgb};
use dino_core::image_set::ImageSet;
use dino_core::knn::l2_normalize_rows;
use dino_core::preprocess::{eval_transform_into, image_len, validate};
use dino_models::VisionTransformer;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::dist::Dist;
use crate::error::{Result, TrainError};
use crate::knn_features::KnnFeatures;
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

/// The L2-normalised features of a folder: `[n, d]` rows, their labels, the class count
/// and the files skipped as unreadable.
pub type Features = (Vec<f32>, Vec<usize>, usize, usize);

/// Features of every readable image of `root`, in the folder's sample order.
pub fn extract(
    model: &VisionTransformer,
    root: &Path,
    t: &EvalTransform,
    device: Device,
    quiet: bool,
) -> Result<Features> {
    extract_shared(model, root, t, device, quiet, None)
}

/// [`extract`] shared by the ranks of a multi-process run: each rank computes every
/// `world`-th image, and the rows are gathered back into the folder's sample order, so
/// every rank holds what one process would have computed.
pub fn extract_shared(
    model: &VisionTransformer,
    root: &Path,
    t: &EvalTransform,
    device: Device,
    quiet: bool,
    dist: Option<&Dist>,
) -> Result<Features> {
    validate(t)?;
    let folder = ImageFolder::scan(root)?;
    let (rank, world) = dist.map_or((0, 1), |d| (d.rank(), d.world_size()));
    let mine: Vec<(usize, &(PathBuf, usize))> = folder
        .samples
        .iter()
        .enumerate()
        .skip(rank)
        .step_by(world)
        .collect();
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(mine.len() as u64).with_style(
            ProgressStyle::with_template("features {prefix} [{bar:30}] {pos}/{len} ({eta})")
                .expect("valid template"),
        )
    };
    bar.set_prefix(root.display().to_string());
    let mut rows = Rows::default();
    for chunk in mine.chunks(EVAL_BATCH) {
        rows.extend(embed_chunk(model, chunk, t, device, &bar)?);
    }
    bar.finish_and_clear();
    let dim = model.cfg.embed_dim;
    if let Some(d) = dist {
        rows = rows.gather(d, dim)?;
    }
    if rows.labels.is_empty() {
        return Err(TrainError::run(root, "no readable image"));
    }
    let mut feats = rows.feats;
    l2_normalize_rows(&mut feats, dim);
    Ok((feats, rows.labels, folder.classes.len(), rows.skipped))
}

/// Features with their sample indices, labels and the count of skipped files.
#[derive(Default)]
struct Rows {
    index: Vec<usize>,
    feats: Vec<f32>,
    labels: Vec<usize>,
    skipped: usize,
}

impl Rows {
    fn extend(&mut self, other: Rows) {
        self.index.extend(other.index);
        self.feats.extend(other.feats);
        self.labels.extend(other.labels);
        self.skipped += other.skipped;
    }

    /// Every rank's rows, in sample order (equal-sized, padded all-gathers).
    fn gather(self, d: &Dist, dim: usize) -> Result<Self> {
        let n = self.labels.len();
        let counts = d.all_gather(&Tensor::from_slice(&[n as i64, self.skipped as i64]))?;
        let counts: Vec<Vec<i64>> = counts
            .iter()
            .map(Vec::<i64>::try_from)
            .collect::<std::result::Result<_, _>>()?;
        let max = counts.iter().map(|c| c[0]).max().unwrap_or(0) as usize;
        let mut feats = self.feats;
        feats.resize(max * dim, 0.0);
        let pad = |v: &[usize]| -> Vec<i64> {
            let mut out: Vec<i64> = v.iter().map(|&x| x as i64).collect();
            out.resize(max, -1);
            out
        };
        let all_feats = d.all_gather(&Tensor::from_slice(&feats))?;
        let all_index = d.all_gather(&Tensor::from_slice(&pad(&self.index)))?;
        let all_labels = d.all_gather(&Tensor::from_slice(&pad(&self.labels)))?;
        let mut rows: Vec<(usize, Vec<f32>, usize)> = Vec::new();
        for (r, c) in counts.iter().enumerate() {
            let (f, i, l) = (
                Vec::<f32>::try_from(&all_feats[r])?,
                Vec::<i64>::try_from(&all_index[r])?,
                Vec::<i64>::try_from(&all_labels[r])?,
            );
            for k in 0..c[0] as usize {
                rows.push((
                    i[k] as usize,
                    f[k * dim..(k + 1) * dim].to_vec(),
                    l[k] as usize,
                ));
            }
        }
        rows.sort_by_key(|r| r.0);
        Ok(Self {
            index: rows.iter().map(|r| r.0).collect(),
            feats: rows.iter().flat_map(|r| r.1.iter().copied()).collect(),
            labels: rows.iter().map(|r| r.2).collect(),
            skipped: counts.iter().map(|c| c[1] as usize).sum(),
        })
    }
}

/// Decodes, preprocesses (in parallel) and embeds one chunk; unreadable files are
/// reported and skipped.
fn embed_chunk(
    model: &VisionTransformer,
    chunk: &[(usize, &(PathBuf, usize))],
    t: &EvalTransform,
    device: Device,
    bar: &ProgressBar,
) -> Result<Rows> {
    let (s, len) = (t.crop_size as i64, image_len(t));
    let done: Vec<Option<(usize, Vec<f32>, usize)>> = chunk
        .par_iter()
        .map(|(i, (path, label))| match load_rgb(path) {
            Ok(img) => {
                let mut buf = vec![0f32; len];
                eval_transform_into(&img, t, &mut buf);
                Some((*i, buf, *label))
            }
            Err(e) => {
                crate::metrics::warn_line(bar, &format!("warning: skipping {e}"));
                None
            }
        })
        .collect();
    bar.inc(chunk.len() as u64);
    let skipped = done.iter().filter(|d| d.is_none()).count();
    let ok: Vec<(usize, Vec<f32>, usize)> = done.into_iter().flatten().collect();
    if ok.is_empty() {
        return Ok(Rows {
            skipped,
            ..Rows::default()
        });
    }
    let pixels: Vec<f32> = ok.iter().flat_map(|(_, b, _)| b.iter().copied()).collect();
    let x = Tensor::from_slice(&pixels)
        .view([ok.len() as i64, 3, s, s])
        .to_device(device);
    let f = tch::no_grad(|| model.forward(&x))
        .to_kind(Kind::Float)
        .to_device(Device::Cpu);
    Ok(Rows {
        index: ok.iter().map(|(i, _, _)| *i).collect(),
        feats: Vec::<f32>::try_from(f.flatten(0, -1))?,
        labels: ok.iter().map(|(_, _, l)| *l).collect(),
        skipped,
    })
}

/// The L2-normalised features of a labelled `train` (gallery) and `val` (query)
/// ImageFolder, whose class names must be the same; with `dist`, the ranks share the
/// extraction and all get the features.
pub fn extract_pair(
    model: &VisionTransformer,
    train: &Path,
    val: &Path,
    t: &EvalTransform,
    device: Device,
    quiet: bool,
    dist: Option<&Dist>,
) -> Result<KnnFeatures> {
    let classes = ImageFolder::scan(train)?.classes;
    let val_classes = ImageFolder::scan(val)?.classes;
    if classes != val_classes {
        return Err(TrainError::run(
            val,
            format!(
                "classes {val_classes:?} differ from those of {} ({classes:?})",
                train.display()
            ),
        ));
    }
    let (tf, tl, _, s1) = extract_shared(model, train, t, device, quiet, dist)?;
    let (vf, vl, _, s2) = extract_shared(model, val, t, device, quiet, dist)?;
    Ok(KnnFeatures {
        dim: model.cfg.embed_dim,
        classes,
        train: tf,
        train_labels: tl,
        test: vf,
        test_labels: vl,
        skipped: s1 + s2,
        eval: Some(t.clone()),
    })
}

/// Weighted k-NN top-1/top-5 (percent) of `val` against `train`; with `dist`, the ranks
/// share the feature extraction and all get the result.
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
    dist: Option<&Dist>,
) -> Result<KnnResult> {
    let f = extract_pair(model, train, val, t, device, quiet, dist)?;
    let h = f.hits(&[k], temperature)?[0];
    Ok(KnnResult {
        top1: h.top1_percent(),
        top5: h.top5_percent(),
        train_images: f.train_labels.len(),
        val_images: f.test_labels.len(),
        skipped: f.skipped,
    })
}

/// Why the k-NN evaluation of a training job cannot run: `knn_train` or `knn_val` is a
/// folder without class folders. `None` when both are labelled, or k-NN is off.
pub fn unlabelled_note(cfg: &TrainConfig) -> Result<Option<String>> {
    let k = &cfg.knn;
    if k.knn_freq == 0 {
        return Ok(None);
    }
    for (key, path) in [("knn_train", &k.knn_train), ("knn_val", &k.knn_val)] {
        let Some(path) = path else { continue };
        let set = ImageSet::scan(path)?;
        if set.classes().is_none() {
            return Ok(Some(format!(
                "k-NN evaluation skipped: {key} {} is {}; k-NN needs labelled ImageFolders \
                 (<dir>/<class>/<image>)",
                path.display(),
                set.describe()
            )));
        }
    }
    Ok(None)
}

/// The periodic evaluation of a running training job (teacher backbone), on every rank.
pub fn during_training(
    cfg: &TrainConfig,
    teacher: &DinoNet,
    device: Device,
    quiet: bool,
    dist: Option<&Dist>,
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
        dist,
    )
}
