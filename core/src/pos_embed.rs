//! Position-embedding interpolation, bit-for-bit the official `interpolate_pos_encoding`.
//!
//! The official code resizes the learned `[g, g]` grid of patch position embeddings to the
//! input's patch grid with PyTorch's bicubic `interpolate(scale_factor=(h0 + 0.1) / g)`.
//! Because a `scale_factor` is given, PyTorch maps output pixel `i` to input coordinate
//! `(i + 0.5) / scale - 0.5`, not `(i + 0.5) * in / out - 0.5`; the `+0.1` only makes
//! `floor(g * scale)` land on the wanted size. Both facts change values (by up to ~0.5 for
//! small grids), so this file reproduces them exactly. The exporter uses it without
//! libtorch; the trainer calls libtorch's kernel with the same scales, and a test checks
//! the two agree.

/// The `scale_factor` the official code passes for an output grid of `out` patches from a
/// learned grid of `grid` patches.
pub fn official_scale(out: usize, grid: usize) -> f64 {
    (out as f64 + 0.1) / grid as f64
}

/// Cubic convolution weights for fractional offset `t` (Keys, A = -0.75, as PyTorch).
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let c1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [c2(t + 1.0), c1(t), c1(1.0 - t), c2(2.0 - t)]
}

/// Source index and weights of each output position along one axis.
fn axis_taps(in_size: usize, out_size: usize, scale_factor: f64) -> Vec<([usize; 4], [f32; 4])> {
    let scale = (1.0 / scale_factor) as f32;
    (0..out_size)
        .map(|o| {
            let real = scale * (o as f32 + 0.5) - 0.5;
            let base = real.floor();
            let t = real - base;
            let base = base as i64;
            let idx = std::array::from_fn(|k| {
                (base - 1 + k as i64).clamp(0, in_size as i64 - 1) as usize
            });
            (idx, cubic_weights(t))
        })
        .collect()
}

/// Bicubic resize of a channels-last `[in_h, in_w, c]` grid to `[out_h, out_w, c]` with
/// PyTorch's `scale_factor` semantics (align_corners = False, borders clamped).
pub fn bicubic_resize(
    input: &[f32],
    (in_h, in_w): (usize, usize),
    c: usize,
    (out_h, out_w): (usize, usize),
    (scale_h, scale_w): (f64, f64),
) -> Vec<f32> {
    assert_eq!(input.len(), in_h * in_w * c, "input grid size");
    let ty = axis_taps(in_h, out_h, scale_h);
    let tx = axis_taps(in_w, out_w, scale_w);
    let mut out = vec![0f32; out_h * out_w * c];
    let mut row = vec![0f32; c];
    for (oy, (iy, wy)) in ty.iter().enumerate() {
        for (ox, (ix, wx)) in tx.iter().enumerate() {
            let dst = &mut out[(oy * out_w + ox) * c..][..c];
            for (ky, &y) in iy.iter().enumerate() {
                row.iter_mut().for_each(|r| *r = 0.0);
                for (kx, &x) in ix.iter().enumerate() {
                    let src = &input[(y * in_w + x) * c..][..c];
                    for (r, s) in row.iter_mut().zip(src) {
                        *r += wx[kx] * s;
                    }
                }
                for (d, r) in dst.iter_mut().zip(&row) {
                    *d += wy[ky] * r;
                }
            }
        }
    }
    out
}

/// The official `interpolate_pos_encoding` on a `[1, 1 + g*g, d]` position embedding
/// (flattened), for an input of `h x w` pixels with patch size `p`. Returns
/// `[1, 1 + (h/p)*(w/p), d]`, or the input unchanged when the grid already matches.
pub fn interpolate_pos_embed(
    pos_embed: &[f32],
    dim: usize,
    patch_size: usize,
    (h, w): (usize, usize),
) -> Vec<f32> {
    let n = pos_embed.len() / dim - 1;
    let g = (n as f64).sqrt() as usize;
    assert_eq!(g * g, n, "pos_embed holds a square grid");
    let (h0, w0) = (h / patch_size, w / patch_size);
    if h0 * w0 == n && h == w {
        return pos_embed.to_vec();
    }
    let (sh, sw) = (official_scale(h0, g), official_scale(w0, g));
    let grid = bicubic_resize(&pos_embed[dim..], (g, g), dim, (h0, w0), (sh, sw));
    let mut out = Vec::with_capacity(dim * (1 + h0 * w0));
    out.extend_from_slice(&pos_embed[..dim]);
    out.extend_from_slice(&grid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one() {
        for t in [0.0, 0.1, 0.5, 0.9] {
            let s: f32 = cubic_weights(t).iter().sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn identity_scale_keeps_values() {
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let y = bicubic_resize(&x, (4, 4), 1, (4, 4), (1.0, 1.0));
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn scale_factor_not_size_ratio_sets_coordinates() {
        // 14 -> 4 with the official +0.1: output column 2 samples 2.5 / (4.1/14) - 0.5 = 8.04,
        // not 2.5 * 14/4 - 0.5 = 8.25. On a linear ramp the A = -0.75 kernel is near-exact
        // (PyTorch's own values are checked against libtorch in the models tests).
        let g = 14;
        let x: Vec<f32> = (0..g * g).map(|i| (i % g) as f32).collect();
        let s = official_scale(4, g);
        let y = bicubic_resize(&x, (g, g), 1, (4, 4), (s, s));
        let expect = (2.5 / s - 0.5) as f32;
        assert!((y[2] - expect).abs() < 0.05, "{} vs {}", y[2], expect);
        assert!((y[2] - 8.25).abs() > 0.15);
    }

    #[test]
    fn native_grid_is_untouched() {
        let pe: Vec<f32> = (0..(1 + 4) * 2).map(|v| v as f32).collect();
        assert_eq!(interpolate_pos_embed(&pe, 2, 16, (32, 32)), pe);
        assert_eq!(
            interpolate_pos_embed(&pe, 2, 16, (48, 48)).len(),
            (1 + 9) * 2
        );
    }
}
