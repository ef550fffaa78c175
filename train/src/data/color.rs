//! Photometric operations on interleaved RGB8 pixels, reproducing what torchvision's PIL
//! backend computes (Pillow's integer luma, truncating blends, 8-bit HSV, box-blur Gaussian),
//! so the CPU path matches the official pipeline value for value.
//!
//! All functions take `&mut [u8]` of `3 * width * height` bytes and work in place.

/// Pillow's ITU-R 601-2 luma `L = 0.299 R + 0.587 G + 0.114 B` in 16-bit fixed point.
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Pillow's `Image.blend(a, b, alpha)` for one value: `a + alpha * (b - a)` in `f32`,
/// clipped, truncated toward zero.
#[inline]
fn blend(a: u8, b: u8, alpha: f32) -> u8 {
    let v = a as i32 as f32 + alpha * (b as i32 - a as i32) as f32;
    v.clamp(0.0, 255.0) as u8
}

/// Applies a 256-entry table to every byte.
fn apply_lut(px: &mut [u8], lut: &[u8; 256]) {
    for v in px {
        *v = lut[*v as usize];
    }
}

/// `ImageEnhance.Brightness(img).enhance(f)`: blend with black.
pub fn adjust_brightness(px: &mut [u8], factor: f32) {
    let lut = std::array::from_fn(|v| blend(0, v as u8, factor));
    apply_lut(px, &lut);
}

/// `ImageEnhance.Contrast(img).enhance(f)`: blend with the (rounded) mean luma.
pub fn adjust_contrast(px: &mut [u8], factor: f32) {
    let n = px.len() / 3;
    if n == 0 {
        return;
    }
    let sum: u64 = px
        .chunks_exact(3)
        .map(|p| luma(p[0], p[1], p[2]) as u64)
        .sum();
    let mean = (sum as f64 / n as f64 + 0.5) as i64 as u8;
    let lut = std::array::from_fn(|v| blend(mean, v as u8, factor));
    apply_lut(px, &lut);
}

/// `ImageEnhance.Color(img).enhance(f)`: blend with the pixel's own luma.
pub fn adjust_saturation(px: &mut [u8], factor: f32) {
    for p in px.chunks_exact_mut(3) {
        let l = luma(p[0], p[1], p[2]);
        for c in p {
            *c = blend(l, *c, factor);
        }
    }
}

/// C `round` (half away from zero) for the non-negative products of `hsv2rgb`, without a
/// libm call: `x - trunc(x)` is exact below 2^52. Negative inputs clip to 0 either way.
#[inline]
fn round_pos(x: f64) -> i32 {
    let t = x as i64 as f64;
    (if x - t >= 0.5 { t + 1.0 } else { t }) as i32
}

/// Tables that make the HSV round trip cheap without changing a single result.
struct HsvTables {
    /// 8-bit saturation `clip(int((cr / maxc) * 255))`, indexed `[maxc][cr]`.
    sat: Vec<u8>,
    /// For each 8-bit hue: the sextant `i % 6` and the fraction `f` of `hsv2rgb`.
    sextant: [(u8, f32); 256],
    /// `fs = s / 255` as `hsv2rgb` computes it.
    fs: [f32; 256],
}

fn hsv_tables() -> &'static HsvTables {
    static T: std::sync::OnceLock<HsvTables> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let mut sat = vec![0u8; 256 * 256];
        for maxc in 1..256usize {
            for cr in 1..=maxc {
                let s = cr as f32 / maxc as f32;
                sat[maxc * 256 + cr] = ((s as f64 * 255.0) as i32).clamp(0, 255) as u8;
            }
        }
        HsvTables {
            sat,
            sextant: std::array::from_fn(|h| {
                let h6 = h as f32 as f64 * 6.0 / 255.0;
                let i = h6.floor() as i32;
                ((i % 6) as u8, (h6 - i as f32 as f64) as f32)
            }),
            fs: std::array::from_fn(|s| (s as f32 as f64 / 255.0) as f32),
        }
    })
}

