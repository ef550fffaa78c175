//! ONNX protobuf messages and a graph builder, in pure Rust (no protoc, no Python).

pub mod graph;
pub mod proto;

/// The opsets the exporter can target: 13 (Split/Softmax/ReduceMean in their modern forms)
/// up to 21. 17 adds LayerNormalization, 20 adds Gelu; below those they are decomposed.
pub const MIN_OPSET: i64 = 13;
pub const MAX_OPSET: i64 = 21;
pub const DEFAULT_OPSET: i64 = 17;

/// The oldest IR version that carries a given opset (onnx's own version table), so the
/// file loads in the widest range of runtimes.
pub fn ir_version_for(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}
