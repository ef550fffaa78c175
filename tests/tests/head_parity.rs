//! dino-models' DINO head against a PyTorch rewrite of the official `DINOHead`
//! (`tests/python/head_parity.py`), fp32 CPU, 1e-5 max-abs.

use std::collections::BTreeMap;

use dino_core::st::{self, StFile, write_atomic};
use dino_core::testing::assert_close;
use dino_core::{HeadConfig, VitConfig};
use dino_models::DinoHead;
use dino_models::io::{named_raw, to_raw};
use dino_tests::{run_python, scratch};
use tch::{Device, Kind, Tensor, nn};

fn check(cfg: HeadConfig, tag: &str) {
    tch::manual_seed(11);
    let dir = scratch(&format!("head-{tag}"));
    let vs = nn::VarStore::new(Device::Cpu);
    let head = DinoHead::new(&vs.root(), &cfg);
    // Move g away from 1 and BN statistics away from identity so both are exercised.
    tch::no_grad(|| {
        for (k, mut v) in vs.variables() {
            if k.contains("weight_g") || k.contains("running") {
                v.copy_(&(Tensor::rand_like(&v) + 0.5));
            }
        }
    });
    let weights = dir.join("head.safetensors");
    let vit = VitConfig::preset("vit_tiny", 16).unwrap();
    let meta = st::backbone_metadata(&vit, Some(&cfg), None, st::KIND_BACKBONE);
    let mut tensors = named_raw(&vs, "");
    if cfg.use_bn {
        // PyTorch's BatchNorm1d also stores its update count.
        for k in dino_core::weights::head_shapes(&cfg)
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.ends_with("num_batches_tracked"))
        {
            tensors.insert(k, to_raw(&Tensor::from(0i64)));
        }
    }
    write_atomic(&weights, &tensors, meta).unwrap();

    let x = Tensor::randn([5, cfg.in_dim as i64], (Kind::Float, Device::Cpu));
    let input = dir.join("x.safetensors");
    write_atomic(
        &input,
        &BTreeMap::from([("x".to_string(), to_raw(&x))]),
        Default::default(),
    )
    .unwrap();
    let out = dir.join("y.safetensors");
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
    run_python(
        "tests/python/head_parity.py",
        &[
            "--weights",
            &p(&weights),
            "--input",
            &p(&input),
            "--out",
            &p(&out),
        ],
    );
    let expected = StFile::read(&out).unwrap().tensors["y"]
        .to_f32(&out, "y")
        .unwrap();
    let ours = tch::no_grad(|| head.forward_t(&x, false));
    let ours = Vec::<f32>::try_from(ours.flatten(0, -1)).unwrap();
    assert_close(&ours, &expected, 1e-5, 0.0);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn head_default_matches_official() {
    let mut cfg = HeadConfig::new(192, 1000);
    cfg.hidden_dim = 256;
    cfg.bottleneck_dim = 64;
    check(cfg, "default");
}

#[test]
fn head_with_bn_unfrozen_g_matches_official() {
    let mut cfg = HeadConfig::new(64, 300);
    cfg.hidden_dim = 128;
    cfg.bottleneck_dim = 32;
    cfg.use_bn = true;
    cfg.norm_last_layer = false;
    cfg.nlayers = 4;
    check(cfg, "bn");
}

#[test]
fn head_single_layer_matches_official() {
    let mut cfg = HeadConfig::new(32, 50);
    cfg.nlayers = 1;
    cfg.bottleneck_dim = 16;
    check(cfg, "one");
}

#[test]
fn frozen_g_is_not_trainable() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = DinoHead::new(&vs.root(), &HeadConfig::new(8, 16));
    let trainable: Vec<String> = vs
        .variables()
        .into_iter()
        .filter(|(_, v)| v.requires_grad())
        .map(|(k, _)| k)
        .collect();
    assert!(!trainable.iter().any(|k| k.contains("weight_g")));
    assert!(trainable.iter().any(|k| k.contains("weight_v")));
}
