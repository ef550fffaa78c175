//! `dino-train attention`: the last block's CLS-to-patch self-attention of a teacher, as
//! the official `visualize_attention.py` shows it.
//!
//! Per image: resize so the shorter side is `img_size` (aspect kept; PIL-exact bicubic),
//! crop the bottom/right remainder so both sides are multiples of the patch size (and the
//! longer at most `MAX_ASPECT` times the shorter), normalise
//! with the checkpoint's eval mean/std (ImageNet's when absent), run the ViT at that size
//! (position embeddings interpolated) and take `attn[0, :, 0, 1:]` of the last block. Each
//! head's map is renormalised to sum to 1 over the patches (the CLS-to-CLS share removed;
//! masks and min-max heatmaps do not change). Written into `<out>/<image stem>/`:
//!
//! | file | content |
//! | --- | --- |
//! | `img.png` | the crop the model saw |
//! | `attn-head{j}.png`, `attn-mean.png` | heatmap of head `j` / of the mean over heads, over the crop |
//! | `mask-head{j}.png`, `mask-mean.png` | the official thresholded mask: patches holding `threshold` of the mass kept, the rest darkened |
//! | `attention.npy` | the per-head maps before upsampling, f32 `[heads, rows, cols]` |

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dino_core::attention::mean_over_heads;
use dino_core::heatmap::PatchGrid;
use dino_core::image_io::{has_image_extension, load_rgb};
use dino_core::preprocess::{Window, normalize_into, resize_bicubic_window, resized_size};
use dino_core::{CoreError, EvalTransform};
use dino_models::VisionTransformer;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use tch::{Device, Kind, Tensor};
use thiserror::Error;

/// Share of the heatmap in the overlays.
const OVERLAY_ALPHA: f32 = 0.6;

