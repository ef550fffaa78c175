//! The photometric half of the DINO augmentation (colour jitter, grayscale, Gaussian blur,
//! solarize, normalisation) as batched tensor ops on the training device.
//!
//! Why: on CUDA the CPU workers cannot both decode/crop and run the PIL-exact colour ops fast
//! enough to feed the GPU. With [`Photometric::Deferred`](super::Photometric::Deferred) the
//! workers stop after crop + resize + flip, and this module applies the sampled
//! [`PhotometricParams`] of one resolution at once. All per-view decisions travel in one
//! small `f32` tensor (one upload per call); branches become identity factors, masks or
//! host-known index subsets, so there are no per-view kernels and no host syncs. The hue
//! round trip is two gathers from tables of all 2^24 colours (built once, 128 MiB).
//!
//! The semantics are those of [`apply_photometric`](super::augment::apply_photometric) +
//! [`Normalizer`](super::color::Normalizer), with PIL's uint8 quantisation after every op
//! (truncating blends, rounded box-blur passes, 8-bit HSV through the CPU path's own
//! functions). Pixels are integer-valued `f32` throughout, so the result matches the CPU path
//! except for rare float-rounding ties (`tests/device_photometric.rs` states the figures).

use tch::{Device, Kind, Tensor};

use super::augment::{JitterOp, PhotometricParams};
use super::{DataError, color};

/// The weight of the red channel in a packed 24-bit colour key (green: 2^8, blue: 1).
const TWO_16: f64 = (1u32 << 16) as f64;

/// Columns of the per-view parameter rows: 4 blend factors (one per jitter round), 4
/// "blend with mean luma" flags, 4 "blend with pixel luma" flags, hue shift, grayscale,
/// solarize, then the taps of one box-blur pass.
const FACTOR: i64 = 0;
const IS_CONTRAST: i64 = 4;
const IS_SATURATION: i64 = 8;
const HUE_SHIFT: i64 = 12;
const GRAY: i64 = 13;
const SOLARIZE: i64 = 14;
const TAPS: i64 = 15;

/// Pillow's luma weights in 16-bit fixed point (see [`color::luma`]).
const LUMA: [f64; 3] = [19595.0, 38470.0, 7471.0];

/// The photometric stage for one normalisation (mean / std), bound to a device.
#[derive(Debug)]
pub struct DevicePhotometric {
    device: Device,
    mean: Tensor,    // [1, 3, 1, 1]
    std: Tensor,     // [1, 3, 1, 1]
    luma: Tensor,    // [1, 3, 1, 1]
    rgb_key: Tensor, // [1, 3, 1, 1]: 2^16, 2^8, 1
    /// [`color::hsv_round_trip_tables`] on the device (2 x 64 MiB), made at the first hue.
    hue_tables: std::cell::OnceCell<(Tensor, Tensor)>,
}

/// The parameters of one call, packed on the host.
struct Packed {
    /// `n` rows of `cols` values, then the hue view indices of rounds 0..4, then the
    /// indices of the views that blur.
    data: Vec<f32>,
    cols: i64,
    /// Length of the blur kernel of one pass (0 when no view blurs).
    taps: i64,
    /// How many views blur (only those are convolved).
    blurred: usize,
    hue_rounds: [usize; 4],
    /// Per round: some view blends with the mean luma / with the pixel luma / at all.
    luma_rounds: [(bool, bool, bool); 4],
    any_gray: bool,
    any_solarize: bool,
}

