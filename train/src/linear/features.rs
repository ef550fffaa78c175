//! The probe's input: frozen-backbone features built as the official `eval_linear.py`
//! builds them, from a batch tensor, from a folder (eval transform) or from augmented
//! training crops (`RandomResizedCrop` + flip).

use std::path::PathBuf;

use dino_core::EvalTransform;
use dino_core::VitConfig;
use dino_core::image_io::{ImageFolder, load_rgb};
use dino_core::preprocess::{eval_transform_into, image_len, validate};
use dino_models::VisionTransformer;
use fast_image_resize::FilterType;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::data::augment::{flip_rows, resized_crop_filter, sample_crop};
use crate::data::color::Normalizer;
use crate::data::{DataError, SampleRng};
use crate::error::{Result, TrainError};

/// `RandomResizedCrop`'s default area range.
const CROP_SCALE: (f64, f64) = (0.08, 1.0);

/// Which backbone outputs form the feature vector (the layout is documented in
/// `dino_core::linear`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureRecipe {
    pub n_last_blocks: usize,
    pub avgpool_patchtokens: bool,
}

impl FeatureRecipe {
    /// The official README's settings: ViT-B uses the last block with the pooled patch
    /// tokens, the smaller models the CLS tokens of the last 4 blocks (the script's default).
    pub fn official_default(arch: &str) -> Self {
        if arch == "vit_base" {
            Self {
                n_last_blocks: 1,
                avgpool_patchtokens: true,
            }
        } else {
            Self {
                n_last_blocks: 4,
                avgpool_patchtokens: false,
            }
        }
    }

    /// Length of the feature vector for a backbone of width `embed_dim`.
    pub fn feat_dim(&self, embed_dim: usize) -> usize {
        embed_dim * (self.n_last_blocks + usize::from(self.avgpool_patchtokens))
    }

    /// Checks the recipe against the backbone.
    pub fn check(&self, vit: &VitConfig) -> Result<()> {
        let bad = |why: String| Err(TrainError::Invalid(why));
        if !(1..=vit.depth).contains(&self.n_last_blocks) {
            return bad(format!(
                "--n_last_blocks {}: the backbone has {} blocks",
                self.n_last_blocks, vit.depth
            ));
        }
        if self.avgpool_patchtokens && self.n_last_blocks != 1 {
            return bad(format!(
                "--avgpool_patchtokens needs --n_last_blocks 1 (got {}): the official \
                 eval_linear.py interleaves one CLS token with the pooled patch tokens",
                self.n_last_blocks
            ));
        }
        Ok(())
    }
}

/// Features of a preprocessed batch `[b, 3, h, w]` (already on the model's device):
/// `[b, feat_dim]`, computed without gradients.
pub fn linear_features(model: &VisionTransformer, x: &Tensor, recipe: FeatureRecipe) -> Tensor {
    tch::no_grad(|| {
        let inter = model.get_intermediate_layers(x, recipe.n_last_blocks);
        let cls: Vec<Tensor> = inter.iter().map(|t| t.select(1, 0)).collect();
        let cls = Tensor::cat(&cls, -1);
        let Some(last) = inter.last().filter(|_| recipe.avgpool_patchtokens) else {
            return cls.to_kind(Kind::Float);
        };
        let patches = last.size()[1] - 1;
        let mean =
            last.narrow(1, 1, patches)
                .mean_dim(Some([1i64].as_slice()), false, None::<Kind>);
        // As the official cat-then-reshape: channel i's CLS value, then its patch mean.
        let b = cls.size()[0];
        Tensor::stack(&[cls, mean], -1)
            .reshape([b, -1])
            .to_kind(Kind::Float)
    })
}

/// Features of a whole folder, kept on the device.
pub struct FeatureSet {
    /// `[n, feat_dim]` float.
    pub feats: Tensor,
    /// `[n]` int64 class indices.
    pub labels: Tensor,
    pub skipped: usize,
}

