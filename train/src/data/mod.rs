//! The training data pipeline: loading of labelled (ImageFolder) or unlabelled folders, the DINO multi-crop augmentation and a
//! parallel, prefetching, seed-deterministic batch loader.
//!
//! The augmentation reproduces `DataAugmentationDINO` of the official `main_dino.py`
//! (torchvision transforms on PIL images) operation by operation, including PIL's integer
//! rounding, so that a model trained here sees the same input distribution:
//!
//! * 2 global crops: `RandomResizedCrop(global_crop_size, global_crops_scale, bicubic)`,
//!   flip, `ColorJitter(0.4, 0.4, 0.2, 0.1)` with p = 0.8, grayscale with p = 0.2, Gaussian
//!   blur (`global_blur_prob`, one per view) and solarization (`solarization_prob`);
//! * `local_crops_number` local crops: the same at `local_crop_size` / `local_crops_scale`,
//!   blur with `local_blur_prob`, no solarization (the probabilities and the blur's sigma
//!   range are the paper's by default: a sigma of 2 pixels erases most of a 32x32 image, so
//!   CIFAR recipes turn the blur off);
//! * `ToTensor` + `Normalize(mean, std)`.
//!
//! Every (seed, epoch, sample index) owns its random stream ([`SampleRng`]), so batches are
//! bit-identical whatever the number of worker threads.
//!
//! ```no_run
//! use std::sync::Arc;
//! use dino_train::data::{AugmentConfig, ImageDataset, Loader, LoaderConfig, Verify};
//! # fn main() -> Result<(), dino_train::data::DataError> {
//! let ds = Arc::new(ImageDataset::open("../shared/data/cifar10-mini/train".as_ref(), Verify::Full)?);
//! let loader = Loader::new(ds, AugmentConfig::cifar(), LoaderConfig { batch_size: 64, ..Default::default() })?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?; // batch.global: [2*B, 3, 32, 32], batch.local: [6*B, 3, 16, 16]
//! }
//! println!("skipped {} unreadable files", loader.skipped_count());
//! # Ok(()) }
//! ```

pub mod augment;
pub mod color;
mod dataset;
pub mod device_photometric;
mod loader;
mod rng;

use std::path::PathBuf;

use dino_core::CoreError;

use crate::config::OptimConfig;

pub use augment::{ColorJitterParams, CropBox, JitterOp, MultiCrop, PhotometricParams, ViewParams};
pub use dataset::{ImageDataset, NO_LABEL, SkippedFile, Verify};
pub use device_photometric::DevicePhotometric;
pub use loader::{EpochBatches, Loader};
pub use rng::SampleRng;

/// CIFAR-10 channel statistics, for training on 32x32 images.
pub const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const CIFAR_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// Errors of the data pipeline; each names the file or folder concerned.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{root}: no readable image among {total} files ({skipped} skipped as unreadable)")]
    NoReadableImages {
        root: PathBuf,
        total: usize,
        skipped: usize,
    },
    #[error("invalid data configuration: {0}")]
    Config(String),
    #[error("{path}: {why}")]
    Image { path: PathBuf, why: String },
    /// A tensor op of the device photometric stage failed (e.g. out of device memory).
    #[error("device photometric stage: {0}")]
    Tensor(#[from] tch::TchError),
}

/// Where the photometric half of the augmentation (jitter, grayscale, blur, solarize,
/// normalisation) runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Photometric {
    /// On the CPU workers: batches carry normalised `f32` crops.
    #[default]
    Cpu,
    /// Left to the consumer (e.g. batched GPU ops): batches carry the geometric `u8` crops in
    /// [`RawCrops`] together with the sampled [`PhotometricParams`] of every view.
    Deferred,
}

/// `--photometric`: where the photometric stage of training runs, resolved for the training
/// device by [`PhotometricSpec::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "lower")]
pub enum PhotometricSpec {
    /// on the training device when it is a GPU, else on the data workers
    Auto,
    /// on the data workers
    Cpu,
    /// batched on the training device
    Device,
}

impl PhotometricSpec {
    /// Where the photometric stage runs when training on `device`.
    pub fn resolve(self, device: tch::Device) -> Photometric {
        match self {
            Self::Cpu => Photometric::Cpu,
            Self::Device => Photometric::Deferred,
            Self::Auto if device.is_cuda() => Photometric::Deferred,
            Self::Auto => Photometric::Cpu,
        }
    }
}

/// The multi-crop settings, a section of the training options (defaults and help there).
pub use crate::config::AugmentConfig;

impl AugmentConfig {
    /// CIFAR-sized crops (32/16, 6 local crops) with CIFAR statistics.
    pub fn cifar() -> Self {
        Self {
            global_crop_size: 32,
            local_crop_size: 16,
            local_crops_number: 6,
            mean: CIFAR_MEAN,
            std: CIFAR_STD,
            ..Self::default()
        }
    }

