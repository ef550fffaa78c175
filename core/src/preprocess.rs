//! The evaluation transform shared by `dino-train` and `dino-run`.
//!
//! It reproduces torchvision's eval pipeline on PIL images, as the official `eval_knn.py`
//! uses it:
//!
//! ```text
//! Resize(resize_size, BICUBIC)  ->  CenterCrop(crop_size)  ->  ToTensor()  ->  Normalize(mean, std)
//! ```
//!
//! * The shorter side becomes `resize_size`; the longer side is
//!   `int(resize_size * long / short)` (torchvision's rule, truncating).
//! * The resize is PIL's `Image.resize(..., BICUBIC)`: a separable convolution with the
//!   Catmull-Rom cubic (a = -0.5) whose support is widened by the scale factor when
//!   downscaling (antialiasing), coefficients in 22-bit fixed point, a horizontal pass first
//!   and 8-bit rounding between the passes. It is implemented here to match PIL bit for bit
//!   (the tests compare against Pillow with a tolerance of zero levels), which neither the
//!   `image` crate's f32 filters nor `fast_image_resize`'s adaptive fixed-point precision
//!   are designed to do.
//! * The crop offset is `int(round((size - crop) / 2.0))` with Python's round-half-to-even;
//!   a crop larger than the image pads with zeros first, as torchvision does.
//! * `ToTensor` divides by 255 and `Normalize` subtracts the mean and divides by the std, in
//!   f32, giving a CHW tensor.
//!
//! When `resize_size == crop_size ==` the image size (native-size evaluation of 32x32
//! CIFAR images), the pixels pass through untouched.

use image::RgbImage;
use rayon::prelude::*;

use crate::config::EvalTransform;
use crate::error::CoreError;

/// Fixed-point precision of PIL's 8-bit resampling (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// PIL's bicubic kernel, a = -0.5 (Catmull-Rom), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per-output-pixel filter taps in fixed point: `(first input index, taps)`.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Taps {
    /// Taps of the outputs `range` of a resize from `in_size` to `out_size` pixels.
    fn new(in_size: usize, out_size: usize, range: std::ops::Range<usize>) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        let mut first = Vec::with_capacity(range.len());
        let mut weights = Vec::with_capacity(range.len());
        for xx in range {
            let center = (xx as f64 + 0.5) * scale;
            // C `(int)` casts truncate toward zero, as Rust's `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let s = v * f64::from(1u32 << PRECISION_BITS);
                    if v < 0.0 {
                        (s - 0.5) as i32
                    } else {
                        (s + 0.5) as i32
                    }
                })
                .collect();
            first.push(xmin);
            weights.push(fixed);
        }
        Self { first, weights }
    }

    /// The input indices the taps read: `first..end`.
    fn span(&self) -> std::ops::Range<usize> {
        let lo = self.first.iter().copied().min().unwrap_or(0);
        let hi = self
            .first
            .iter()
            .zip(&self.weights)
            .map(|(f, w)| f + w.len())
            .max()
            .unwrap_or(lo);
        lo..hi
    }
}

/// A rectangle of a resized image, in its pixel coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << (PRECISION_BITS + 8)) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// PIL-exact bicubic resize of an RGB8 image to `width` x `height`.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let all = Window {
        x: 0,
        y: 0,
        width,
        height,
    };
    resize_bicubic_window(img, width, height, all)
}

