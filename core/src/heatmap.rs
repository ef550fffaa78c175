//! Patch maps drawn over images: the colour map, nearest-neighbour upsampling of a patch
//! grid to pixels (as the official `visualize_attention.py` does with
//! `interpolate(scale_factor=patch, mode="nearest")`), heatmaps, overlays and masks.
//!
//! Shared by `dino-run attention` (ONNX Runtime) and `dino-train attention` (libtorch).

use image::{Rgb, RgbImage};

use crate::attention::{min_max_normalise, threshold_mask};

/// Colour map control points (approximately viridis: dark blue to yellow).
const CMAP: [[f32; 3]; 5] = [
    [68.0, 1.0, 84.0],
    [59.0, 82.0, 139.0],
    [33.0, 145.0, 140.0],
    [94.0, 201.0, 98.0],
    [253.0, 231.0, 37.0],
];

/// The colour of `v` in [0, 1] (clamped).
pub fn colour(v: f32) -> Rgb<u8> {
    let x = v.clamp(0.0, 1.0) * (CMAP.len() - 1) as f32;
    let i = (x.floor() as usize).min(CMAP.len() - 2);
    let f = x - i as f32;
    Rgb(std::array::from_fn(|c| {
        (CMAP[i][c] + (CMAP[i + 1][c] - CMAP[i][c]) * f).round() as u8
    }))
}

/// A `rows x cols` grid of `patch`-pixel squares laid over an image from its top-left
/// corner; pixels beyond the last full patch repeat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchGrid {
    pub rows: usize,
    pub cols: usize,
    pub patch: usize,
}

impl PatchGrid {
    /// The grid of full patches of a `width x height` image.
    pub fn of_image(width: u32, height: u32, patch: usize) -> Self {
        let p = patch.max(1);
        Self {
            rows: height as usize / p,
            cols: width as usize / p,
            patch: p,
        }
    }

    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index (row-major) of the patch under pixel `(x, y)`; the grid must not be empty.
    pub fn index(&self, x: u32, y: u32) -> usize {
        let r = (y as usize / self.patch).min(self.rows - 1);
        let c = (x as usize / self.patch).min(self.cols - 1);
        r * self.cols + c
    }

    /// Nearest-neighbour upsampling of a patch map to `width x height` pixels (row-major).
    pub fn upsample(&self, v: &[f32], width: u32, height: u32) -> Vec<f32> {
        (0..height)
            .flat_map(|y| (0..width).map(move |x| v[self.index(x, y)]))
            .collect()
    }

    /// The min-max scaled heatmap of patch map `v` at `width x height` pixels.
    pub fn heatmap(&self, v: &[f32], width: u32, height: u32) -> RgbImage {
        let n = min_max_normalise(v);
        RgbImage::from_fn(width, height, |x, y| colour(n[self.index(x, y)]))
    }

    /// The heatmap of `v` blended over `img`: `alpha` of the heatmap, `1 - alpha` of the
    /// image.
    pub fn overlay(&self, img: &RgbImage, v: &[f32], alpha: f32) -> RgbImage {
        let heat = self.heatmap(v, img.width(), img.height());
        blend(img, &heat, alpha)
    }

    /// `img` with the patches outside the official thresholded mask of `v` darkened.
    pub fn masked(&self, img: &RgbImage, v: &[f32], threshold: f32) -> RgbImage {
        let keep = threshold_mask(v, threshold);
        self.show_kept(img, &keep)
    }

    /// `img` with the patches where `keep` is false darkened to a quarter.
    pub fn show_kept(&self, img: &RgbImage, keep: &[bool]) -> RgbImage {
        RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let p = img.get_pixel(x, y).0;
            if keep[self.index(x, y)] {
                Rgb(p)
            } else {
                Rgb(p.map(|c| c / 4))
            }
        })
    }
}

/// `alpha * top + (1 - alpha) * bottom`, pixel by pixel (images of the same size).
pub fn blend(bottom: &RgbImage, top: &RgbImage, alpha: f32) -> RgbImage {
    let a = alpha.clamp(0.0, 1.0);
    RgbImage::from_fn(bottom.width(), bottom.height(), |x, y| {
        let (b, t) = (bottom.get_pixel(x, y).0, top.get_pixel(x, y).0);
        Rgb(std::array::from_fn(|c| {
            (f32::from(t[c]) * a + f32::from(b[c]) * (1.0 - a)).round() as u8
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_repeats_patches_and_the_border() {
        let g = PatchGrid::of_image(5, 4, 2);
        assert_eq!((g.rows, g.cols, g.len()), (2, 2, 4));
        let up = g.upsample(&[1.0, 2.0, 3.0, 4.0], 5, 4);
        assert_eq!(&up[..5], &[1.0, 1.0, 2.0, 2.0, 2.0]);
        assert_eq!(&up[15..], &[3.0, 3.0, 4.0, 4.0, 4.0]);
    }

    #[test]
    fn heatmap_overlay_and_mask() {
        let g = PatchGrid::of_image(4, 4, 2);
        let v = [0.1, 0.2, 0.3, 0.4];
        let h = g.heatmap(&v, 4, 4);
        assert_eq!(*h.get_pixel(0, 0), colour(0.0));
        assert_eq!(*h.get_pixel(3, 3), colour(1.0));
        let img = RgbImage::from_pixel(4, 4, Rgb([100, 100, 100]));
        assert_eq!(g.overlay(&img, &v, 0.0), img);
        assert_eq!(*g.overlay(&img, &v, 1.0).get_pixel(3, 3), colour(1.0));
        // 60% of the mass: 0.4 and 0.3 (bottom row).
        let m = g.masked(&img, &v, 0.6);
        assert_eq!(*m.get_pixel(0, 0), Rgb([25, 25, 25]));
        assert_eq!(*m.get_pixel(0, 3), Rgb([100, 100, 100]));
    }
}
