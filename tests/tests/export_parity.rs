//! Exported models run by ONNX Runtime agree with the models they were exported from, on
//! the real photos in `../shared/data/photos` (RGB, grayscale and RGBA, PNG and JPEG):
//! - fp32: within 1e-4 max-abs of the PyTorch reference (`tests/python/export_ref.py`, the
//!   official forward written out again) and of the tch teacher (dino-models), for
//!   `embedding`, `patch_tokens` and `attention`, at the native size and at another size
//!   (position embedding interpolated at export time);
//! - fp16: cosine >= 0.999 per image;
//! - opsets 13 (decomposed LayerNorm and GELU), 17 and 20 (Gelu op), from a training
//!   checkpoint (its teacher) with its own eval transform;
//! - the metadata describes the model completely.

use std::path::Path;

use dino_core::onnx_meta as m;
use dino_core::st::StFile;
use dino_core::testing::{assert_close, cosine, max_abs_diff};
use dino_core::{EvalTransform, VitConfig};
use dino_export::onnx::proto::ModelProto;
use dino_models::io::load_backbone;
use dino_tests::export::{Compared, compare, export_ok, weights};
use dino_tests::{s, scratch};
use prost::Message;
use tch::{Device, Kind, Tensor};

const ATOL: f32 = 1e-4;

fn check_fp32(c: &Compared, what: &str) {
    for name in ["embedding", "patch_tokens", "attention"] {
        if !c.has(name) {
            continue;
        }
        let (got, want) = (c.values(name, "ort"), c.values(name, "ref"));
        eprintln!(
            "{what} {name}: max-abs {:.2e} vs PyTorch",
            max_abs_diff(&got, &want)
        );
        assert_close(&got, &want, ATOL, 0.0);
    }
}

fn check_fp16(c: &Compared, what: &str) {
    for name in ["embedding", "attention"] {
        let (got, want) = (c.values(name, "ort_fp16"), c.values(name, "ref"));
        let per = want.len() / c.batch();
        let worst = got
            .chunks(per)
            .zip(want.chunks(per))
            .map(|(a, b)| cosine(a, b))
            .fold(1f32, f32::min);
        eprintln!("{what} fp16 {name}: worst cosine {worst:.6}");
        assert!(worst >= 0.999, "{what} fp16 {name}: cosine {worst}");
    }
}

/// ONNX Runtime's outputs against the tch teacher on the very same input batch.
fn check_tch(c: &Compared, weights: &Path, what: &str) {
    let b = load_backbone(weights, Device::Cpu).expect("tch loads the weights");
    let shape: Vec<i64> = c.shape("input").iter().map(|&d| d as i64).collect();
    let x = Tensor::from_slice(&c.values("input", "ref")).reshape(&shape);
    let (emb, attn) = tch::no_grad(|| (b.model.forward(&x), b.model.get_last_selfattention(&x)));
    let t = attn.size()[2];
    let attn = attn.select(2, 0).narrow(2, 1, t - 1);
    let f32s = |t: &Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap();
    for (name, ours) in [("embedding", f32s(&emb)), ("attention", f32s(&attn))] {
        let got = c.values(name, "ort");
        eprintln!(
            "{what} {name}: max-abs {:.2e} vs tch",
            max_abs_diff(&got, &ours)
        );
        assert_close(&got, &ours, ATOL, 0.0);
    }
}

fn export_pair(dir: &Path, w: &Path, size: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let (f32m, f16m) = (
        dir.join(format!("m{size}.onnx")),
        dir.join(format!("m{size}-fp16.onnx")),
    );
    let sz = size.to_string();
    for (m, prec) in [(&f32m, "fp32"), (&f16m, "fp16")] {
        export_ok(&[
            "--checkpoint",
            &s(w),
            "--to",
            &s(m),
            "--outputs",
            "patch_tokens,attention",
            "--img-size",
            &sz,
            "--precision",
            prec,
        ]);
    }
    (f32m, f16m)
}