/// Pillow's `convert("HSV")` for one pixel (8-bit H, S, V), with the C source's float/double
/// mix; `fmod(x, 1)` on `x` in `[5/6, 11/6]` is the exact `x - 1` for `x >= 1`.
#[inline]
fn rgb_to_hsv(t: &HsvTables, r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return (0, 0, maxc);
    }
    let cr = (maxc - minc) as f32;
    let h: f32 = if r == maxc {
        (maxc - b) as f32 / cr - (maxc - g) as f32 / cr
    } else if g == maxc {
        (2.0 + ((maxc - r) as f32 / cr) as f64 - ((maxc - b) as f32 / cr) as f64) as f32
    } else {
        (4.0 + ((maxc - g) as f32 / cr) as f64 - ((maxc - r) as f32 / cr) as f64) as f32
    };
    let x = h as f64 / 6.0 + 1.0;
    let h = (if x >= 1.0 { x - 1.0 } else { x }) as f32;
    let uh = ((h as f64 * 255.0) as i32).clamp(0, 255) as u8;
    (
        uh,
        t.sat[maxc as usize * 256 + (maxc - minc) as usize],
        maxc,
    )
}

/// Pillow's `convert("RGB")` from HSV for one pixel.
#[inline]
fn hsv_to_rgb(t: &HsvTables, h: u8, s: u8, v: u8) -> (u8, u8, u8) {
    if s == 0 {
        return (v, v, v);
    }
    let (i, f) = t.sextant[h as usize];
    let fs = t.fs[s as usize];
    let vf = v as f64;
    let clip = |x: f64| round_pos(x).clamp(0, 255) as u8;
    let p = clip(vf * (1.0 - fs as f64));
    let q = clip(vf * (1.0 - (fs * f) as f64));
    let tt = clip(vf * (1.0 - fs as f64 * (1.0 - f as f64)));
    match i {
        0 => (v, tt, p),
        1 => (q, v, p),
        2 => (p, v, tt),
        3 => (p, q, v),
        4 => (tt, p, v),
        _ => (v, p, q),
    }
}

/// torchvision's PIL `adjust_hue`: rotate the 8-bit hue channel (wrapping) by
/// `trunc(factor * 255)`; `factor` in `[-0.5, 0.5]`.
pub fn adjust_hue(px: &mut [u8], factor: f32) {
    let shift = (factor as f64 * 255.0) as i32 as u8;
    let t = hsv_tables();
    for p in px.chunks_exact_mut(3) {
        let (h, s, v) = rgb_to_hsv(t, p[0], p[1], p[2]);
        let (r, g, b) = hsv_to_rgb(t, h.wrapping_add(shift), s, v);
        p[0] = r;
        p[1] = g;
        p[2] = b;
    }
}

/// The HSV round trip of [`adjust_hue`] as two tables over all 2^24 byte triples, for the
/// batched stage on the device (two gathers there instead of some sixty float64 kernels):
/// `to_hsv[(r << 16) | (g << 8) | b] = (h << 16) | (s << 8) | v` and
/// `to_rgb[(h << 16) | (s << 8) | v] = (r << 16) | (g << 8) | b`, as `f32` (exact below 2^24).
/// Built from the very functions the CPU path calls, so both paths agree by construction.
pub fn hsv_round_trip_tables() -> (Vec<f32>, Vec<f32>) {
    use rayon::prelude::*;
    let t = hsv_tables();
    let pack = |a: u8, b: u8, c: u8| ((a as u32) << 16 | (b as u32) << 8 | c as u32) as f32;
    let table = |f: &(dyn Fn(u8, u8, u8) -> (u8, u8, u8) + Sync)| -> Vec<f32> {
        let mut out = vec![0f32; 1 << 24];
        out.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(a, chunk)| {
                for (k, o) in chunk.iter_mut().enumerate() {
                    let (x, y, z) = f(a as u8, (k >> 8) as u8, k as u8);
                    *o = pack(x, y, z);
                }
            });
        out
    };
    (
        table(&|r, g, b| rgb_to_hsv(t, r, g, b)),
        table(&|h, s, v| hsv_to_rgb(t, h, s, v)),
    )
}