    /// Checks the crop sizes, scales, probabilities, blur range and normalisation; errors
    /// name the option.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |what: String| Err(DataError::Config(what));
        if self.global_crop_size == 0 || self.local_crop_size == 0 {
            return bad("global_crop_size and local_crop_size must be positive".into());
        }
        for (name, s) in [
            ("global_crops_scale", self.global_crops_scale),
            ("local_crops_scale", self.local_crops_scale),
        ] {
            if !(0.0 < s[0] && s[0] <= s[1] && s[1] <= 1.0) {
                return bad(format!("{name} {s:?}: expected 0 < min <= max <= 1"));
            }
        }
        for (name, p) in [
            ("global_blur_prob", self.global_blur_prob[0]),
            ("global_blur_prob", self.global_blur_prob[1]),
            ("local_blur_prob", self.local_blur_prob),
            ("solarization_prob", self.solarization_prob[0]),
            ("solarization_prob", self.solarization_prob[1]),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name}: probability {p} is outside [0, 1]"));
            }
        }
        let [lo, hi] = self.blur_sigma;
        if !(0.0 < lo && lo <= hi && hi.is_finite()) {
            return bad(format!(
                "blur_sigma {:?}: expected 0 < min <= max",
                self.blur_sigma
            ));
        }
        if !self.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return bad("std: normalisation std must be positive".into());
        }
        Ok(())
    }
}

/// Batching, shuffling and threading settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Decode + augment threads (a private pool; 0 = one per available core).
    pub num_workers: usize,
    /// Batches prepared ahead of the consumer (bounded channel depth).
    pub prefetch: usize,
    pub seed: u64,
    /// Reshuffle every epoch (deterministically from `(seed, epoch)`).
    pub shuffle: bool,
    /// Drop the last incomplete batch, as the official DataLoader (`drop_last=True`).
    pub drop_last: bool,
    /// Whether batches carry finished crops or leave the photometric stage to the consumer.
    pub photometric: Photometric,
    /// This process's share of every epoch when several train together.
    pub shard: Shard,
}

/// A process's share of the data, as torch's `DistributedSampler` deals it: every rank
/// draws the same epoch permutation, pads it by repeating its start to a multiple of
/// `world`, and takes every `world`-th sample from position `rank`. Shares are disjoint (up
/// to the padding) and equal in size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { rank: 0, world: 1 }
    }
}

impl Shard {
    /// Samples of a dataset of `len` that this rank sees per epoch.
    pub fn len(&self, len: usize) -> usize {
        len.div_ceil(self.world.max(1))
    }

    /// This rank's part of the epoch order `order` (all ranks pass the same one).
    pub fn take(&self, order: &[usize]) -> Vec<usize> {
        let world = self.world.max(1);
        if world == 1 {
            return order.to_vec();
        }
        let total = self.len(order.len()) * world;
        (self.rank..total)
            .step_by(world)
            .map(|i| order[i % order.len()])
            .collect()
    }
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: OptimConfig::default().batch_size,
            num_workers: 0,
            prefetch: 2,
            seed: 0,
            shuffle: true,
            drop_last: true,
            photometric: Photometric::Cpu,
            shard: Shard::default(),
        }
    }
}

/// One batch of multi-crop views, laid out for `Tensor::from_slice(..).view(..)`.
///
/// Views are view-major, as `torch.cat` over the official crop list gives them: all samples'
/// view 0, then all samples' view 1, and so on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MultiCropBatch {
    pub batch_size: usize,
    pub global_size: usize,
    pub local_size: usize,
    pub n_local: usize,
    /// `[2 * B, 3, G, G]` normalised pixels (empty with [`Photometric::Deferred`]).
    pub global: Vec<f32>,
    /// `[n_local * B, 3, L, L]` normalised pixels (empty with [`Photometric::Deferred`]).
    pub local: Vec<f32>,
    /// Class index of every sample (for evaluation only; [`NO_LABEL`] when unlabelled).
    pub labels: Vec<i64>,
    /// Dataset index of every sample.
    pub indices: Vec<usize>,
    /// The un-normalised crops and their photometric parameters, with
    /// [`Photometric::Deferred`] only.
    pub raw: Option<RawCrops>,
}

/// Geometric crops left for a later photometric stage ([`Photometric::Deferred`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawCrops {
    /// `[2 * B, 3, G, G]` RGB bytes after crop, resize and flip, view-major.
    pub global: Vec<u8>,
    /// `[n_local * B, 3, L, L]`, view-major.
    pub local: Vec<u8>,
    /// The parameters to apply to `global[k]`, in the same order.
    pub global_params: Vec<PhotometricParams>,
    /// The parameters to apply to `local[k]`, in the same order.
    pub local_params: Vec<PhotometricParams>,
}
