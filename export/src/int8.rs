//! Int8 Linear layers (`--precision int8`): per-output-channel symmetric int8 weights,
//! activations quantised at run time.
//!
//! A Linear `x W^T + b` becomes, in standard ONNX ops,
//! `DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q, x_zero_point) -> Cast ->
//! Mul(x_scale * w_scale) -> Add(b)`: the shape, operand order included, that ONNX
//! Runtime's CPU provider fuses into one `DynamicQuantizeMatMul` kernel (per-column scales
//! and bias kept), as it does for `quantize_dynamic`'s output. Activations are uint8 with
//! a per-tensor scale and zero point computed per call; weights have no zero point
//! (symmetric), so the kernel needs no correction term for them.

use crate::dense::Dense;
use crate::onnx::graph::{Graph, attr_int};
use crate::onnx::proto::data_type;

/// The magnitude range of the int8 weights (symmetric: -128 is never used).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Int8Range {
    /// ±127, the finest weights: for Arm, and x86 CPUs with VNNI, whose int8 kernels
    /// accumulate exactly in int32.
    #[default]
    Full,
    /// ±63, for x86 CPUs without VNNI (AVX2, AVX-512 without VNNI): ONNX Runtime's kernel
    /// there adds each pair of uint8 x int8 products in int16 with saturation, which
    /// 2 x 255 x 63 < 32767 never reaches (onnxruntime.quantization's `reduce_range`).
    Reduced,
}

impl Int8Range {
    /// The largest magnitude of a quantised weight.
    pub fn qmax(self) -> f32 {
        match self {
            Int8Range::Full => 127.0,
            Int8Range::Reduced => 63.0,
        }
    }
}

/// A weight quantised per output channel, in MatMul's `[in, out]` layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    /// `[in, out]`, row-major.
    pub values: Vec<i8>,
    /// One per output channel: `W[c, :] ≈ values[:, c] * scales[c]`.
    pub scales: Vec<f32>,
}

/// Quantises a PyTorch `[out, in]` weight per output channel: `scale_c = max|W[c, :]| /
/// qmax` (1 for an all-zero row, whose values are 0 whatever the scale), `q = W / scale_c`
/// in float32, rounded half to even (numpy's `round`), clamped to ±qmax; transposed to
/// `[in, out]`.
pub fn quantize_rows(w: &[f32], out: usize, inp: usize, range: Int8Range) -> Quantized {
    let qmax = range.qmax();
    debug_assert_eq!(w.len(), out * inp);
    let scales: Vec<f32> = w
        .chunks_exact(inp)
        .map(|row| {
            let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if max > 0.0 { max / qmax } else { 1.0 }
        })
        .collect();
    let mut values = vec![0i8; out * inp];
    for (c, (row, &s)) in w.chunks_exact(inp).zip(&scales).enumerate() {
        for (k, &v) in row.iter().enumerate() {
            values[k * out + c] = (v / s).round_ties_even().clamp(-qmax, qmax) as i8;
        }
    }
    Quantized { values, scales }
}

/// The int8 chain for `x [rows, in] -> [rows, out]`; returns `name`, its output.
pub fn linear(g: &mut Graph, name: &str, x: &str, d: &Dense, range: Int8Range) -> String {
    let [out, inp] = d.shape;
    let q = quantize_rows(d.weight, out, inp, range);
    let wq = g.int8(&format!("{}.int8", d.weight_key), &[inp, out], &q.values);
    let ws = g.weight(&format!("{}.scale", d.weight_key), &[out], &q.scales);
    let b = g.weight(d.bias_key, &[out], d.bias);
    let xq = [
        format!("{name}/x_q"),
        format!("{name}/x_scale"),
        format!("{name}/x_zero_point"),
    ];
    let quant = format!("{name}/quantize_x");
    g.node_n("DynamicQuantizeLinear", &quant, &[x], vec![], &xq);
    let scale = g.node("Mul", &format!("{name}/scale"), &[&xq[1], &ws], vec![]);
    let acc = g.node(
        "MatMulInteger",
        &format!("{name}/matmul_int8"),
        &[&xq[0], &wq, &xq[2]],
        vec![],
    );
    let to_float = vec![attr_int("to", data_type::FLOAT as i64)];
    let acc = g.node("Cast", &format!("{name}/to_float"), &[&acc], to_float);
    let y = g.node("Mul", &format!("{name}/rescaled"), &[&acc, &scale], vec![]);
    g.node("Add", name, &[&y, &b], vec![])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_columns_with_their_own_scale() {
        // Row 0: max 2.54 -> scale 0.02; row 1: all zero; row 2: a tie at 0.5 and at 1.5.
        let w = [2.54, -1.27, 0.01, 0.0, 0.0, 0.0, 127.0, 0.5, -1.5];
        let q = quantize_rows(&w, 3, 3, Int8Range::Full);
        assert_eq!(q.scales[0], 2.54f32 / 127.0);
        assert_eq!(q.scales[1], 1.0);
        assert_eq!(q.scales[2], 1.0);
        // [in, out]: column c is row c of the input.
        assert_eq!(q.values, vec![127, 0, 127, -64, 0, 0, 0, 0, -2]);
    }

    #[test]
    fn the_largest_magnitude_maps_to_127_never_128() {
        let w = [-3.0, 1.0, 3.0];
        let q = quantize_rows(&w, 1, 3, Int8Range::Full);
        assert_eq!(q.values, vec![-127, 42, 127]);
        let q = quantize_rows(&w, 1, 3, Int8Range::Reduced);
        assert_eq!(
            (q.values, q.scales),
            (vec![-63, 21, 63], vec![3.0f32 / 63.0])
        );
    }
}