/// `rgb_to_grayscale(img, 3)`: Pillow luma replicated to the three channels.
pub fn grayscale(px: &mut [u8]) {
    for p in px.chunks_exact_mut(3) {
        let l = luma(p[0], p[1], p[2]);
        p.fill(l);
    }
}

/// `ImageOps.solarize(img, 128)`: invert every value `>= 128`.
pub fn solarize(px: &mut [u8]) {
    for v in px {
        if *v >= 128 {
            *v = 255 - *v;
        }
    }
}

/// Box radius of Pillow's 3-pass Gaussian approximation (Gwosdek et al. 2011), with the C
/// source's float/double mix.
fn box_radius(sigma: f32, passes: u32) -> f32 {
    let sigma2 = sigma * sigma / passes as f32;
    let big_l = (12.0 * sigma2 as f64 + 1.0).sqrt() as f32;
    let l = ((big_l as f64 - 1.0) / 2.0).floor() as f32;
    let a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    let a = a / (6.0 * (sigma2 - (l + 1.0) * (l + 1.0)));
    l + a
}

/// Moves the running sum one pixel (`+ add - sub`) and writes the output pixel: the sum
/// weighted by `ww` plus the two pixels just outside the box (`sub`, `far`) weighted by `fw`.
#[inline(always)]
fn box_step(
    o: &mut [u8],
    acc: &mut [u32; 3],
    add: [u32; 3],
    sub: [u32; 3],
    far: [u32; 3],
    (ww, fw): (u32, u32),
) {
    for (c, a) in acc.iter_mut().enumerate() {
        *a = a.wrapping_add(add[c]).wrapping_sub(sub[c]);
        let bulk = a
            .wrapping_mul(ww)
            .wrapping_add((sub[c] + far[c]).wrapping_mul(fw));
        o[c] = (bulk.wrapping_add(1 << 23) >> 24) as u8;
    }
}

/// One pass of Pillow's fractional box blur over a line of `n` RGB pixels, edges extended
/// (same accumulation order and fixed point as `ImagingLineBoxBlur`, so bit-identical).
fn box_line(inp: &[u8], out: &mut [u8], radius: usize, w: (u32, u32)) {
    let n = inp.len() / 3;
    let last = n - 1;
    let edge_a = (radius + 1).min(n);
    let edge_b = n.saturating_sub(radius + 1);
    let v = |p: &[u8]| [p[0] as u32, p[1] as u32, p[2] as u32];
    let px = |x: usize| v(&inp[x * 3..x * 3 + 3]);
    let mut acc = px(0).map(|p| p * (radius as u32 + 1));
    for x in 0..edge_a - 1 {
        acc.iter_mut().zip(px(x)).for_each(|(a, p)| *a += p);
    }
    acc.iter_mut()
        .zip(px(last))
        .for_each(|(a, p)| *a += p * (radius + 1 - edge_a) as u32);
    // Output x from (added pixel, subtracted pixel, far pixel).
    let step =
        |out: &mut [u8], acc: &mut [u32; 3], x: usize, add: usize, sub: usize, far: usize| {
            box_step(
                &mut out[x * 3..x * 3 + 3],
                acc,
                px(add),
                px(sub),
                px(far),
                w,
            );
        };
    if edge_a <= edge_b {
        for x in 0..edge_a {
            step(out, &mut acc, x, x + radius, 0, x + radius + 1);
        }
        // The bulk of the line without bounds checks; here edge_a == radius + 1.
        let sub = inp.chunks_exact(3);
        let add = inp[(edge_a + radius) * 3..].chunks_exact(3);
        let far = inp[(edge_a + radius + 1) * 3..].chunks_exact(3);
        let o = out[edge_a * 3..edge_b * 3].chunks_exact_mut(3);
        for (((o, s), a), f) in o.zip(sub).zip(add).zip(far) {
            box_step(o, &mut acc, v(a), v(s), v(f), w);
        }
        for x in edge_b..=last {
            step(out, &mut acc, x, last, x - radius - 1, last);
        }
    } else {
        for x in 0..edge_b {
            step(out, &mut acc, x, x + radius, 0, x + radius + 1);
        }
        for x in edge_b..edge_a {
            step(out, &mut acc, x, last, 0, last);
        }
        for x in edge_a..=last {
            step(out, &mut acc, x, last, x - radius - 1, last);
        }
    }
}

