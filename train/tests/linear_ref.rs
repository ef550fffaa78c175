//! `dino-train linear` against a PyTorch rewrite of the official `eval_linear.py`
//! (`python/linear_ref.py`, on `python/dino_ref/vit.py`): on a tiny seeded ViT and a fixed,
//! already preprocessed batch (no augmentation), the features for `n_last_blocks` 1 and 4
//! and with the interleaved patch-token mean, then 3 epochs of 2 SGD steps (momentum 0.9,
//! cosine lr per epoch) from the same initial classifier: the loss of every step, the lr of
//! every epoch, the trained weights and the top-1/top-5 of the result.
//! Tolerances: features 1e-5 max-abs; losses and weights 1e-5 + 1e-5 relative; lr 1e-7
//! relative; accuracies exact. The training crops are compared with torchvision's
//! bilinear `resized_crop` + `hflip` on PIL for the boxes our generator draws.

use std::path::Path;

use dino_core::st::StFile;
use dino_core::testing::{assert_close, max_abs_diff};
use dino_models::io::from_raw;
use dino_tests::run_python;
use dino_train::data::SampleRng;
use dino_train::data::augment::sample_crop;
use dino_train::linear::{
    CheckpointKey, FeatureRecipe, LinearProbe, TrainAugment, accuracy, linear_features,
    load_backbone, scaled_lr,
};
use tch::{Device, Kind, Tensor};

/// The script's constants (batch of 8 in two halves, 7 classes, 3 epochs, lr 16 per 256).
const HALF: i64 = 4;
const CLASSES: usize = 7;
const EPOCHS: usize = 3;
const LR: f64 = 16.0;

struct Reference {
    dir: tempfile::TempDir,
    r: StFile,
}

impl Reference {
    fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        run_python(
            "train/tests/python/linear_ref.py",
            &[Path::new("probe"), dir.path()],
        );
        let p = dir.path().join("ref.safetensors");
        let r = StFile::read(&p).expect("reference output");
        Self { dir, r }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn get(&self, key: &str) -> Vec<f32> {
        self.r.tensors[key].to_f32(&self.r.path, key).unwrap()
    }

    fn input(&self) -> (Tensor, Tensor) {
        let p = self.path("input.safetensors");
        let f = StFile::read(&p).unwrap();
        let t = |k: &str| from_raw(&f.tensors[k], &p, k).unwrap();
        (t("image"), t("label"))
    }
}

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

fn recipe(n: usize, avgpool: bool) -> FeatureRecipe {
    FeatureRecipe {
        n_last_blocks: n,
        avgpool_patchtokens: avgpool,
    }
}

/// Trains from the reference's initial weights as the script does; returns the losses,
/// the lrs and the probe.
fn train(feats: &Tensor, y: &Tensor, w0: &[f32], b0: &[f32]) -> (Vec<f32>, Vec<f32>, LinearProbe) {
    let lr = scaled_lr(LR, HALF as usize, 1);
    let dim = feats.size()[1] as usize;
    let mut p = LinearProbe::new(dim, CLASSES, lr, EPOCHS, Device::Cpu).unwrap();
    p.set_weights(w0, b0).unwrap();
    let (mut losses, mut lrs) = (Vec::new(), Vec::new());
    for epoch in 0..EPOCHS {
        lrs.push(p.start_epoch(epoch) as f32);
        for start in [0, HALF] {
            let (x, t) = (feats.narrow(0, start, HALF), y.narrow(0, start, HALF));
            losses.push(p.step(&x, &t).unwrap() as f32);
        }
    }
    (losses, lrs, p)
}

