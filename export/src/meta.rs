//! `metadata_props` that make an exported model self-describing for `dino-run`.

use dino_core::linear::{LinearHeadConfig, META_LINEAR};
use dino_core::onnx_meta as m;
use dino_core::{EvalTransform, VitConfig};

use crate::onnx::proto::StringStringEntryProto;

/// The eval transform for an input of `input` pixels: the checkpoint's own (its resize
/// scaled with the crop), or the official one (resize `input * 256/224`, ImageNet stats).
pub fn eval_for(saved: Option<&EvalTransform>, input: usize) -> EvalTransform {
    match saved {
        Some(e) if e.crop_size == input => e.clone(),
        Some(e) => EvalTransform {
            resize_size: ((e.resize_size * input) as f64 / e.crop_size as f64).round() as usize,
            crop_size: input,
            ..e.clone()
        },
        None => EvalTransform::standard(input),
    }
}

pub struct ModelMeta<'a> {
    pub vit: &'a VitConfig,
    pub eval: &'a EvalTransform,
    pub fingerprint: &'a str,
    pub outputs: &'a [&'a str],
    pub precision: &'a str,
    /// The probe behind the `logits` output, if any.
    pub linear: Option<&'a LinearHeadConfig>,
}

pub fn props(meta: &ModelMeta) -> Vec<StringStringEntryProto> {
    let list = |v: &[f32; 3]| v.map(|x| x.to_string()).join(",");
    let e = meta.eval;
    let linear = meta.linear.map(|c| {
        (
            META_LINEAR,
            serde_json::to_string(c).expect("LinearHeadConfig is JSON"),
        )
    });
    [
        (
            m::META_VIT,
            serde_json::to_string(meta.vit).expect("VitConfig is JSON"),
        ),
        (
            m::META_EVAL,
            serde_json::to_string(e).expect("EvalTransform is JSON"),
        ),
        (m::META_VERSION, env!("CARGO_PKG_VERSION").to_string()),
        (m::META_FINGERPRINT, meta.fingerprint.to_string()),
        (m::META_OUTPUTS, meta.outputs.join(",")),
        (m::META_PRECISION, meta.precision.to_string()),
        (m::META_ARCH, meta.vit.arch.clone()),
        (m::META_PATCH_SIZE, meta.vit.patch_size.to_string()),
        (m::META_EMBED_DIM, meta.vit.embed_dim.to_string()),
        (m::META_INPUT_SIZE, e.crop_size.to_string()),
        (m::META_RESIZE_SIZE, e.resize_size.to_string()),
        (m::META_MEAN, list(&e.mean)),
        (m::META_STD, list(&e.std)),
    ]
    .into_iter()
    .chain(linear)
    .map(|(key, value)| StringStringEntryProto {
        key: key.to_string(),
        value,
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_follows_the_input_size() {
        assert_eq!(eval_for(None, 224), EvalTransform::standard(224));
        let saved = EvalTransform {
            resize_size: 36,
            crop_size: 32,
            mean: [0.5; 3],
            std: [0.25; 3],
        };
        let e = eval_for(Some(&saved), 64);
        assert_eq!((e.resize_size, e.crop_size, e.mean), (72, 64, [0.5; 3]));
        assert_eq!(eval_for(Some(&saved), 32), saved);
    }
}