#[derive(Debug, Error)]
pub enum AttentionError {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("cannot load {path}: {source}")]
    Model {
        path: PathBuf,
        source: Box<dino_models::ModelError>,
    },
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> AttentionError {
    AttentionError::Io {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

/// What `dino-train attention` was asked for.
#[derive(Clone, Debug)]
pub struct AttentionOptions {
    /// Shorter side of the resized image.
    pub img_size: usize,
    /// Share of the attention mass the masks keep (official: 0.6).
    pub threshold: f32,
    pub quiet: bool,
}

/// CLS-to-patch attention of the last block for one image.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadMaps {
    pub heads: usize,
    pub grid: PatchGrid,
    /// `[heads, rows * cols]`, row-major; each head sums to 1.
    pub values: Vec<f32>,
}

impl HeadMaps {
    pub fn head(&self, j: usize) -> &[f32] {
        let n = self.grid.len();
        &self.values[j * n..(j + 1) * n]
    }
}

/// Longest side of the attention input, in multiples of its shorter side. Tokens, and the
/// attention matrix with their square, grow with the long side: a 1 x 100,000 image would
/// otherwise ask for terabytes. Longer images are cropped (from the top left, as the
/// patch-multiple crop is).
pub const MAX_ASPECT: u32 = 4;

/// The model input of `img`: the crop (shorter side `img_size`, sides multiples of
/// `patch`, the longer at most [`MAX_ASPECT`] times the shorter) and its normalised CHW
/// values.
pub fn prepare(
    img: &RgbImage,
    img_size: usize,
    patch: usize,
    mean: &[f32; 3],
    std: &[f32; 3],
) -> Result<(RgbImage, Vec<f32>), AttentionError> {
    let (w, h) = resized_size(img.width(), img.height(), img_size as u32);
    let p = patch as u32;
    let long = (img_size as u32).saturating_mul(MAX_ASPECT);
    let (cw, ch) = (w.min(long), h.min(long));
    let (cw, ch) = (cw - cw % p, ch - ch % p);
    if cw == 0 || ch == 0 {
        return Err(AttentionError::Invalid(format!(
            "a {}x{} image resized to {w}x{h} is smaller than one {patch}-pixel patch: raise --img-size",
            img.width(),
            img.height()
        )));
    }
    let win = Window {
        x: 0,
        y: 0,
        width: cw,
        height: ch,
    };
    let crop = resize_bicubic_window(img, w, h, win);
    let mut chw = vec![0f32; 3 * (cw * ch) as usize];
    normalize_into(&crop, mean, std, &mut chw);
    Ok((crop, chw))
}

/// Last-block CLS-to-patch attention of the `[1, 3, h, w]` input `x` (any size that is a
/// multiple of the patch size).
pub fn cls_attention(model: &VisionTransformer, x: &Tensor) -> Result<HeadMaps, AttentionError> {
    let (_, _, h, w) = x.size4()?;
    let patch = model.cfg.patch_size;
    let grid = PatchGrid::of_image(w as u32, h as u32, patch);
    let attn = tch::no_grad(|| model.get_last_selfattention(x));
    let (_, heads, tokens, _) = attn.size4()?;
    if tokens as usize != 1 + grid.len() {
        return Err(AttentionError::Invalid(format!(
            "attention has {tokens} tokens, expected 1 + {} patches",
            grid.len()
        )));
    }
    // [heads, n]: CLS row, patch columns, renormalised over the patches.
    let cls = attn
        .get(0)
        .select(1, 0)
        .narrow(1, 1, tokens - 1)
        .to_kind(Kind::Float);
    let cls = &cls / cls.sum_dim_intlist(1, true, Kind::Float);
    let values = Vec::<f32>::try_from(cls.to_device(Device::Cpu).flatten(0, -1))?;
    Ok(HeadMaps {
        heads: heads as usize,
        grid,
        values,
    })
}

/// The images `input` names: itself, or the image files of a folder (sorted, not
/// recursive).
pub fn list_images(input: &Path) -> Result<Vec<PathBuf>, AttentionError> {
    if !input.is_dir() {
        if !input.exists() {
            return Err(io_err(input, "no such file or folder"));
        }
        return Ok(vec![input.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)
        .map_err(|e| io_err(input, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && has_image_extension(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(io_err(input, "no image files (jpg, jpeg, png, webp, bmp)"));
    }
    let mut stems = BTreeSet::new();
    for f in &files {
        if !stems.insert(stem(f)) {
            return Err(io_err(
                f,
                "another image has the same name: outputs would collide",
            ));
        }
    }
    Ok(files)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned())
}

/// Writes the files of the module documentation for one image into `dir`.
pub fn write_maps(
    dir: &Path,
    crop: &RgbImage,
    maps: &HeadMaps,
    threshold: f32,
) -> Result<(), AttentionError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let save = |img: &RgbImage, name: &str| {
        let p = dir.join(name);
        img.save(&p).map_err(|e| io_err(&p, e))
    };
    save(crop, "img.png")?;
    let g = maps.grid;
    let mean = mean_over_heads(&maps.values, maps.heads);
    for j in 0..maps.heads {
        let v = maps.head(j);
        save(
            &g.overlay(crop, v, OVERLAY_ALPHA),
            &format!("attn-head{j}.png"),
        )?;
        save(&g.masked(crop, v, threshold), &format!("mask-head{j}.png"))?;
    }
    save(&g.overlay(crop, &mean, OVERLAY_ALPHA), "attn-mean.png")?;
    save(&g.masked(crop, &mean, threshold), "mask-mean.png")?;
    let npy = dir.join("attention.npy");
    std::fs::write(&npy, npy_f32(&[maps.heads, g.rows, g.cols], &maps.values))
        .map_err(|e| io_err(&npy, e))
}

/// A NumPy `.npy` (format 1.0) of little-endian f32 in C order.
pub fn npy_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * values.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    values
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out
}

/// Renders the attention of every image `input` names into `out/<stem>/`, returning the
/// folders written.
pub fn run(
    checkpoint: &Path,
    input: &Path,
    out: &Path,
    opts: &AttentionOptions,
    device: Device,
) -> Result<Vec<PathBuf>, AttentionError> {
    if !(opts.threshold > 0.0 && opts.threshold <= 1.0) {
        return Err(AttentionError::Invalid(format!(
            "--threshold {} must be in (0, 1]",
            opts.threshold
        )));
    }
    let images = list_images(input)?;
    let loaded = dino_models::io::load_backbone(checkpoint, device).map_err(|source| {
        AttentionError::Model {
            path: checkpoint.to_path_buf(),
            source: Box::new(source),
        }
    })?;
    let model = &loaded.model;
    let patch = model.cfg.patch_size;
    if opts.img_size < patch {
        return Err(AttentionError::Invalid(format!(
            "--img-size {} is smaller than the patch size {patch}",
            opts.img_size
        )));
    }
    let t = loaded
        .eval
        .clone()
        .unwrap_or_else(|| EvalTransform::standard(model.cfg.img_size));
    let bar = if opts.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(images.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("attention [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut written = Vec::with_capacity(images.len());
    for path in &images {
        bar.set_message(stem(path));
        let img = load_rgb(path)?;
        let (crop, chw) = prepare(&img, opts.img_size, patch, &t.mean, &t.std)?;
        let x = Tensor::from_slice(&chw)
            .view([1, 3, i64::from(crop.height()), i64::from(crop.width())])
            .to_device(device);
        let maps = cls_attention(model, &x)?;
        let dir = out.join(stem(path));
        write_maps(&dir, &crop, &maps, opts.threshold)?;
        written.push(dir);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned() {
        let b = npy_f32(&[2, 3, 4], &[0.0; 24]);
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(b.len(), 10 + hlen + 96);
        assert!(
            std::str::from_utf8(&b[10..10 + hlen])
                .unwrap()
                .contains("(2, 3, 4)")
        );
    }

    #[test]
    fn prepare_crops_to_patch_multiples() {
        let img = RgbImage::from_pixel(100, 50, image::Rgb([255, 0, 0]));
        let (crop, chw) = prepare(&img, 30, 8, &[0.0; 3], &[1.0; 3]).unwrap();
        // 100x50 -> 60x30 -> 56x24.
        assert_eq!(crop.dimensions(), (56, 24));
        assert_eq!(chw.len(), 3 * 56 * 24);
        assert!(prepare(&img, 30, 64, &[0.0; 3], &[1.0; 3]).is_err());
        // 1 x 100,000 -> 30 x 3,000,000, cropped to 30 x 120 -> 24 x 120.
        let tall = RgbImage::from_pixel(1, 100_000, image::Rgb([0, 9, 0]));
        let (crop, _) = prepare(&tall, 30, 8, &[0.0; 3], &[1.0; 3]).unwrap();
        assert_eq!(crop.dimensions(), (24, 120));
    }
}