#[test]
fn features_and_sgd_match_the_official_eval_linear() {
    let r = Reference::generate();
    let bb = load_backbone(
        &r.path("backbone.safetensors"),
        CheckpointKey::Teacher,
        Device::Cpu,
    )
    .unwrap();
    let model = &bb.loaded.model;
    let (x, y) = r.input();

    for (n, avgpool) in [(1, false), (4, false), (1, true)] {
        let ours = f32s(&linear_features(model, &x, recipe(n, avgpool)));
        let theirs = r.get(&format!("feat_{n}_{}", u8::from(avgpool)));
        eprintln!(
            "features n={n} avgpool={avgpool}: {} values, max-abs {:.2e}",
            ours.len(),
            max_abs_diff(&ours, &theirs)
        );
        assert_eq!(ours.len(), 8 * recipe(n, avgpool).feat_dim(16));
        assert_close(&ours, &theirs, 1e-5, 0.0);
    }

    for (n, avgpool) in [(4, false), (1, true)] {
        let tag = format!("p{n}_{}_", u8::from(avgpool));
        let g = |k: &str| r.get(&format!("{tag}{k}"));
        let feats = linear_features(model, &x, recipe(n, avgpool));
        let (losses, lrs, probe) = train(&feats, &y, &g("w0"), &g("b0"));
        let (w, b) = probe.weights().unwrap();
        eprintln!(
            "probe n={n} avgpool={avgpool}: losses max-abs {:.2e}, weights {:.2e}, bias {:.2e}",
            max_abs_diff(&losses, &g("loss")),
            max_abs_diff(&w, &g("w")),
            max_abs_diff(&b, &g("b"))
        );
        assert_close(&lrs, &g("lr"), 0.0, 1e-7);
        assert_close(&losses, &g("loss"), 1e-5, 1e-5);
        assert_close(&w, &g("w"), 1e-5, 1e-5);
        assert_close(&b, &g("b"), 1e-5, 1e-5);
        // The weights moved far from their initialisation: the comparison is not vacuous.
        assert!(max_abs_diff(&w, &g("w0")) > 0.1);

        let acc = accuracy(|t| probe.logits(t), &feats, &y, CLASSES, 3);
        let want = g("acc");
        assert_eq!(acc.top1 as f32, want[0], "top-1");
        assert_eq!(acc.top5.map(|t| t as f32), Some(want[1]), "top-5");
    }
}

#[test]
fn recipe_checks_and_official_defaults() {
    let vit = dino_core::VitConfig::preset("vit_small", 16).unwrap();
    assert_eq!(
        FeatureRecipe::official_default("vit_small"),
        recipe(4, false)
    );
    assert_eq!(FeatureRecipe::official_default("vit_base"), recipe(1, true));
    assert!(recipe(4, false).check(&vit).is_ok());
    assert!(recipe(1, true).check(&vit).is_ok());
    let e = recipe(2, true).check(&vit).unwrap_err().to_string();
    assert!(e.contains("--n_last_blocks 1"), "{e}");
    let e = recipe(13, false).check(&vit).unwrap_err().to_string();
    assert!(e.contains("12 blocks"), "{e}");
    assert_eq!(recipe(1, true).feat_dim(384), 768);
}

/// The training transform (`RandomResizedCrop` + flip + normalise) against torchvision on
/// PIL for the boxes and flips our generator drew: within 2 grey levels per pixel (the
/// resizer's fixed-point coefficients differ from PIL's in the last bit) and 0.25 levels on
/// average.
#[test]
fn train_crops_match_torchvision_bilinear() {
    let photo = dino_tests::data_dir().join("photos/chelsea.png");
    let img = dino_core::image_io::load_rgb(&photo).unwrap();
    let (mean, std) = (
        dino_core::config::IMAGENET_MEAN,
        dino_core::config::IMAGENET_STD,
    );
    let aug = TrainAugment::new(64, mean, std, 9);
    let (epoch, mut cases, mut ours) = (2, Vec::new(), Vec::new());
    for index in 0..6 {
        // The draws of `TrainAugment::render`, in its order.
        let mut rng = SampleRng::for_sample(9, epoch as u64, index as u64);
        let b = sample_crop(&mut rng, img.width(), img.height(), (0.08, 1.0));
        let flip = rng.unit() < 0.5;
        cases.push(serde_json::json!({
            "box": [b.top, b.left, b.height, b.width], "flip": flip, "size": 64,
            "mean": mean, "std": std,
        }));
        ours.push(aug.render(&img, epoch, index).unwrap());
    }
    let flips: Vec<bool> = cases.iter().map(|c| c["flip"] == true).collect();
    assert!(flips.contains(&true) && flips.contains(&false), "{flips:?}");
    let dir = tempfile::tempdir().unwrap();
    let (json, out) = (
        dir.path().join("cases.json"),
        dir.path().join("crops.safetensors"),
    );
    std::fs::write(&json, serde_json::to_string(&cases).unwrap()).unwrap();
    run_python(
        "train/tests/python/linear_ref.py",
        &[Path::new("crop"), &photo, &json, &out],
    );
    let f = StFile::read(&out).unwrap();
    // One grey level in normalised units, per channel.
    let level: Vec<f32> = std.iter().map(|s| 1.0 / 255.0 / s).collect();
    for (k, ours) in ours.iter().enumerate() {
        let key = format!("crop_{k}");
        let want = f.tensors[&key].to_f32(&out, &key).unwrap();
        let plane = 64 * 64;
        let mut levels = 0f32;
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            let d = (a - b).abs() / level[i / plane];
            assert!(d <= 2.01, "{key}: value {i} differs by {d} grey levels");
            levels += d;
        }
        let mean_levels = levels / want.len() as f32;
        eprintln!("{key}: mean |diff| {mean_levels:.3} grey levels");
        assert!(
            mean_levels < 0.25,
            "{key}: mean |diff| {mean_levels} levels"
        );
    }
}