fn pack(params: &[PhotometricParams]) -> Packed {
    let blur: Vec<_> = params
        .iter()
        .map(|p| p.blur_sigma.and_then(color::box_blur_taps))
        .collect();
    let rmax = blur.iter().flatten().map(|b| b.0).max();
    let taps = rmax.map_or(0, |r| 2 * r + 3);
    let cols = TAPS as usize + taps;
    let mut data = vec![0f32; params.len() * cols];
    let mut hue: [Vec<f32>; 4] = Default::default();
    let mut luma_rounds = [(false, false, false); 4];
    for (k, (p, row)) in params.iter().zip(data.chunks_exact_mut(cols)).enumerate() {
        row[..4].fill(1.0);
        if let Some(j) = p.jitter {
            for (r, op) in j.order.iter().enumerate() {
                let round = &mut luma_rounds[r];
                match op {
                    JitterOp::Brightness => row[r] = j.brightness,
                    JitterOp::Contrast => {
                        (row[r], row[IS_CONTRAST as usize + r]) = (j.contrast, 1.0);
                        round.0 = true;
                    }
                    JitterOp::Saturation => {
                        (row[r], row[IS_SATURATION as usize + r]) = (j.saturation, 1.0);
                        round.1 = true;
                    }
                    JitterOp::Hue => hue[r].push(k as f32),
                }
                round.2 |= *op != JitterOp::Hue;
            }
            // torchvision's PIL `adjust_hue`: the 8-bit hue moves by trunc(factor * 255).
            row[HUE_SHIFT as usize] = (j.hue as f64 * 255.0) as i32 as u8 as f32;
        }
        row[GRAY as usize] = p.grayscale as u8 as f32;
        row[SOLARIZE as usize] = p.solarize as u8 as f32;
        if taps > 0 {
            let kernel = &mut row[TAPS as usize..];
            let centre = taps / 2;
            match blur[k] {
                Some((r, ww, fw)) => {
                    let scale = 1.0 / 16_777_216.0;
                    for d in 0..=r {
                        kernel[centre + d] = ww as f32 * scale;
                        kernel[centre - d] = ww as f32 * scale;
                    }
                    kernel[centre + r + 1] = fw as f32 * scale;
                    kernel[centre - r - 1] = fw as f32 * scale;
                }
                None => kernel[centre] = 1.0,
            }
        }
    }
    let hue_rounds = std::array::from_fn(|r| hue[r].len());
    data.extend(hue.iter().flatten());
    let before = data.len();
    data.extend(
        (0..blur.len())
            .filter(|&k| blur[k].is_some())
            .map(|k| k as f32),
    );
    Packed {
        blurred: data.len() - before,
        data,
        cols: cols as i64,
        taps: taps as i64,
        hue_rounds,
        luma_rounds,
        any_gray: params.iter().any(|p| p.grayscale),
        any_solarize: params.iter().any(|p| p.solarize),
    }
}