/// The fixed-point taps of one box pass of `GaussianBlur(radius = sigma)`: the integer
/// radius `r`, the weight `ww` of the `2r + 1` pixels of the box and the weight `fw` of the
/// two pixels just outside it (out of `1 << 24`). `None` when Pillow leaves the image as is.
/// Shared with the batched device path so both build the very same kernel.
pub fn box_blur_taps(sigma: f32) -> Option<(usize, u32, u32)> {
    if sigma <= 0.0 {
        return None;
    }
    let radius = box_radius(sigma, 3);
    (radius != 0.0).then(|| box_weights(radius))
}

fn box_weights(radius: f32) -> (usize, u32, u32) {
    let r = radius as usize;
    let ww = (16_777_216.0f32 / (radius * 2.0 + 1.0)) as u32;
    let fw = ((1u32 << 24) - (r as u32 * 2 + 1) * ww) / 2;
    (r, ww, fw)
}

/// Three box passes along every row of a `w x h` image, ping-ponging with `tmp`.
fn blur_rows(px: &mut [u8], tmp: &mut [u8], w: usize, radius: f32) {
    let (r, ww, fw) = box_weights(radius);
    for (row, trow) in px.chunks_exact_mut(3 * w).zip(tmp.chunks_exact_mut(3 * w)) {
        box_line(row, trow, r, (ww, fw));
        box_line(trow, row, r, (ww, fw));
        box_line(row, trow, r, (ww, fw));
        row.copy_from_slice(trow);
    }
}

/// Transposes a `w x h` RGB image into `dst` (`h x w`).
fn transpose(src: &[u8], dst: &mut [u8], w: usize, h: usize) {
    for y in 0..h {
        for x in 0..w {
            let s = (y * w + x) * 3;
            let d = (x * h + y) * 3;
            dst[d..d + 3].copy_from_slice(&src[s..s + 3]);
        }
    }
}

/// `img.filter(ImageFilter.GaussianBlur(radius=sigma))` as Pillow computes it: three passes
/// of a fractional box blur horizontally, then vertically. `scratch` is reused storage.
pub fn gaussian_blur(px: &mut [u8], w: usize, h: usize, sigma: f32, scratch: &mut Vec<u8>) {
    if sigma <= 0.0 || w == 0 || h == 0 {
        return;
    }
    let radius = box_radius(sigma, 3);
    if radius == 0.0 {
        return;
    }
    scratch.resize(2 * px.len(), 0);
    let (t, tmp) = scratch.split_at_mut(px.len());
    blur_rows(px, tmp, w, radius);
    transpose(px, t, w, h);
    blur_rows(t, tmp, h, radius);
    transpose(t, px, h, w);
}

/// `ToTensor()` + `Normalize(mean, std)` lookup: `(v / 255 - mean[c]) / std[c]` in `f32`,
/// bit-identical to torch's float32 ops.
#[derive(Clone, Debug)]
pub struct Normalizer {
    lut: [[f32; 256]; 3],
}

impl Normalizer {
    pub fn new(mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            lut: std::array::from_fn(|c| {
                std::array::from_fn(|v| (v as f32 / 255.0 - mean[c]) / std[c])
            }),
        }
    }

    /// Interleaved HWC bytes to planar CHW floats (`out.len() == px.len()`).
    pub fn to_chw(&self, px: &[u8], out: &mut [f32]) {
        let plane = px.len() / 3;
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, p) in px.chunks_exact(3).enumerate() {
            r[i] = self.lut[0][p[0] as usize];
            g[i] = self.lut[1][p[1] as usize];
            b[i] = self.lut[2][p[2] as usize];
        }
    }
}

/// Interleaved HWC bytes to planar CHW bytes (the deferred-photometric output).
pub fn hwc_to_chw(px: &[u8], out: &mut [u8]) {
    let plane = px.len() / 3;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, p) in px.chunks_exact(3).enumerate() {
        r[i] = p[0];
        g[i] = p[1];
        b[i] = p[2];
    }
}
