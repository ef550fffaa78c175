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

use dino_core::attention::{mean_over_heads, min_max_normalise, threshold_mask};
use image::{Rgb, RgbImage};

/// Gap between tiles, in pixels.
const GAP: u32 = 4;

/// Colour map control points (approximately viridis).
const CMAP: [[f32; 3]; 5] = [
    [68.0, 1.0, 84.0],
    [59.0, 82.0, 139.0],
    [33.0, 145.0, 140.0],
    [94.0, 201.0, 98.0],
    [253.0, 231.0, 37.0],
];

fn colour(v: f32) -> Rgb<u8> {
    let x = v.clamp(0.0, 1.0) * (CMAP.len() - 1) as f32;
    let i = (x.floor() as usize).min(CMAP.len() - 2);
    let f = x - i as f32;
    Rgb(std::array::from_fn(|c| {
        (CMAP[i][c] + (CMAP[i + 1][c] - CMAP[i][c]) * f).round() as u8
    }))
}

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

impl AttentionMaps<'_> {
    fn grid(&self) -> (usize, usize) {
        let (w, h) = (self.crop.width() as usize, self.crop.height() as usize);
        (h / self.patch_size, w / self.patch_size)
    }

    /// Value of patch map `v` at crop pixel `(x, y)` (nearest; the border beyond the last
    /// full patch repeats it).
    fn at(&self, v: &[f32], x: u32, y: u32) -> f32 {
        let (gh, gw) = self.grid();
        let r = (y as usize / self.patch_size).min(gh - 1);
        let c = (x as usize / self.patch_size).min(gw - 1);
        v[r * gw + c]
    }

    fn heatmap(&self, v: &[f32]) -> RgbImage {
        let n = min_max_normalise(v);
        RgbImage::from_fn(self.crop.width(), self.crop.height(), |x, y| {
            colour(self.at(&n, x, y))
        })
    }

    fn masked(&self, v: &[f32]) -> RgbImage {
        let keep: Vec<f32> = threshold_mask(v, self.threshold)
            .into_iter()
            .map(|k| if k { 1.0 } else { 0.0 })
            .collect();
        RgbImage::from_fn(self.crop.width(), self.crop.height(), |x, y| {
            let p = self.crop.get_pixel(x, y).0;
            if self.at(&keep, x, y) > 0.5 {
                Rgb(p)
            } else {
                Rgb(p.map(|c| c / 4))
            }
        })
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