#[test]
fn vit_small_16_matches_pytorch_and_tch_at_two_sizes() {
    let dir = scratch("export-parity-s16");
    let w = weights(&dir, "vit_small", 16, 224, &[]);
    for size in [224, 160] {
        let (f32m, f16m) = export_pair(&dir, &w, size);
        let c = compare(&dir, &w, &f32m, Some(&f16m), size, &size.to_string());
        assert_eq!(
            c.shape("attention"),
            [c.batch(), 6, (size / 16) * (size / 16)]
        );
        let what = format!("vit_small/16 @ {size}");
        check_fp32(&c, &what);
        check_fp16(&c, &what);
        check_tch(&c, &w, &what);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn opsets_and_training_checkpoints_match_pytorch() {
    let dir = scratch("export-parity-opsets");
    let eval = r#"{"resize_size":36,"crop_size":32,"mean":[0.5,0.5,0.5],"std":[0.25,0.25,0.25]}"#;
    let w = weights(
        &dir,
        "vit_tiny",
        8,
        32,
        &["--kind", "training_checkpoint", "--eval", eval],
    );
    for (opset, size) in [("13", 32), ("13", 64), ("17", 64), ("20", 32), ("20", 64)] {
        let m = dir.join(format!("o{opset}-{size}.onnx"));
        let sz = size.to_string();
        export_ok(&[
            "--checkpoint",
            &s(&w),
            "--to",
            &s(&m),
            "--opset",
            opset,
            "--img-size",
            &sz,
            "--outputs",
            "attention,patch_tokens",
        ]);
        let c = compare(&dir, &w, &m, None, size, &format!("{opset}-{size}"));
        check_fp32(&c, &format!("vit_tiny/8 opset {opset} @ {size}"));
        if opset == "17" {
            check_tch(&c, &w, &format!("vit_tiny/8 training checkpoint @ {size}"));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn metadata_describes_the_model() {
    let dir = scratch("export-meta");
    let w = weights(&dir, "vit_tiny", 16, 224, &[]);
    let path = dir.join("m.onnx");
    let text = export_ok(&[
        "--checkpoint",
        &s(&w),
        "--to",
        &s(&path),
        "--img-size",
        "160",
        "--outputs",
        "attention",
    ]);
    assert!(text.contains("vit_tiny/16 at 160px"), "{text}");
    let model = ModelProto::decode(&std::fs::read(&path).unwrap()[..]).unwrap();
    let meta = |k: &str| -> String {
        let e = model.metadata_props.iter().find(|e| e.key == k);
        e.unwrap_or_else(|| panic!("metadata {k} missing"))
            .value
            .clone()
    };
    let vit: VitConfig = serde_json::from_str(&meta(m::META_VIT)).unwrap();
    assert_eq!(vit, VitConfig::preset("vit_tiny", 16).unwrap());
    let eval: EvalTransform = serde_json::from_str(&meta(m::META_EVAL)).unwrap();
    assert_eq!(eval, EvalTransform::standard(160));
    assert_eq!(meta(m::META_OUTPUTS), "embedding,attention");
    assert_eq!(meta(m::META_VERSION), env!("CARGO_PKG_VERSION"));
    assert_eq!(meta(m::META_PRECISION), "fp32");
    let st = StFile::read(&w).unwrap();
    let fp = m::fingerprint(
        st.tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.data.as_slice())),
    );
    assert_eq!(meta(m::META_FINGERPRINT), fp);
    for (k, v) in [
        (m::META_ARCH, "vit_tiny"),
        (m::META_PATCH_SIZE, "16"),
        (m::META_EMBED_DIM, "192"),
        (m::META_INPUT_SIZE, "160"),
        (m::META_RESIZE_SIZE, "182"),
        (m::META_MEAN, "0.485,0.456,0.406"),
        (m::META_STD, "0.229,0.224,0.225"),
    ] {
        assert_eq!(meta(k), v, "{k}");
    }
    let g = model.graph.unwrap();
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name, m::INPUT_IMAGE);
    let outs: Vec<_> = g.output.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outs, [m::OUTPUT_EMBEDDING, m::OUTPUT_ATTENTION]);
    assert_eq!(model.opset_import[0].version, 17);
    std::fs::remove_dir_all(&dir).unwrap();
}
