//! The training data pipeline: ImageFolder loading, the DINO multi-crop augmentation and a
//! parallel, prefetching, seed-deterministic batch loader.
//!
//! The augmentation reproduces `DataAugmentationDINO` of the official `main_dino.py`
//! (torchvision transforms on PIL images) operation by operation, including PIL's integer
//! rounding, so that a model trained here sees the same input distribution:
//!
//! * 2 global crops: `RandomResizedCrop(global_size, global_crops_scale, bicubic)`, flip,
//!   `ColorJitter(0.4, 0.4, 0.2, 0.1)` with p = 0.8, grayscale with p = 0.2, Gaussian blur
//!   (p = 1.0 on the first view, 0.1 on the second) and solarization (p = 0.2, second only);
//! * `n_local` local crops: the same at `local_size` / `local_crops_scale`, blur with p = 0.5;
//!   (the blur and solarization probabilities and the blur's sigma range are configurable:
//!   a sigma of 2 pixels erases most of a 32x32 image, so CIFAR recipes turn the blur off);
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
use dino_core::config::{IMAGENET_MEAN, IMAGENET_STD};

pub use augment::{ColorJitterParams, CropBox, JitterOp, MultiCrop, PhotometricParams, ViewParams};
pub use dataset::{ImageDataset, SkippedFile, Verify};
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

/// The multi-crop augmentation settings (`main_dino.py` arguments).
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Side of the two global crops (224 for ImageNet, 32 for CIFAR).
    pub global_size: usize,
    /// Side of the local crops (96 for ImageNet, 16 for CIFAR).
    pub local_size: usize,
    /// Number of local crops per sample (`local_crops_number`).
    pub n_local: usize,
    /// `global_crops_scale`: area fraction range of the global crops.
    pub global_scale: (f64, f64),
    /// `local_crops_scale`: area fraction range of the local crops.
    pub local_scale: (f64, f64),
    /// Blur probability of global views 1 and 2 (official: 1.0, 0.1).
    pub global_blur_prob: [f64; 2],
    /// Blur probability of each local view (official: 0.5).
    pub local_blur_prob: f64,
    /// Range of the blur's sigma, in pixels of the rendered crop (official: 0.1 to 2.0).
    pub blur_sigma: (f64, f64),
    /// Solarization probability of global views 1 and 2 (official: 0.0, 0.2).
    pub solarization_prob: [f64; 2],
    /// `Normalize` mean and std, per RGB channel.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub photometric: Photometric,
}

impl Default for AugmentConfig {
    /// The official ImageNet defaults: 224/96, 8 local crops (as in the paper's main runs).
    fn default() -> Self {
        Self {
            global_size: 224,
            local_size: 96,
            n_local: 8,
            global_scale: (0.4, 1.0),
            local_scale: (0.05, 0.4),
            global_blur_prob: [1.0, 0.1],
            local_blur_prob: 0.5,
            blur_sigma: (0.1, 2.0),
            solarization_prob: [0.0, 0.2],
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            photometric: Photometric::Cpu,
        }
    }
}

impl AugmentConfig {
    /// CIFAR-sized crops (32/16, 6 local crops) with CIFAR statistics.
    pub fn cifar() -> Self {
        Self {
            global_size: 32,
            local_size: 16,
            n_local: 6,
            mean: CIFAR_MEAN,
            std: CIFAR_STD,
            ..Self::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), DataError> {
        let bad = |what: &str| Err(DataError::Config(what.to_string()));
        let scale_ok = |(a, b): (f64, f64)| a > 0.0 && a <= b && b <= 1.0;
        if self.global_size == 0 || self.local_size == 0 {
            return bad("crop sizes must be positive");
        }
        if !scale_ok(self.global_scale) || !scale_ok(self.local_scale) {
            return bad("crop scales must satisfy 0 < min <= max <= 1");
        }
        let probs = [self.local_blur_prob]
            .into_iter()
            .chain(self.global_blur_prob)
            .chain(self.solarization_prob);
        if !probs.into_iter().all(|p| (0.0..=1.0).contains(&p)) {
            return bad("blur and solarization probabilities must lie in [0, 1]");
        }
        let (lo, hi) = self.blur_sigma;
        if !(0.0 < lo && lo <= hi && hi.is_finite()) {
            return bad("blur sigma range must satisfy 0 < min <= max");
        }
        if !self.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return bad("normalisation std must be positive");
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
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            num_workers: 0,
            prefetch: 2,
            seed: 0,
            shuffle: true,
            drop_last: true,
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
    /// Class index of every sample (for evaluation only).
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
