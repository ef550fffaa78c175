//! Last-block CLS attention maps, as the official `visualize_attention.py` shows them.
//!
//! The attention of the CLS token to the patches of one head is a vector over the
//! `grid_h x grid_w` patches (row-major). The official thresholded mask keeps the smallest
//! set of patches holding `threshold` of the attention mass: sort ascending, normalise by
//! the total, cumulative sum, keep the patches whose cumulative share exceeds
//! `1 - threshold`.

/// The official mask of one head's attention over the patches (`true` = kept).
///
/// Ties are sorted stably (the earlier patch counts as smaller).
pub fn threshold_mask(attn: &[f32], threshold: f32) -> Vec<bool> {
    let mut order: Vec<usize> = (0..attn.len()).collect();
    order.sort_by(|&a, &b| attn[a].total_cmp(&attn[b]));
    let total: f32 = attn.iter().sum();
    let mut keep = vec![false; attn.len()];
    let mut cum = 0f32;
    for &i in &order {
        cum += attn[i] / total;
        keep[i] = cum > 1.0 - threshold;
    }
    keep
}

/// Mean over heads of `[heads, n]` attention.
pub fn mean_over_heads(attn: &[f32], heads: usize) -> Vec<f32> {
    let n = attn.len() / heads.max(1);
    (0..n)
        .map(|i| (0..heads).map(|h| attn[h * n + i]).sum::<f32>() / heads as f32)
        .collect()
}

/// Rescales to [0, 1] by the minimum and maximum (a constant map becomes zeros).
pub fn min_max_normalise(v: &[f32]) -> Vec<f32> {
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    let span = hi - lo;
    v.iter()
        .map(|&x| if span > 0.0 { (x - lo) / span } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_smallest_set_holding_the_mass() {
        // Shares 0.5, 0.3, 0.1, 0.1: 60% needs the 0.5 and the 0.3.
        let m = threshold_mask(&[0.1, 0.5, 0.1, 0.3], 0.6);
        assert_eq!(m, vec![false, true, false, true]);
        // Shares 0.1, 0.3, 0.6: the top patch alone holds 55%, 65% needs the next one.
        let m = threshold_mask(&[1.0, 3.0, 6.0], 0.55);
        assert_eq!(m, vec![false, false, true]);
        let m = threshold_mask(&[1.0, 3.0, 6.0], 0.65);
        assert_eq!(m, vec![false, true, true]);
    }

    #[test]
    fn mean_and_normalise() {
        let m = mean_over_heads(&[1.0, 2.0, 3.0, 4.0], 2);
        assert_eq!(m, vec![2.0, 3.0]);
        assert_eq!(min_max_normalise(&[1.0, 3.0, 2.0]), vec![0.0, 1.0, 0.5]);
        assert_eq!(min_max_normalise(&[2.0, 2.0]), vec![0.0, 0.0]);
    }
}
