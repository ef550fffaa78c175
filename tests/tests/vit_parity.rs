//! dino-models' ViT against independent implementations (`tests/python/vit_parity.py`):
//! timm's `VisionTransformer` at the native size, a PyTorch rewrite of the official
//! `interpolate_pos_encoding` at other sizes, and explicit softmax attention.
//! fp32 on CPU; tolerance 1e-5 max-abs on the CLS output, 1e-6 on attention probabilities.

use std::collections::BTreeMap;
use std::path::Path;

use dino_core::VitConfig;
use dino_core::st::{RawTensor, StFile, write_atomic};
use dino_core::testing::{assert_close, max_abs_diff};
use dino_models::VisionTransformer;
use dino_models::io::{load_backbone, save_backbone, to_raw};
use dino_tests::{run_python, scratch};
use tch::{Device, Kind, Tensor, nn};

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

fn write_input(path: &Path, x: &Tensor) {
    let mut m = BTreeMap::new();
    m.insert("image".to_string(), to_raw(x));
    write_atomic(path, &m, Default::default()).unwrap();
}

fn reference(dir: &Path, weights: &Path, x: &Tensor, tag: &str) -> (Vec<f32>, Vec<f32>) {
    let input = dir.join(format!("input-{tag}.safetensors"));
    let out = dir.join(format!("ref-{tag}.safetensors"));
    write_input(&input, x);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    run_python(
        "tests/python/vit_parity.py",
        &[
            "forward",
            "--weights",
            &s(weights),
            "--input",
            &s(&input),
            "--out",
            &s(&out),
        ],
    );
    let f = StFile::read(&out).unwrap();
    let get = |k: &str| f.tensors[k].to_f32(&out, k).unwrap();
    (get("cls"), get("attn"))
}

/// Rust-created weights -> timm, at the native size and (for /16) at 160px.
fn rust_to_reference(arch: &str, patch: usize, other_size: Option<i64>) {
    tch::manual_seed(7);
    let dir = scratch(&format!("vit-{arch}-{patch}"));
    let cfg = VitConfig::preset(arch, patch).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let vit = VisionTransformer::new(&vs.root(), &cfg);
    let weights = dir.join("w.safetensors");
    save_backbone(&weights, &vs, &cfg, None).unwrap();

    let mut sizes = vec![224];
    sizes.extend(other_size);
    for size in sizes {
        let x = Tensor::randn([2, 3, size, size], (Kind::Float, Device::Cpu));
        let (cls, attn) = reference(&dir, &weights, &x, &size.to_string());
        let (ours, our_attn) = tch::no_grad(|| (vit.forward(&x), vit.get_last_selfattention(&x)));
        eprintln!(
            "{arch}/{patch} @ {size}: cls max-abs {:.2e}, attention max-abs {:.2e}",
            max_abs_diff(&f32s(&ours), &cls),
            max_abs_diff(&f32s(&our_attn), &attn)
        );
        assert_close(&f32s(&ours), &cls, 1e-5, 0.0);
        assert_close(&f32s(&our_attn), &attn, 1e-6, 0.0);
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn vit_tiny_16_matches_timm_and_official_interpolation() {
    rust_to_reference("vit_tiny", 16, Some(160));
}

#[test]
fn vit_small_8_matches_timm() {
    rust_to_reference("vit_small", 8, None);
}

/// PyTorch-created weights -> dino-models, loaded by official key names.
#[test]
fn timm_weights_load_and_agree() {
    let dir = scratch("vit-from-timm");
    let weights = dir.join("timm.safetensors");
    let s = weights.to_str().unwrap();
    run_python(
        "tests/python/vit_parity.py",
        &[
            "create", "--arch", "vit_tiny", "--patch", "16", "--seed", "3", "--out", s,
        ],
    );
    let loaded = load_backbone(&weights, Device::Cpu).unwrap();
    tch::manual_seed(1);
    for size in [224, 96] {
        let x = Tensor::randn([3, 3, size, size], (Kind::Float, Device::Cpu));
        let (cls, attn) = reference(&dir, &weights, &x, &format!("t{size}"));
        let (ours, our_attn) = tch::no_grad(|| {
            (
                loaded.model.forward(&x),
                loaded.model.get_last_selfattention(&x),
            )
        });
        assert_close(&f32s(&ours), &cls, 1e-5, 0.0);
        assert_close(&f32s(&our_attn), &attn, 1e-6, 0.0);
    }
    std::fs::remove_dir_all(dir).ok();
}

/// The exporter's libtorch-free interpolation equals libtorch's kernel, including the
/// small-grid case (16px local crops of a patch-4 model) where `scale_factor` semantics
/// move values most.
#[test]
fn pure_rust_pos_embed_interpolation_equals_libtorch() {
    tch::manual_seed(2);
    let mut cfg = VitConfig::preset("vit_tiny", 4).unwrap();
    cfg.img_size = 32;
    cfg.depth = 1;
    let vs = nn::VarStore::new(Device::Cpu);
    let vit = VisionTransformer::new(&vs.root(), &cfg);
    let pe = f32s(&vit.pos_embed);
    for (h, w) in [(16, 16), (48, 48), (24, 40)] {
        let ours = dino_core::pos_embed::interpolate_pos_embed(&pe, cfg.embed_dim, 4, (h, w));
        let torch = tch::no_grad(|| vit.interpolate_pos_encoding(h as i64, w as i64));
        assert_close(&ours, &f32s(&torch), 1e-6, 1e-6);
    }
}

/// Keys are reported by name when a file does not fit the architecture.
#[test]
fn loading_reports_mismatches_by_name() {
    let dir = scratch("vit-mismatch");
    let cfg = VitConfig::preset("vit_tiny", 16).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let _vit = VisionTransformer::new(&vs.root(), &cfg);
    let path = dir.join("w.safetensors");
    save_backbone(&path, &vs, &cfg, None).unwrap();
    // Drop a key and add a foreign one.
    let f = StFile::read(&path).unwrap();
    let mut t = f.tensors.clone();
    t.remove("blocks.3.mlp.fc2.bias");
    // (`head.*` keys are a DINO head kept beside the backbone by `import --with-head`.)
    t.insert("extra.weight".into(), RawTensor::from_f32(vec![1], &[0.0]));
    write_atomic(&path, &t, f.metadata.clone()).unwrap();
    let err = load_backbone(&path, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("missing key `blocks.3.mlp.fc2.bias`"), "{err}");
    assert!(err.contains("unexpected key `extra.weight`"), "{err}");
    assert!(err.contains("w.safetensors"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}
