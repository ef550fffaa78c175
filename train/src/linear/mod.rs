//! Linear evaluation of a frozen backbone, as the official `eval_linear.py` (Caron et al.,
//! 2021): a linear classifier trained on the CLS tokens of the last blocks (optionally with
//! the pooled patch tokens) of a pretrained ViT, top-1/top-5 on a labelled val folder.
//!
//! The probe is written as `linear.safetensors` (`dino_core::linear`), which
//! `dino-export --linear-head` and the runtime read; its `backbone_fingerprint` ties it to
//! the backbone it was trained on.

mod features;
mod probe;
mod train;

use std::path::{Path, PathBuf};

use dino_core::EvalTransform;
use dino_core::onnx_meta::backbone_fingerprint;
use dino_models::ModelError;
use dino_models::io::{LoadedBackbone, load_pretrained};
use tch::Device;

use crate::error::{Result, TrainError};

pub use features::{FeatureRecipe, FeatureSet, TrainAugment, folder_features, linear_features};
pub use probe::{Accuracy, LinearProbe, MOMENTUM, accuracy, cosine_lr, scaled_lr};
pub use train::{LinearSummary, evaluate_saved, train_probe};

/// Official defaults of `eval_linear.py`.
pub const DEFAULT_EPOCHS: usize = 100;
pub const DEFAULT_LR: f64 = 0.001;
pub const DEFAULT_BATCH_SIZE: usize = 128;
pub const DEFAULT_VAL_FREQ: usize = 1;
/// The probe written into `--output_dir` (the best evaluated epoch's weights).
pub const PROBE_FILE: &str = "linear.safetensors";
/// One JSON object per epoch (`train_loss`, `train_lr`, and `test_*` when evaluated), as
/// the official `log.txt`.
pub const LOG_FILE: &str = "linear_log.jsonl";

/// Which network of a training checkpoint to evaluate (`--checkpoint_key`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "lower")]
pub enum CheckpointKey {
    #[default]
    Teacher,
    Student,
}

impl CheckpointKey {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Teacher => "teacher",
            Self::Student => "student",
        }
    }
}

/// What the classifier is trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// The official protocol: fresh `RandomResizedCrop` + flip crops every epoch.
    Augmented,
    /// Features of the un-augmented train images, computed once (faster, not official).
    CachedFeatures,
}

/// Everything `dino-train linear` needs, resolved from the command line.
#[derive(Clone, Debug)]
pub struct LinearConfig {
    pub pretrained_weights: PathBuf,
    pub checkpoint_key: CheckpointKey,
    /// Labelled training images (ImageFolder).
    pub train: PathBuf,
    /// Labelled validation images (ImageFolder).
    pub val: PathBuf,
    pub output_dir: PathBuf,
    /// `None`: the official setting for the architecture ([`FeatureRecipe::official_default`]).
    pub n_last_blocks: Option<usize>,
    pub avgpool_patchtokens: Option<bool>,
    pub epochs: usize,
    /// Learning rate for a batch of 256 (scaled by the linear rule).
    pub lr: f64,
    pub batch_size: usize,
    pub val_freq: usize,
    pub protocol: Protocol,
    /// Seeds the classifier's initialisation, the shuffles and the crops.
    pub seed: u64,
    pub device: Device,
    pub quiet: bool,
}

impl LinearConfig {
    /// The feature recipe for a backbone: the flags given, the architecture's official
    /// setting for the rest.
    pub fn recipe(&self, vit: &dino_core::VitConfig) -> Result<FeatureRecipe> {
        let d = FeatureRecipe::official_default(&vit.arch);
        let r = FeatureRecipe {
            n_last_blocks: self.n_last_blocks.unwrap_or(d.n_last_blocks),
            avgpool_patchtokens: self.avgpool_patchtokens.unwrap_or(d.avgpool_patchtokens),
        };
        r.check(vit)?;
        Ok(r)
    }

    /// Checks the numbers and that the folders exist, before any heavy work.
    pub fn check(&self) -> Result<()> {
        let bad = |why: &str| Err(TrainError::Invalid(why.into()));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("--batch_size_per_gpu must be at least 1");
        }
        if self.val_freq == 0 {
            return bad("--val_freq must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("--lr must be a positive number");
        }
        check_folder(&self.train, "training", "--train")?;
        check_folder(&self.val, "validation", "--val")
    }
}

/// The two ImageFolders of `--data_path` (`train/` and `val/`, as the official script),
/// each replaced by an explicit path when given.
pub fn data_folders(
    data_path: Option<&Path>,
    train: Option<&Path>,
    val: Option<&Path>,
) -> Result<(PathBuf, PathBuf)> {
    let pick = |explicit: Option<&Path>, sub: &str, flag: &str| -> Result<PathBuf> {
        match (explicit, data_path) {
            (Some(p), _) => Ok(p.to_path_buf()),
            (None, Some(d)) => Ok(d.join(sub)),
            (None, None) => Err(TrainError::Invalid(format!(
                "no {sub} images: give --data_path (holding {sub}/) or {flag}"
            ))),
        }
    };
    Ok((pick(train, "train", "--train")?, pick(val, "val", "--val")?))
}

pub(crate) fn check_folder(p: &Path, what: &str, flag: &str) -> Result<()> {
    if p.is_dir() {
        return Ok(());
    }
    Err(TrainError::run(
        p,
        format!(
            "the {what} ImageFolder does not exist (give {flag} for another folder, e.g. \
             CIFAR's test/ as --val)"
        ),
    ))
}

/// A frozen backbone with its eval transform and weight fingerprint.
pub struct Backbone {
    pub loaded: LoadedBackbone,
    pub eval: EvalTransform,
    /// `dino_core::onnx_meta::backbone_fingerprint` of the file's tensors, as
    /// `dino-export` computes it.
    pub fingerprint: String,
}

/// Loads `path` (any file `--pretrained_weights` accepts) for feature extraction. The
/// fingerprint is taken over the tensors as the file stores them, so that it matches the
/// exported model's.
pub fn load_backbone(path: &Path, key: CheckpointKey, device: Device) -> Result<Backbone> {
    let p = dino_import::read_pretrained(path, Some(key.as_str())).map_err(ModelError::from)?;
    let fingerprint = backbone_fingerprint(&p.tensors);
    drop(p);
    let loaded = load_pretrained(path, Some(key.as_str()), device)?;
    let eval = loaded
        .eval
        .clone()
        .unwrap_or_else(|| EvalTransform::standard(loaded.model.cfg.img_size));
    Ok(Backbone {
        loaded,
        eval,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_folders_default_to_the_official_layout() {
        let d = Path::new("data");
        let (t, v) = data_folders(Some(d), None, None).unwrap();
        assert_eq!((t, v), (d.join("train"), d.join("val")));
        let test = Path::new("cifar/test");
        let (t, v) = data_folders(Some(d), None, Some(test)).unwrap();
        assert_eq!((t, v), (d.join("train"), test.to_path_buf()));
        let e = data_folders(None, Some(d), None).unwrap_err().to_string();
        assert!(e.contains("--val"), "{e}");
    }
}