/// The pixels `win` of the PIL-exact bicubic resize of `img` to `width` x `height`,
/// computed without the rest: memory and time follow the window, not the resized image,
/// so a 1 x 1,000,000 image resized to a shorter side of 256 costs no more than a photo.
/// Every value equals the full resize's (each output pixel depends on its taps only).
/// `win` must lie inside the resized image.
pub fn resize_bicubic_window(img: &RgbImage, width: u32, height: u32, win: Window) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    let (wx, wy, ww, wh) = (
        win.x as usize,
        win.y as usize,
        win.width as usize,
        win.height as usize,
    );
    assert!(
        wx + ww <= ow && wy + wh <= oh,
        "window {win:?} outside {width}x{height}"
    );
    if ww == 0 || wh == 0 || iw == 0 || ih == 0 {
        return RgbImage::new(win.width, win.height);
    }
    // Rows of the source the vertical pass reads (all of the window's when no resize).
    let vtaps = (oh != ih).then(|| Taps::new(ih, oh, wy..wy + wh));
    let rows = vtaps.as_ref().map_or(wy..wy + wh, Taps::span);
    let horiz = horizontal(img, ow, wx..wx + ww, rows.clone());
    let Some(taps) = vtaps else {
        return RgbImage::from_raw(win.width, win.height, horiz).expect("window buffer size");
    };
    let round = 1i32 << (PRECISION_BITS - 1);
    let stride = ww * 3;
    let mut out = vec![0u8; stride * wh];
    out.par_chunks_mut(stride).enumerate().for_each(|(y, row)| {
        let (y0, w) = (taps.first[y] - rows.start, &taps.weights[y]);
        let mut acc = vec![round; stride];
        for (i, &k) in w.iter().enumerate() {
            let srow = &horiz[(y0 + i) * stride..(y0 + i + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(srow) {
                *a += i32::from(p) * k;
            }
        }
        for (o, a) in row.iter_mut().zip(acc) {
            *o = clip8(a);
        }
    });
    RgbImage::from_raw(win.width, win.height, out).expect("window buffer size")
}

/// The horizontal pass for output columns `cols` of a resize to `ow` wide, over source
/// rows `rows`: `rows.len()` rows of `cols.len()` RGB pixels.
fn horizontal(
    img: &RgbImage,
    ow: usize,
    cols: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
) -> Vec<u8> {
    let iw = img.width() as usize;
    let src = img.as_raw();
    let stride = cols.len() * 3;
    let mut out = vec![0u8; stride * rows.len()];
    if ow == iw {
        for (y, row) in rows.zip(out.chunks_exact_mut(stride)) {
            let start = (y * iw + cols.start) * 3;
            row.copy_from_slice(&src[start..start + stride]);
        }
        return out;
    }
    let taps = Taps::new(iw, ow, cols);
    let round = 1i32 << (PRECISION_BITS - 1);
    let first_row = rows.start;
    out.par_chunks_mut(stride).enumerate().for_each(|(r, row)| {
        let y = first_row + r;
        let srow = &src[y * iw * 3..(y + 1) * iw * 3];
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let (x0, w) = (taps.first[x], &taps.weights[x]);
            let mut acc = [round; 3];
            for (i, &k) in w.iter().enumerate() {
                let p = &srow[(x0 + i) * 3..(x0 + i) * 3 + 3];
                for c in 0..3 {
                    acc[c] += i32::from(p[c]) * k;
                }
            }
            for c in 0..3 {
                px[c] = clip8(acc[c]);
            }
        }
    });
    out
}

