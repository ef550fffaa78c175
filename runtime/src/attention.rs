//! Attention maps rendered as one PNG montage.
//!
//! Tiles are `crop_size` squares, patch values upsampled by nearest neighbour (as the
//! official `visualize_attention.py`):
//!
//! ```text
//! row 1: input crop | mean attention | mean attention, thresholded mask
//! row 2: head 0 attention | head 1 attention | ...
//! row 3: head 0 mask      | head 1 mask      | ...
//! ```
//!
//! Heatmaps use a perceptual dark-blue-to-yellow colour map after min-max scaling; masks
//! show the kept patches of the input and darken the rest.

use dino_core::attention::mean_over_heads;
use dino_core::heatmap::PatchGrid;
use image::{Rgb, RgbImage};

/// Gap between tiles, in pixels.
const GAP: u32 = 4;

/// The per-head attention of one image and how it maps onto the crop.
pub struct AttentionMaps<'a> {
    /// `[heads, grid_h * grid_w]`, CLS-to-patch attention of the last block.
    pub attention: &'a [f32],
    pub heads: usize,
    pub patch_size: usize,
    /// The input crop the model saw.
    pub crop: &'a RgbImage,
    /// Share of the attention mass the masks keep (the official 0.6).
    pub threshold: f32,
}

/// The official share of attention mass the masks keep.
pub const DEFAULT_THRESHOLD: f32 = 0.6;

/// Checks a mask threshold (a share of the attention mass).
pub fn check_threshold(t: f32) -> Result<(), String> {
    if !(0.0..=1.0).contains(&t) {
        return Err(format!("threshold must be in [0, 1], got {t}"));
    }
    Ok(())
}

/// The montage of one image's `attention` output (`[heads, patches]` values, `heads` from
/// the output's shape) on its eval `crop`, as PNG bytes.
pub fn montage_png(
    attention: &[f32],
    heads: usize,
    patch_size: usize,
    crop: &RgbImage,
    threshold: f32,
) -> Result<Vec<u8>, String> {
    let maps = AttentionMaps {
        attention,
        heads,
        patch_size,
        crop,
        threshold,
    };
    maps.check()?;
    let mut png = Vec::new();
    maps.render()
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| format!("encoding the PNG: {e}"))?;
    Ok(png)
}

impl AttentionMaps<'_> {
    fn grid(&self) -> (usize, usize) {
        let g = self.patch_grid();
        (g.rows, g.cols)
    }

    fn patch_grid(&self) -> PatchGrid {
        PatchGrid::of_image(self.crop.width(), self.crop.height(), self.patch_size)
    }

    fn heatmap(&self, v: &[f32]) -> RgbImage {
        self.patch_grid()
            .heatmap(v, self.crop.width(), self.crop.height())
    }

    fn masked(&self, v: &[f32]) -> RgbImage {
        self.patch_grid().masked(self.crop, v, self.threshold)
    }

    /// Checks that the attention has `heads * grid` values.
    pub fn check(&self) -> Result<(), String> {
        let (gh, gw) = self.grid();
        if gh == 0 || gw == 0 || self.heads == 0 || self.attention.len() != self.heads * gh * gw {
            return Err(format!(
                "attention has {} values, expected {} heads x {gh}x{gw} patches",
                self.attention.len(),
                self.heads
            ));
        }
        Ok(())
    }

    /// The montage described in the module documentation.
    pub fn render(&self) -> RgbImage {
        let n = self.attention.len() / self.heads;
        let per_head: Vec<&[f32]> = self.attention.chunks_exact(n).collect();
        let mean = mean_over_heads(self.attention, self.heads);
        let rows: Vec<Vec<RgbImage>> = vec![
            vec![self.crop.clone(), self.heatmap(&mean), self.masked(&mean)],
            per_head.iter().map(|h| self.heatmap(h)).collect(),
            per_head.iter().map(|h| self.masked(h)).collect(),
        ];
        let (tw, th) = (self.crop.width(), self.crop.height());
        let cols = rows.iter().map(Vec::len).max().unwrap_or(1) as u32;
        let mut out = RgbImage::from_pixel(
            cols * tw + (cols - 1) * GAP,
            rows.len() as u32 * th + (rows.len() as u32 - 1) * GAP,
            Rgb([255, 255, 255]),
        );
        for (r, row) in rows.iter().enumerate() {
            for (c, tile) in row.iter().enumerate() {
                let (x0, y0) = (c as u32 * (tw + GAP), r as u32 * (th + GAP));
                image::imageops::replace(&mut out, tile, i64::from(x0), i64::from(y0));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino_core::heatmap::colour;

    #[test]
    fn montage_layout_and_colours() {
        let crop = RgbImage::from_pixel(8, 8, Rgb([200, 100, 40]));
        let attention: Vec<f32> = (0..3 * 4).map(|i| i as f32).collect();
        let maps = AttentionMaps {
            attention: &attention,
            heads: 3,
            patch_size: 4,
            crop: &crop,
            threshold: 0.6,
        };
        maps.check().unwrap();
        let img = maps.render();
        assert_eq!(img.dimensions(), (3 * 8 + 2 * GAP, 3 * 8 + 2 * GAP));
        // Head 0, highest patch (bottom right) is the top of the colour map.
        assert_eq!(*img.get_pixel(7, 8 + GAP + 7), colour(1.0));
        assert_eq!(colour(0.0), Rgb([68, 1, 84]));
        let bad = AttentionMaps {
            attention: &attention[..5],
            ..maps
        };
        assert!(bad.check().is_err());
    }
}
