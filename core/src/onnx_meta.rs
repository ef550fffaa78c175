//! The contract between `dino-export` and `dino-run`: ONNX value names and `metadata_props`.
//!
//! An exported model describes itself, so the runtime needs nothing but the `.onnx` file.
//! Both sides use these constants; changing one is a format change.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::st::RawTensor;

/// Graph input: `float32 [batch, 3, H, W]`, normalised with the `mean`/`std` below.
pub const INPUT_IMAGE: &str = "image";
/// Graph output: the normed CLS token, `float32 [batch, D]`.
pub const OUTPUT_EMBEDDING: &str = "embedding";
/// Optional output: the normed patch tokens, `float32 [batch, N, D]` (N = (H/p)*(W/p)).
pub const OUTPUT_PATCH_TOKENS: &str = "patch_tokens";
/// Optional output: the last block's CLS-to-patch self-attention, `float32 [batch, heads, N]`.
pub const OUTPUT_ATTENTION: &str = "attention";
/// Optional output: class scores of a linear probe, `float32 [batch, num_classes]`; the
/// model then carries [`crate::linear::META_LINEAR`] (class names, feature recipe).
pub const OUTPUT_LOGITS: &str = "logits";

/// JSON [`crate::VitConfig`] as trained (`img_size` = the native size).
pub const META_VIT: &str = "dino_rs.vit";
/// JSON [`crate::EvalTransform`] whose `crop_size` is the exported input size.
pub const META_EVAL: &str = "dino_rs.eval";
/// The dino-rs version that wrote the model.
pub const META_VERSION: &str = "dino_rs.version";
/// [`fingerprint`] of the backbone weights the model was exported from.
pub const META_FINGERPRINT: &str = "dino_rs.fingerprint";
/// Comma-separated graph outputs, in order (e.g. `embedding,attention`).
pub const META_OUTPUTS: &str = "dino_rs.outputs";
/// `fp32`, `fp16` or `int8` (the weights and arithmetic; inputs and outputs are float32 in
/// every case; int8 quantises the blocks' Linear layers only).
pub const META_PRECISION: &str = "dino_rs.precision";

/// Human-readable duplicates of the above, for tools such as Netron.
pub const META_ARCH: &str = "arch";
pub const META_PATCH_SIZE: &str = "patch_size";
pub const META_EMBED_DIM: &str = "embed_dim";
pub const META_INPUT_SIZE: &str = "input_size";
pub const META_RESIZE_SIZE: &str = "resize_size";
pub const META_MEAN: &str = "mean";
pub const META_STD: &str = "std";

/// Hex SHA-256 over the weights, in the order given (callers pass them sorted by name):
/// for each tensor its name, a zero byte, the data length as u64 little-endian, the data.
pub fn fingerprint<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut h = Sha256::new();
    for (name, data) in tensors {
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// [`fingerprint`] of a backbone's tensors as a weight file stores them (official keys,
/// the file's dtype), in name order: the identity `dino-export` writes to
/// [`META_FINGERPRINT`] and a linear probe records, so the two can be matched.
pub fn backbone_fingerprint(tensors: &BTreeMap<String, RawTensor>) -> String {
    fingerprint(tensors.iter().map(|(k, t)| (k.as_str(), t.data.as_slice())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backbone_fingerprint_is_over_sorted_names() {
        let mut m = BTreeMap::new();
        m.insert("b".to_string(), RawTensor::from_f32(vec![1], &[2.0]));
        m.insert("a".to_string(), RawTensor::from_f32(vec![2], &[1.0, 3.0]));
        let a = m["a"].data.clone();
        let b = m["b"].data.clone();
        assert_eq!(
            backbone_fingerprint(&m),
            fingerprint([("a", a.as_slice()), ("b", b.as_slice())])
        );
        assert_ne!(
            backbone_fingerprint(&m),
            fingerprint([("b", b.as_slice()), ("a", a.as_slice())])
        );
    }

    #[test]
    fn fingerprint_depends_on_names_and_bytes() {
        let a = fingerprint([("x", &[1u8, 2][..])]);
        assert_eq!(a.len(), 64);
        assert_ne!(a, fingerprint([("y", &[1u8, 2][..])]));
        assert_ne!(a, fingerprint([("x", &[1u8, 3][..])]));
        // Framing: moving a byte from a name into the data changes the digest.
        assert_ne!(
            fingerprint([("x1", &[2u8][..])]),
            fingerprint([("x", &[1u8, 2][..])])
        );
    }
}
