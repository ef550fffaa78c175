//! From a loader batch to the crops on the training device: an upload of the normalised
//! crops, or of the raw `u8` crops followed by the photometric stage on the device.

use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::data::{DevicePhotometric, MultiCropBatch, Photometric};
use crate::error::{Result, TrainError};

/// How batches reach the device.
pub(super) enum Feed {
    /// The workers did the whole augmentation: upload `f32` crops.
    Normalised(Device),
    /// The workers only decoded, cropped and resized: upload `u8` and finish there.
    OnDevice(DevicePhotometric),
}

impl Feed {
    /// Where `cfg.run.photometric` puts the photometric stage on `device`.
    pub(super) fn new(cfg: &TrainConfig, device: Device) -> Self {
        match cfg.run.photometric.resolve(device) {
            Photometric::Deferred => {
                let a = &cfg.augment;
                Self::OnDevice(DevicePhotometric::new(a.mean, a.std, device))
            }
            Photometric::Cpu => Self::Normalised(device),
        }
    }

    /// What the loader's workers do of the photometric stage for this feed.
    pub(super) fn photometric(&self) -> Photometric {
        match self {
            Self::Normalised(_) => Photometric::Cpu,
            Self::OnDevice(_) => Photometric::Deferred,
        }
    }

    /// `[2b, 3, g, g]` and `[n*b, 3, l, l]` normalised `f32` crops on the device.
    pub(super) fn crops(&self, b: &MultiCropBatch) -> Result<(Tensor, Option<Tensor>)> {
        match self {
            Self::Normalised(device) => Ok(upload_normalised(b, *device)),
            Self::OnDevice(dp) => photometric_on_device(b, dp),
        }
    }
}

/// Uploads the raw `u8` crops (pinned, asynchronous on CUDA) and runs the photometric stage
/// there.
fn photometric_on_device(
    b: &MultiCropBatch,
    dp: &DevicePhotometric,
) -> Result<(Tensor, Option<Tensor>)> {
    let raw = b.raw.as_ref().ok_or_else(|| {
        TrainError::Invalid(
            "the loader returned no raw crops for the device photometric stage".into(),
        )
    })?;
    let n = b.batch_size as i64;
    let (g, l) = (b.global_size as i64, b.local_size as i64);
    let up = |v: &[u8], shape: [i64; 4]| dp.upload(Tensor::from_slice(v).view(shape));
    let global = dp.apply(&up(&raw.global, [2 * n, 3, g, g])?, &raw.global_params)?;
    let local = if b.n_local > 0 {
        let crops = up(&raw.local, [b.n_local as i64 * n, 3, l, l])?;
        Some(dp.apply(&crops, &raw.local_params)?)
    } else {
        None
    };
    Ok((global, local))
}

/// `[2b, 3, g, g]` and `[n*b, 3, l, l]` on the device.
fn upload_normalised(b: &MultiCropBatch, device: Device) -> (Tensor, Option<Tensor>) {
    let n = b.batch_size as i64;
    let (g, l) = (b.global_size as i64, b.local_size as i64);
    let up = |v: &[f32], shape: [i64; 4]| {
        let t = Tensor::from_slice(v).view(shape);
        if device.is_cuda() {
            // `_pin_memory`: what `pin_memory` does for a fresh tensor, without the
            // deprecation warning libtorch prints when tch passes it the device.
            t.internal_pin_memory(device)
                .to_device_(device, Kind::Float, true, false)
        } else {
            t
        }
    };
    let global = up(&b.global, [2 * n, 3, g, g]);
    let local = (b.n_local > 0).then(|| up(&b.local, [b.n_local as i64 * n, 3, l, l]));
    (global, local)
}
