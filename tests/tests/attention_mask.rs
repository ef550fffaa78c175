//! The official thresholded mask (`dino_core::attention::threshold_mask`) keeps the
//! smallest set of patches whose attention sums to at least `threshold` of the total:
//! checked on hand-made maps against an exhaustive search over every subset.

use dino_core::attention::threshold_mask;
use dino_core::heatmap::PatchGrid;
use image::{Rgb, RgbImage};

/// Size of the smallest subset of `attn` whose share of the total is at least `threshold`.
fn smallest_subset(attn: &[f32], threshold: f32) -> usize {
    let total: f64 = attn.iter().map(|&a| f64::from(a)).sum();
    (0u32..1 << attn.len())
        .filter(|mask| {
            let kept: f64 = (0..attn.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| f64::from(attn[i]))
                .sum();
            kept / total >= f64::from(threshold)
        })
        .map(u32::count_ones)
        .min()
        .unwrap() as usize
}

#[test]
fn keeps_the_smallest_set_holding_the_threshold() {
    // A hand-made 3x3 map: shares 0.30, 0.20, 0.15, 0.10, 0.08, 0.07, 0.05, 0.03, 0.02.
    let map = [0.05, 0.30, 0.02, 0.15, 0.20, 0.07, 0.03, 0.10, 0.08];
    for (threshold, expected) in [
        // 0.30 alone.
        (0.25, vec![1]),
        // 0.30 + 0.20 = 0.50 < 0.6, + 0.15 = 0.65.
        (0.6, vec![1, 3, 4]),
        (0.7, vec![1, 3, 4, 7]),
        // 0.83 with five patches is short of 0.88: six are needed.
        (0.88, vec![1, 3, 4, 5, 7, 8]),
        (1.0, (0..9).collect()),
    ] {
        let keep = threshold_mask(&map, threshold);
        let kept: Vec<usize> = (0..9).filter(|&i| keep[i]).collect();
        assert_eq!(kept, expected, "threshold {threshold}");
        assert_eq!(kept.len(), smallest_subset(&map, threshold));
        let share: f32 = kept.iter().map(|&i| map[i]).sum();
        assert!(share >= threshold - 1e-6, "threshold {threshold}: {share}");
    }
}

#[test]
fn scale_does_not_matter_and_masks_draw_on_patches() {
    // Unnormalised attention (e.g. CLS-to-CLS share still included) gives the same mask.
    let map = [5.0, 30.0, 2.0, 15.0, 20.0, 7.0, 3.0, 10.0, 8.0];
    let scaled: Vec<f32> = map.iter().map(|a| a * 0.37).collect();
    assert_eq!(threshold_mask(&map, 0.6), threshold_mask(&scaled, 0.6));
    // 3x3 patches of 2 pixels on a 7x6 image (the last column repeats the last patch).
    let img = RgbImage::from_pixel(7, 6, Rgb([200, 120, 40]));
    let grid = PatchGrid::of_image(7, 6, 2);
    let masked = grid.masked(&img, &map, 0.6);
    let kept = Rgb([200, 120, 40]);
    let dark = Rgb([50, 30, 10]);
    // Patch 1 (row 0, col 1) kept, patch 0 not, patch 4 (centre) kept, patch 8 not.
    assert_eq!(*masked.get_pixel(2, 0), kept);
    assert_eq!(*masked.get_pixel(0, 0), dark);
    assert_eq!(*masked.get_pixel(3, 3), kept);
    assert_eq!(*masked.get_pixel(6, 5), dark);
}