/// torchvision's `Resize(int)` output size `(width, height)`: the shorter side becomes
/// `size`, the longer `int(size * long / short)`.
pub fn resized_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short.max(1))) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Offset of a centre crop of `crop` pixels in a side of `size` pixels (negative when the
/// crop is larger and zero padding is needed), as torchvision computes it.
pub fn crop_offset(size: u32, crop: u32) -> i64 {
    if crop > size {
        -i64::from((crop - size) / 2)
    } else {
        ((f64::from(size) - f64::from(crop)) / 2.0).round_ties_even() as i64
    }
}

/// Largest resize and crop side a transform may ask for (a model's input is at most this).
pub const MAX_SIDE: usize = 4096;

/// Checks that a transform can be applied.
pub fn validate(t: &EvalTransform) -> Result<(), CoreError> {
    if !(1..=MAX_SIDE).contains(&t.resize_size) || !(1..=MAX_SIDE).contains(&t.crop_size) {
        return Err(CoreError::InvalidConfig(format!(
            "eval transform: resize_size {} and crop_size {} must be 1 to {MAX_SIDE}",
            t.resize_size, t.crop_size
        )));
    }
    if t.std.iter().any(|s| !s.is_finite() || *s == 0.0) || t.mean.iter().any(|m| !m.is_finite()) {
        return Err(CoreError::InvalidConfig(format!(
            "eval transform: mean {:?} and std {:?} must be finite, std non-zero",
            t.mean, t.std
        )));
    }
    Ok(())
}

/// Number of f32 values one image occupies: `3 * crop_size * crop_size`.
pub fn image_len(t: &EvalTransform) -> usize {
    3 * t.crop_size * t.crop_size
}

/// The resized and centre-cropped image (`crop_size` square, zero-padded where the crop
/// exceeds the resized image), before `ToTensor`/`Normalize`.
///
/// Only the pixels inside the crop are resized, so an extreme aspect ratio costs no more
/// than a square photo.
pub fn eval_crop(img: &RgbImage, t: &EvalTransform) -> RgbImage {
    let crop = t.crop_size as u32;
    let (w, h) = resized_size(img.width(), img.height(), t.resize_size as u32);
    let (left, top) = (crop_offset(w, crop), crop_offset(h, crop));
    // The part of the crop that lies on the resized image.
    let span = |offset: i64, side: u32| {
        let lo = offset.max(0);
        let hi = (offset + i64::from(crop)).min(i64::from(side));
        (lo as u32, (hi - lo).max(0) as u32)
    };
    let ((x, width), (y, height)) = (span(left, w), span(top, h));
    let win = Window {
        x,
        y,
        width,
        height,
    };
    let inside = resize_bicubic_window(img, w, h, win);
    if (width, height) == (crop, crop) {
        return inside;
    }
    let mut out = RgbImage::new(crop, crop);
    let (dx, dy) = (i64::from(x) - left, i64::from(y) - top);
    image::imageops::replace(&mut out, &inside, dx, dy);
    out
}

/// `ToTensor` and `Normalize` of a cropped image into CHW f32 (`3 * w * h` values).
pub fn normalize_into(crop: &RgbImage, mean: &[f32; 3], std: &[f32; 3], out: &mut [f32]) {
    let plane = (crop.width() * crop.height()) as usize;
    assert_eq!(out.len(), 3 * plane, "output buffer has the wrong size");
    for (i, px) in crop.pixels().enumerate() {
        for c in 0..3 {
            // Divide (not multiply by 1/std) to match torchvision's `div_(std)` exactly.
            out[c * plane + i] = (f32::from(px.0[c]) / 255.0 - mean[c]) / std[c];
        }
    }
}

/// Applies the eval transform to one image, writing CHW f32 into `out`
/// (`image_len(t)` values).
pub fn eval_transform_into(img: &RgbImage, t: &EvalTransform, out: &mut [f32]) {
    assert_eq!(out.len(), image_len(t), "output buffer has the wrong size");
    normalize_into(&eval_crop(img, t), &t.mean, &t.std, out);
}

/// Applies the eval transform to one image, returning a CHW f32 tensor.
pub fn eval_transform(img: &RgbImage, t: &EvalTransform) -> Vec<f32> {
    let mut out = vec![0f32; image_len(t)];
    eval_transform_into(img, t, &mut out);
    out
}

/// Applies the eval transform to a batch in parallel, writing `[B, 3, S, S]` into a
/// preallocated buffer of at least `images.len() * image_len(t)` values.
pub fn eval_transform_batch_into(images: &[RgbImage], t: &EvalTransform, out: &mut [f32]) {
    let n = image_len(t);
    assert!(out.len() >= images.len() * n, "batch buffer too small");
    out[..images.len() * n]
        .par_chunks_mut(n)
        .zip(images.par_iter())
        .for_each(|(o, img)| eval_transform_into(img, t, o));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_close;

    #[test]
    fn torchvision_sizes_and_offsets() {
        assert_eq!(resized_size(640, 480, 256), (341, 256));
        assert_eq!(resized_size(300, 451, 256), (256, 384));
        assert_eq!(resized_size(32, 32, 32), (32, 32));
        // (257 - 224) / 2 = 16.5 rounds to even.
        assert_eq!(crop_offset(257, 224), 16);
        assert_eq!(crop_offset(259, 224), 18);
        assert_eq!(crop_offset(20, 32), -6);
    }

    #[test]
    fn kernel_weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(512, 256), (100, 37), (37, 100), (7, 3)] {
            let t = Taps::new(i, o, 0..o);
            for w in &t.weights {
                let s: i32 = w.iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= w.len() as i32, "{s}");
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(50, 30, image::Rgb([10, 128, 250]));
        let r = resize_bicubic(&img, 17, 11);
        assert!(r.pixels().all(|p| p.0 == [10, 128, 250]));
        let r = resize_bicubic(&img, 80, 61);
        assert!(r.pixels().all(|p| p.0 == [10, 128, 250]));
    }

    #[test]
    fn native_size_passes_through() {
        let img = RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 7, y as u8 * 5, 3]));
        let t = EvalTransform {
            resize_size: 32,
            crop_size: 32,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let out = eval_transform(&img, &t);
        let expected: Vec<f32> = (0..3)
            .flat_map(|c| img.pixels().map(move |p| f32::from(p.0[c]) / 255.0))
            .collect();
        assert_close(&out, &expected, 0.0, 0.0);
    }

    fn noise(w: u32, h: u32, seed: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = (x.wrapping_mul(73856093) ^ y.wrapping_mul(19349663) ^ seed)
                .wrapping_mul(2654435761);
            image::Rgb([(v >> 24) as u8, (v >> 16) as u8, (v >> 8) as u8])
        })
    }

    #[test]
    fn a_window_equals_the_same_pixels_of_the_full_resize() {
        for (iw, ih, ow, oh) in [
            (50, 30, 17, 11),
            (20, 25, 64, 80),
            (40, 40, 40, 19),
            (33, 9, 33, 9),
            (9, 40, 21, 40),
        ] {
            let img = noise(iw, ih, iw * ih);
            let full = resize_bicubic(&img, ow, oh);
            for (x, y, w, h) in [
                (0, 0, ow, oh),
                (3, 2, 5, 7),
                (ow - 4, oh - 3, 4, 3),
                (1, 0, ow - 2, 1),
            ] {
                let win = Window {
                    x,
                    y,
                    width: w,
                    height: h,
                };
                let part = resize_bicubic_window(&img, ow, oh, win);
                let want = image::imageops::crop_imm(&full, x, y, w, h).to_image();
                assert_eq!(part, want, "{iw}x{ih} -> {ow}x{oh}, window {win:?}");
            }
        }
    }

    #[test]
    fn eval_crop_of_an_extreme_aspect_ratio_is_bounded() {
        // Resized to 256 x 256,000,000 this would be 196 GB; only the crop is computed.
        let img = noise(1, 1_000_000, 7);
        let t = EvalTransform::standard(224);
        let c = eval_crop(&img, &t);
        assert_eq!(c.dimensions(), (224, 224));
        // Padding when the crop exceeds the resized image still matches the full path.
        let small = noise(30, 20, 3);
        let t = EvalTransform {
            resize_size: 20,
            crop_size: 24,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let full = resize_bicubic(&small, 30, 20);
        let c = eval_crop(&small, &t);
        for (x, y, p) in c.enumerate_pixels() {
            let (sx, sy) = (
                x as i64 + crop_offset(30, 24),
                y as i64 + crop_offset(20, 24),
            );
            let want = if (0..30).contains(&sx) && (0..20).contains(&sy) {
                *full.get_pixel(sx as u32, sy as u32)
            } else {
                image::Rgb([0, 0, 0])
            };
            assert_eq!(*p, want, "({x}, {y})");
        }
    }

    #[test]
    fn batch_matches_single() {
        let t = EvalTransform::standard(16);
        let imgs: Vec<RgbImage> = (0..3)
            .map(|k| {
                RgbImage::from_fn(20 + k, 25, |x, y| {
                    image::Rgb([(x * y) as u8, x as u8, k as u8])
                })
            })
            .collect();
        let mut buf = vec![0f32; 3 * image_len(&t)];
        eval_transform_batch_into(&imgs, &t, &mut buf);
        for (i, img) in imgs.iter().enumerate() {
            let one = eval_transform(img, &t);
            assert_close(&buf[i * one.len()..(i + 1) * one.len()], &one, 0.0, 0.0);
        }
        assert!(validate(&t).is_ok());
    }
}
