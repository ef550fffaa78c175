//! A Linear layer of a ViT block, in the graph's form: one float `Gemm`, or the int8
//! chain of [`crate::int8`] (`--precision int8`).

use crate::int8;
use crate::onnx::graph::{Graph, Linears};
use crate::vit::gemm;

/// One Linear layer: a PyTorch `[out, in]` weight and its bias, with the initializer
/// names they get.
pub struct Dense<'a> {
    pub weight_key: &'a str,
    pub weight: &'a [f32],
    pub bias_key: &'a str,
    pub bias: &'a [f32],
    /// `[out, in]`.
    pub shape: [usize; 2],
}

/// Rows of the (query-scaled) qkv projection as one Linear of input width `d`.
pub(crate) fn qkv_part<'a>(
    wk: &'a str,
    w: &'a [f32],
    bk: &'a str,
    b: &'a [f32],
    d: usize,
) -> Dense<'a> {
    Dense {
        weight_key: wk,
        weight: w,
        bias_key: bk,
        bias: b,
        shape: [b.len(), d],
    }
}

/// A Linear of a block: one `Gemm` (PyTorch's `[out, in]` weight with `transB`), or the
/// int8 chain of [`int8::linear`] when the graph's Linears are int8.
pub(crate) fn dense(g: &mut Graph, name: &str, x: &str, d: &Dense) -> String {
    match g.linears {
        Linears::Float => {
            let wt = g.weight(d.weight_key, &d.shape, d.weight);
            let bt = g.weight(d.bias_key, &d.shape[..1], d.bias);
            gemm(g, name, x, &wt, &bt)
        }
        Linears::Int8(range) => int8::linear(g, name, x, d, range),
    }
}
