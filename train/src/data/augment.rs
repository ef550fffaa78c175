//! The multi-crop augmentation: random parameters drawn as torchvision draws them, then crop,
//! bicubic resize (of the crop region only) and flip, then the photometric part.

use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::color::{self, Normalizer};
use super::rng::SampleRng;
use super::{AugmentConfig, DataError};

/// A crop rectangle in source pixels (torchvision's `i, j, h, w`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// The four `ColorJitter` operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitterOp {
    Brightness,
    Contrast,
    Saturation,
    Hue,
}

/// A sampled `ColorJitter`: the random order (`torch.randperm(4)`) and the four factors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColorJitterParams {
    pub order: [JitterOp; 4],
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

/// The photometric decisions of one view, in the order they are applied.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhotometricParams {
    /// `None` when the `RandomApply(p=0.8)` did not fire.
    pub jitter: Option<ColorJitterParams>,
    pub grayscale: bool,
    /// PIL `GaussianBlur` radius (= sigma), when the blur fires.
    pub blur_sigma: Option<f32>,
    pub solarize: bool,
}

/// Everything random about one view.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewParams {
    pub crop: CropBox,
    pub flip: bool,
    pub photo: PhotometricParams,
}

/// `ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)` ranges.
const BRIGHTNESS: (f64, f64) = (0.6, 1.4);
const CONTRAST: (f64, f64) = (0.6, 1.4);
const SATURATION: (f64, f64) = (0.8, 1.2);
const HUE: (f64, f64) = (-0.1, 0.1);
const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// `RandomResizedCrop.get_params`: 10 tries of (log-uniform ratio, uniform area), then the
/// centre-crop fallback clamped to the ratio range.
pub fn sample_crop(rng: &mut SampleRng, width: u32, height: u32, scale: (f64, f64)) -> CropBox {
    let area = width as f64 * height as f64;
    let (lr0, lr1) = (RATIO.0.ln(), RATIO.1.ln());
    for _ in 0..10 {
        let target = area * rng.uniform(scale.0, scale.1);
        let ratio = rng.uniform(lr0, lr1).exp();
        let w = (target * ratio).sqrt().round() as i64;
        let h = (target / ratio).sqrt().round() as i64;
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            let (w, h) = (w as u32, h as u32);
            let top = rng.below((height - h + 1) as u64) as u32;
            let left = rng.below((width - w + 1) as u64) as u32;
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < RATIO.0 {
        (
            width,
            ((width as f64 / RATIO.0).round() as u32).clamp(1, height),
        )
    } else if in_ratio > RATIO.1 {
        (
            ((height as f64 * RATIO.1).round() as u32).clamp(1, width),
            height,
        )
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

fn sample_jitter(rng: &mut SampleRng) -> ColorJitterParams {
    let mut order = [
        JitterOp::Brightness,
        JitterOp::Contrast,
        JitterOp::Saturation,
        JitterOp::Hue,
    ];
    rng.shuffle(&mut order);
    let mut u = |(a, b): (f64, f64)| rng.uniform(a, b) as f32;
    ColorJitterParams {
        order,
        brightness: u(BRIGHTNESS),
        contrast: u(CONTRAST),
        saturation: u(SATURATION),
        hue: u(HUE),
    }
}

/// Draws one view: crop, flip (p 0.5), jitter (p 0.8), grayscale (p 0.2), blur (`blur_p`,
/// fires when `u <= p` as the official `GaussianBlur`, sigma uniform in `sigma`), solarize
/// (`solarize_p`).
fn sample_view(
    rng: &mut SampleRng,
    (width, height): (u32, u32),
    scale: (f64, f64),
    (blur_p, sigma): (f64, (f64, f64)),
    solarize_p: f64,
) -> ViewParams {
    let crop = sample_crop(rng, width, height, scale);
    let flip = rng.unit() < 0.5;
    let jitter = (rng.unit() < 0.8).then(|| sample_jitter(rng));
    let grayscale = rng.unit() < 0.2;
    // `blur_p > 0` keeps a draw of exactly 0 from firing a blur that is turned off.
    let blur_sigma =
        (rng.unit() <= blur_p && blur_p > 0.0).then(|| rng.uniform(sigma.0, sigma.1) as f32);
    let solarize = solarize_p > 0.0 && rng.unit() < solarize_p;
    ViewParams {
        crop,
        flip,
        photo: PhotometricParams {
            jitter,
            grayscale,
            blur_sigma,
            solarize,
        },
    }
}

/// Per-thread reusable buffers: nothing is allocated per view once warm.
struct Scratch {
    resizer: Resizer,
    crop: Vec<u8>,
    view: Vec<u8>,
    blur: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        resizer: Resizer::new(),
        crop: Vec::new(),
        view: Vec::new(),
        blur: Vec::new(),
    });
}

/// `F.resized_crop(img, i, j, h, w, size, BICUBIC)` on PIL: crop, then resize only the crop
/// (pixels outside the box never contribute), Catmull-Rom with antialiasing on downscale.
/// Writes `size * size * 3` interleaved bytes to `out`.
pub fn resized_crop(
    img: &RgbImage,
    b: CropBox,
    size: usize,
    out: &mut Vec<u8>,
) -> Result<(), DataError> {
    resized_crop_filter(img, b, size, FilterType::CatmullRom, out)
}

/// [`resized_crop`] with another PIL filter (`FilterType::Bilinear` is torchvision's
/// default interpolation, which `eval_linear.py`'s `RandomResizedCrop` keeps).
pub fn resized_crop_filter(
    img: &RgbImage,
    b: CropBox,
    size: usize,
    filter: FilterType,
    out: &mut Vec<u8>,
) -> Result<(), DataError> {
    SCRATCH.with(|s| {
        let s = &mut *s.borrow_mut();
        resized_crop_with(img, b, size, filter, &mut s.resizer, &mut s.crop, out)
    })
}

fn resized_crop_with(
    img: &RgbImage,
    b: CropBox,
    size: usize,
    filter: FilterType,
    resizer: &mut Resizer,
    crop: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), DataError> {
    let (iw, (bw, bh)) = (img.width() as usize, (b.width as usize, b.height as usize));
    let raw = img.as_raw();
    crop.clear();
    for y in b.top as usize..b.top as usize + bh {
        let start = (y * iw + b.left as usize) * 3;
        crop.extend_from_slice(&raw[start..start + bw * 3]);
    }
    out.resize(size * size * 3, 0);
    if bw == size && bh == size {
        out.copy_from_slice(crop);
        return Ok(());
    }
    let err = |e: &dyn std::fmt::Display| DataError::Config(format!("resize failed: {e}"));
    let src = ImageRef::new(b.width, b.height, crop, PixelType::U8x3).map_err(|e| err(&e))?;
    let mut dst = Image::from_slice_u8(size as u32, size as u32, out, PixelType::U8x3)
        .map_err(|e| err(&e))?;
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    resizer.resize(&src, &mut dst, &opts).map_err(|e| err(&e))
}

/// Mirrors every row of a `size x size` RGB image (`hflip`).
pub fn flip_rows(px: &mut [u8], size: usize) {
    for row in px.chunks_exact_mut(size * 3) {
        for x in 0..size / 2 {
            let (a, b) = (x * 3, (size - 1 - x) * 3);
            for c in 0..3 {
                row.swap(a + c, b + c);
            }
        }
    }
}

/// Applies jitter (in its sampled order), grayscale, blur and solarize to a `size x size`
/// view, in the official order.
pub fn apply_photometric(px: &mut [u8], size: usize, p: &PhotometricParams, scratch: &mut Vec<u8>) {
    if let Some(j) = p.jitter {
        for op in j.order {
            match op {
                JitterOp::Brightness => color::adjust_brightness(px, j.brightness),
                JitterOp::Contrast => color::adjust_contrast(px, j.contrast),
                JitterOp::Saturation => color::adjust_saturation(px, j.saturation),
                JitterOp::Hue => color::adjust_hue(px, j.hue),
            }
        }
    }
    if p.grayscale {
        color::grayscale(px);
    }
    if let Some(sigma) = p.blur_sigma {
        color::gaussian_blur(px, size, size, sigma, scratch);
    }
    if p.solarize {
        color::solarize(px);
    }
}

/// Where one view's pixels go: normalised floats or raw CHW bytes.
pub(crate) enum ViewOut<'a> {
    F32(&'a mut [f32]),
    U8(&'a mut [u8]),
}

/// The configured `DataAugmentationDINO`.
#[derive(Clone, Debug)]
pub struct MultiCrop {
    cfg: AugmentConfig,
    norm: Normalizer,
}

impl MultiCrop {
    pub fn new(cfg: AugmentConfig) -> Result<Self, DataError> {
        cfg.validate()?;
        let norm = Normalizer::new(cfg.mean, cfg.std);
        Ok(Self { cfg, norm })
    }

    pub fn config(&self) -> &AugmentConfig {
        &self.cfg
    }

    /// Draws the `2 + local_crops_number` views of one sample for an image of
    /// `(width, height)`: global 1 and 2 (each with its blur and solarization probability),
    /// then the locals.
    pub fn sample_views(&self, rng: &mut SampleRng, size: (u32, u32)) -> Vec<ViewParams> {
        let c = &self.cfg;
        let pair = |[a, b]: [f64; 2]| (a, b);
        let sigma = pair(c.blur_sigma);
        let mut v = Vec::with_capacity(2 + c.local_crops_number);
        for i in 0..2 {
            let blur = (c.global_blur_prob[i], sigma);
            v.push(sample_view(
                rng,
                size,
                pair(c.global_crops_scale),
                blur,
                c.solarization_prob[i],
            ));
        }
        for _ in 0..c.local_crops_number {
            let blur = (c.local_blur_prob, sigma);
            v.push(sample_view(rng, size, pair(c.local_crops_scale), blur, 0.0));
        }
        v
    }

    /// Renders one view: crop + resize + flip, then (unless `out` is raw bytes) the
    /// photometric part and normalisation.
    pub(crate) fn render(
        &self,
        img: &RgbImage,
        v: &ViewParams,
        size: usize,
        out: ViewOut<'_>,
    ) -> Result<(), DataError> {
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            resized_crop_with(
                img,
                v.crop,
                size,
                FilterType::CatmullRom,
                &mut s.resizer,
                &mut s.crop,
                &mut s.view,
            )?;
            if v.flip {
                flip_rows(&mut s.view, size);
            }
            match out {
                ViewOut::U8(o) => color::hwc_to_chw(&s.view, o),
                ViewOut::F32(o) => {
                    apply_photometric(&mut s.view, size, &v.photo, &mut s.blur);
                    self.norm.to_chw(&s.view, o);
                }
            }
            Ok(())
        })
    }

    /// The full CPU pipeline for one view into `[3, size, size]` normalised floats (for
    /// tests and tools; the loader writes straight into batch buffers).
    pub fn render_view(
        &self,
        img: &RgbImage,
        v: &ViewParams,
        size: usize,
    ) -> Result<Vec<f32>, DataError> {
        let mut out = vec![0f32; 3 * size * size];
        self.render(img, v, size, ViewOut::F32(&mut out))?;
        Ok(out)
    }
}