impl FeatureSet {
    pub fn len(&self) -> usize {
        self.feats.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A progress bar over `len` images, hidden with `quiet`.
pub fn bar(len: usize, prefix: String, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ({eta}) {msg}")
            .expect("valid template"),
    );
    b.set_prefix(prefix);
    b
}

/// Loads `samples` in parallel through `prepare`; unreadable files are reported on `bar`
/// and left out. Returns the pixels `[n, 3, s, s]` and the labels of the kept ones.
pub fn load_batch<F>(
    samples: &[(usize, &(PathBuf, usize))],
    size: usize,
    bar: &ProgressBar,
    prepare: F,
) -> Result<Option<(Tensor, Tensor)>>
where
    F: Fn(usize, &RgbImage) -> std::result::Result<Vec<f32>, DataError> + Sync,
{
    let done: Vec<Option<(Vec<f32>, i64)>> = samples
        .par_iter()
        .map(|(i, (path, label))| match load_rgb(path) {
            Ok(img) => Ok(Some((prepare(*i, &img)?, *label as i64))),
            Err(e) => {
                crate::metrics::warn_line(bar, &format!("warning: skipping {e}"));
                Ok(None)
            }
        })
        .collect::<std::result::Result<_, DataError>>()?;
    bar.inc(samples.len() as u64);
    let ok: Vec<(Vec<f32>, i64)> = done.into_iter().flatten().collect();
    if ok.is_empty() {
        return Ok(None);
    }
    let s = size as i64;
    let pixels: Vec<f32> = ok.iter().flat_map(|(p, _)| p.iter().copied()).collect();
    let labels: Vec<i64> = ok.iter().map(|(_, l)| *l).collect();
    let x = Tensor::from_slice(&pixels).view([ok.len() as i64, 3, s, s]);
    Ok(Some((x, Tensor::from_slice(&labels))))
}

/// Features of every readable image of `folder` under the eval transform `t`, in sample
/// order, computed `batch` images at a time.
pub fn folder_features(
    model: &VisionTransformer,
    folder: &ImageFolder,
    t: &EvalTransform,
    recipe: FeatureRecipe,
    batch: usize,
    device: Device,
    quiet: bool,
) -> Result<FeatureSet> {
    validate(t)?;
    let samples: Vec<(usize, &(PathBuf, usize))> = folder.samples.iter().enumerate().collect();
    let bar = bar(
        samples.len(),
        format!("features {}", folder.root.display()),
        quiet,
    );
    let (mut feats, mut labels) = (Vec::new(), Vec::new());
    for chunk in samples.chunks(batch.max(1)) {
        let loaded = load_batch(chunk, t.crop_size, &bar, |_, img| {
            let mut buf = vec![0f32; image_len(t)];
            eval_transform_into(img, t, &mut buf);
            Ok(buf)
        })?;
        if let Some((x, y)) = loaded {
            feats.push(linear_features(model, &x.to_device(device), recipe));
            labels.push(y.to_device(device));
        }
    }
    bar.finish_and_clear();
    let n: usize = labels.iter().map(|l| l.size()[0] as usize).sum();
    if n == 0 {
        return Err(TrainError::run(&folder.root, "no readable image"));
    }
    Ok(FeatureSet {
        feats: Tensor::cat(&feats, 0),
        labels: Tensor::cat(&labels, 0),
        skipped: folder.samples.len() - n,
    })
}

/// `RandomResizedCrop(size)` (default scale and ratio, bilinear as torchvision's default)
/// + `RandomHorizontalFlip()` + `Normalize`, drawn from the stream of (seed, epoch, index).
pub struct TrainAugment {
    pub size: usize,
    pub seed: u64,
    norm: Normalizer,
}

impl TrainAugment {
    pub fn new(size: usize, mean: [f32; 3], std: [f32; 3], seed: u64) -> Self {
        Self {
            size,
            seed,
            norm: Normalizer::new(mean, std),
        }
    }

    /// One crop as `[3, size, size]` normalised floats.
    pub fn render(
        &self,
        img: &RgbImage,
        epoch: usize,
        index: usize,
    ) -> std::result::Result<Vec<f32>, DataError> {
        let mut rng = SampleRng::for_sample(self.seed, epoch as u64, index as u64);
        let b = sample_crop(&mut rng, img.width(), img.height(), CROP_SCALE);
        let flip = rng.unit() < 0.5;
        let mut px = Vec::new();
        resized_crop_filter(img, b, self.size, FilterType::Bilinear, &mut px)?;
        if flip {
            flip_rows(&mut px, self.size);
        }
        let mut out = vec![0f32; px.len()];
        self.norm.to_chw(&px, &mut out);
        Ok(out)
    }
}
