//! The one numeric comparison used by every parity test in the workspace.

/// Panics with the worst element unless `|a - e| <= atol + rtol * |e|` holds everywhere
/// (the `numpy.allclose` rule). NaN never compares close.
#[track_caller]
pub fn assert_close(actual: &[f32], expected: &[f32], atol: f32, rtol: f32) {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let excess = (a - e).abs() - (atol + rtol * e.abs());
        let within = excess <= 0.0; // false for NaN
        if !within && worst.is_none_or(|(_, w)| excess > w || excess.is_nan()) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        let max_abs = actual
            .iter()
            .zip(expected)
            .map(|(a, e)| (a - e).abs())
            .fold(0f32, f32::max);
        panic!(
            "not close (atol {atol:e}, rtol {rtol:e}): element {i}: actual {} expected {}; max abs diff {max_abs:e} over {} values",
            actual[i],
            expected[i],
            actual.len()
        );
    }
}

/// Largest absolute difference, for reporting.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb).max(1e-30)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_within_tolerance() {
        assert_close(&[1.0, 2.0], &[1.0 + 1e-6, 2.0], 1e-5, 0.0);
    }

    #[test]
    #[should_panic(expected = "not close")]
    fn rejects_outside_tolerance() {
        assert_close(&[1.0, 2.0], &[1.0, 2.1], 1e-5, 1e-3);
    }

    #[test]
    #[should_panic(expected = "not close")]
    fn rejects_nan() {
        assert_close(&[f32::NAN], &[0.0], 1.0, 1.0);
    }
}