impl DevicePhotometric {
    pub fn new(mean: [f32; 3], std: [f32; 3], device: Device) -> Self {
        let chan = |v: &[f32]| Tensor::from_slice(v).view([1, 3, 1, 1]).to_device(device);
        Self {
            device,
            mean: chan(&mean),
            std: chan(&std),
            luma: chan(&LUMA.map(|w| w as f32)),
            rgb_key: chan(&[TWO_16 as f32, 256.0, 1.0]),
            hue_tables: std::cell::OnceCell::new(),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Uploads a host tensor, pinned and asynchronous on CUDA (as the trainer's batches).
    pub fn upload(&self, t: Tensor) -> Result<Tensor, DataError> {
        Ok(if self.device.is_cuda() {
            // `_pin_memory` (see trainer::to_device): no deprecation warning.
            t.f_internal_pin_memory(self.device)?.f_to_device_(
                self.device,
                t.kind(),
                true,
                false,
            )?
        } else {
            t.f_to_device(self.device)?
        })
    }

    /// `crops`: `[n, 3, h, w]` uint8 RGB (or `[n, h, w, 3]`, recognised by a last dimension
    /// of 3 and a second one that is not), on this device; `params[k]` belongs to `crops[k]`.
    /// Returns the normalised `[n, 3, h, w]` `f32` views.
    pub fn apply(&self, crops: &Tensor, params: &[PhotometricParams]) -> Result<Tensor, DataError> {
        let crops = channels_first(crops)?;
        let (n, h, w) = (crops.size()[0], crops.size()[2], crops.size()[3]);
        if n as usize != params.len() {
            return Err(DataError::Config(format!(
                "{n} crops but {} photometric parameter sets",
                params.len()
            )));
        }
        if n == 0 {
            return Ok(Tensor::zeros([0, 3, h, w], (Kind::Float, self.device)));
        }
        let p = pack(params);
        let all = self.upload(Tensor::from_slice(&p.data))?;
        let rows = all.f_narrow(0, 0, n * p.cols)?.f_view([n, p.cols])?;
        let col = |c: i64| rows.f_narrow(1, c, 1)?.f_reshape([n, 1, 1, 1]);
        let mut x = crops.f_to_kind(Kind::Float)?; // [n, 3, h, w], integer-valued
        let mut hue_at = n * p.cols;
        let shift = col(HUE_SHIFT)?;
        for r in 0..4 {
            let (contrast, saturation, any) = p.luma_rounds[r];
            if any {
                x = self.blend_round(
                    &x,
                    &col(FACTOR + r as i64)?,
                    &col(IS_CONTRAST + r as i64)?,
                    &col(IS_SATURATION + r as i64)?,
                    contrast,
                    saturation,
                )?;
            }
            let m = p.hue_rounds[r] as i64;
            if m > 0 {
                let idx = all.f_narrow(0, hue_at, m)?.f_to_kind(Kind::Int64)?;
                hue_at += m;
                let sub =
                    self.adjust_hue(&x.f_index_select(0, &idx)?, &shift.f_index_select(0, &idx)?)?;
                x = x.f_index_copy(0, &idx, &sub)?;
            }
        }
        if p.any_gray {
            let gray = col(GRAY)?.f_gt(0.5)?;
            x = self.luma(&x)?.f_expand_as(&x)?.f_where_self(&gray, &x)?;
        }
        if p.taps > 0 {
            // Only the views that blur are convolved (by default only the first global view
            // always blurs).
            let idx = all
                .f_narrow(0, hue_at, p.blurred as i64)?
                .f_to_kind(Kind::Int64)?;
            let taps = rows.f_index_select(0, &idx)?.f_narrow(1, TAPS, p.taps)?;
            let y = gaussian_blur(&x.f_index_select(0, &idx)?, &taps)?;
            x = x.f_index_copy(0, &idx, &y)?;
        }
        if p.any_solarize {
            let on = col(SOLARIZE)?.f_gt(0.5)?.f_logical_and(&x.f_ge(128.0)?)?;
            x = x.f_neg()?.f_add_scalar(255.0)?.f_where_self(&on, &x)?;
        }
        // ToTensor + Normalize, in the CPU lookup table's f32 order.
        Ok(x.f_div_scalar(255.0)?.f_sub(&self.mean)?.f_div(&self.std)?)
    }

    /// Pillow's `convert("HSV")`, a wrapping shift of the 8-bit hue, `convert("RGB")`, on
    /// integer-valued `[m, 3, h, w]` pixels; `shift`: `[m, 1, 1, 1]` in 0..=255. Two gathers
    /// from the tables of the CPU path's own functions; the packing stays below 2^24, where
    /// every step is exact in `f32`.
    fn adjust_hue(&self, x: &Tensor, shift: &Tensor) -> Result<Tensor, DataError> {
        let (to_hsv, to_rgb) = match self.hue_tables.get() {
            Some(t) => t,
            None => {
                let (hsv, rgb) = color::hsv_round_trip_tables();
                let tables = (
                    self.upload(Tensor::from_slice(&hsv))?,
                    self.upload(Tensor::from_slice(&rgb))?,
                );
                self.hue_tables.get_or_init(|| tables)
            }
        };
        let split = |packed: &Tensor| -> Result<(Tensor, Tensor), DataError> {
            // (packed >> 16, packed & 0xffff)
            let hi = packed.f_div_scalar(TWO_16)?.f_floor()?;
            let lo = packed.f_sub(&hi.f_mul_scalar(TWO_16)?)?;
            Ok((hi, lo))
        };
        // [m, 1, h, w]: (r << 16) | (g << 8) | b
        let dim = [1i64];
        let key = x
            .f_mul(&self.rgb_key)?
            .f_sum_dim_intlist(dim.as_slice(), true, Kind::Float)?;
        let hsv = to_hsv.f_take(&key.f_to_kind(Kind::Int64)?)?;
        let (h, sv) = split(&hsv)?;
        let h = h.f_add(shift)?.f_remainder(256.0)?;
        let key = h.f_mul_scalar(TWO_16)?.f_add(&sv)?;
        let rgb = to_rgb.f_take(&key.f_to_kind(Kind::Int64)?)?;
        let (r, gb) = split(&rgb)?;
        let g = gb.f_div_scalar(256.0)?.f_floor()?;
        let b = gb.f_sub(&g.f_mul_scalar(256.0)?)?;
        Ok(Tensor::f_cat(&[r, g, b], 1)?)
    }

    /// Pillow's integer luma `[n, 1, h, w]` of integer-valued `[n, 3, h, w]` pixels (exact in
    /// `f32`: the weighted sum stays below 2^24).
    fn luma(&self, x: &Tensor) -> Result<Tensor, DataError> {
        let s = x
            .f_mul(&self.luma)?
            .f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?;
        Ok(s.f_add_scalar(TWO_16 / 2.0)?
            .f_div_scalar(TWO_16)?
            .f_floor()?)
    }

    /// One jitter round of the three blend ops (`ImageEnhance`): every view blends with black
    /// (brightness), its rounded mean luma (contrast) or each pixel's luma (saturation), by
    /// its factor for this round; factor 1 leaves a view exactly as it is.
    fn blend_round(
        &self,
        x: &Tensor,
        factor: &Tensor,
        is_contrast: &Tensor,
        is_saturation: &Tensor,
        contrast: bool,
        saturation: bool,
    ) -> Result<Tensor, DataError> {
        let base = if contrast || saturation {
            let luma = self.luma(x)?; // [n, 1, h, w]
            let mut base = luma.f_mul(is_saturation)?;
            if contrast {
                let (h, w) = (x.size()[2], x.size()[3]);
                let mean = luma
                    .f_sum_dim_intlist([1i64, 2, 3].as_slice(), true, Kind::Double)?
                    .f_div_scalar((h * w) as f64)?
                    .f_add_scalar(0.5)?
                    .f_floor()?
                    .f_to_kind(Kind::Float)?; // [n, 1, 1, 1]
                base = base.f_add(&mean.f_mul(is_contrast)?)?;
            }
            base
        } else {
            Tensor::zeros([1, 1, 1, 1], (Kind::Float, x.device()))
        };
        // PIL's blend: a + alpha * (b - a) in f32, clipped, truncated.
        let v = x.f_sub(&base)?.f_mul(factor)?.f_add(&base)?;
        Ok(v.f_clamp(0.0, 255.0)?.f_floor()?)
    }
}

/// Three passes of Pillow's fractional box blur along one axis: per-view kernels as a
/// grouped convolution over edge-replicated pixels, rounded to integers after each pass.
/// `kernel`: `[3n, 1, kh, kw]`; `pad`: (left, right, top, bottom) in units of `taps / 2`.
fn box_blur(x: &Tensor, kernel: &Tensor, pad: [i64; 4]) -> Result<Tensor, DataError> {
    let size = x.size();
    let (n3, half) = (3 * size[0], kernel.size()[2].max(kernel.size()[3]) / 2);
    let mut y = x.f_reshape([1, n3, size[2], size[3]])?;
    for _ in 0..3 {
        let padded = y.f_pad(pad.map(|p| p * half).as_slice(), "replicate", None::<f64>)?;
        // TF32 off (it would apply to f32 only, but the intent is full precision).
        y = padded
            .f_internal_convolution(
                kernel,
                None::<Tensor>,
                [1i64, 1].as_slice(),
                [0i64, 0].as_slice(),
                [1i64, 1].as_slice(),
                false,
                [0i64, 0].as_slice(),
                n3,
                false,
                true,
                true,
                false,
            )?
            .f_add_scalar(0.5)?
            .f_floor()?;
    }
    Ok(y.f_reshape(size.as_slice())?)
}

/// `crops` as `[n, 3, h, w]`, from that layout or `[n, h, w, 3]`.
fn channels_first(crops: &Tensor) -> Result<Tensor, DataError> {
    let size = crops.size();
    match size.as_slice() {
        [_, 3, _, _] => Ok(crops.shallow_clone()),
        [_, _, _, 3] => Ok(crops.f_permute([0, 3, 1, 2])?),
        _ => Err(DataError::Config(format!(
            "crops of shape {size:?}: expected [n, 3, h, w]"
        ))),
    }
}

/// Pillow's separable Gaussian blur of integer-valued `[m, 3, h, w]` views, each with its
/// row of `taps` `[m, t]`; returns `f32`. In f64, where every product and sum of the 24-bit
/// fixed-point taps is exact: the taps are often thirds or sixths, so exact .5 ties are
/// common and must round as Pillow's integer arithmetic does.
fn gaussian_blur(views: &Tensor, taps: &Tensor) -> Result<Tensor, DataError> {
    let (m, t) = (taps.size()[0], taps.size()[1]);
    let k = taps
        .f_to_kind(Kind::Double)?
        .f_unsqueeze(1)?
        .f_expand([m, 3, t], false)?; // [m, 3, t]
    let y = views.f_to_kind(Kind::Double)?;
    let y = box_blur(&y, &k.f_reshape([3 * m, 1, 1, t])?, [1, 1, 0, 0])?;
    let y = box_blur(&y, &k.f_reshape([3 * m, 1, t, 1])?, [0, 0, 1, 1])?;
    Ok(y.f_to_kind(Kind::Float)?)
}
