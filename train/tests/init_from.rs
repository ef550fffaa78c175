//! `--init_from` of an official DINO training checkpoint: `python/init_from.py` builds student
//! and teacher in the official layout (`MultiCropWrapper` of `dino_ref`'s ViT and
//! `DINOHead`), moves them to a part-way state (student, teacher and centre all different),
//! saves them as `main_dino.py` does (`torch.save` of `student` under DDP's `module.`,
//! `teacher`, `optimizer`, `epoch`, `args`, `dino_loss`) and takes one official training step
//! from there with a fresh optimizer. dino-train reads the same file through
//! `pretrained::start_weights` (what `dino-train train --init_from` runs) and takes the same
//! step on the same crops.
//!
//! Tolerances: the step's loss within 1e-5 relative (as the step-fidelity test), student,
//! teacher and centre after the step within 1e-4 max-abs; float-order differences only. A
//! fresh start gives a loss far outside them (checked), so the match says the file's
//! student, teacher, heads and centre were all taken.

mod algo_common;

use std::collections::HashMap;
use std::path::PathBuf;

use algo_common::small::{compare_net, reference_config, small_config};
use algo_common::{Reference, max_abs, values};
use dino_core::testing::assert_close;
use dino_models::io::to_raw;
use dino_tests::run_python;
use dino_train::config::{InitConfig, TrainConfig};
use dino_train::pretrained::start_weights;
use dino_train::step::DinoStep;
use tch::{Device, Kind, Tensor};

const NITER: usize = 5;
const LOSS_RTOL: f32 = 1e-5;
const STATE_ATOL: f32 = 1e-4;

/// The small step configuration, continuing a run: no warmup (the first step's learning
/// rate is not 0, so the step moves the student through the fresh optimizer), the last
/// layer trained (weight_g is not all ones in the file) and not frozen.
fn config() -> TrainConfig {
    let mut cfg = small_config();
    cfg.model.norm_last_layer = false;
    cfg.optim.warmup_epochs = 0;
    cfg.optim.freeze_last_layer = 0;
    cfg
}

/// The reference's configuration, with the seed of its part-way state.
fn reference_with_seed(cfg: &TrainConfig) -> serde_json::Value {
    let mut c = reference_config(cfg, NITER);
    c["seed"] = 11.into();
    c
}

fn crops(cfg: &TrainConfig) -> (Tensor, Tensor) {
    tch::manual_seed(7);
    let b = cfg.optim.batch_size as i64;
    let (g, l, n) = (
        cfg.augment.global_crop_size as i64,
        cfg.augment.local_crop_size as i64,
        cfg.augment.local_crops_number as i64,
    );
    let opts = (Kind::Float, Device::Cpu);
    (
        Tensor::randn([2 * b, 3, g, g], opts),
        Tensor::randn([n * b, 3, l, l], opts),
    )
}

/// Every variable of `vs` against `{prefix}.{name}` of the reference; the largest difference.
/// Runs the reference on `cfg`'s crops: the official checkpoint's path and the reference.
fn official_checkpoint(cfg: &TrainConfig, global: &Tensor, local: &Tensor) -> (PathBuf, Reference) {
    let dir = tempfile::tempdir().expect("temp dir");
    let tensors = [("global_0", global), ("local_0", local)]
        .into_iter()
        .map(|(k, t)| (k.to_string(), to_raw(t)))
        .collect();
    let meta = HashMap::from([("config".to_string(), reference_with_seed(cfg).to_string())]);
    dino_core::st::write_atomic(&dir.path().join("inputs.safetensors"), &tensors, meta)
        .expect("write inputs");
    run_python("train/tests/python/init_from.py", &[dir.path().as_os_str()]);
    let checkpoint = dir.path().join("checkpoint.pth");
    (checkpoint, Reference::open(dir, "reference.safetensors"))
}

#[test]
fn init_from_official_checkpoint_continues_the_official_step() {
    let mut cfg = config();
    let (global, local) = crops(&cfg);
    let (checkpoint, r) = official_checkpoint(&cfg, &global, &local);

    // A fresh start on the same crops: what the loaded one must be far from.
    tch::manual_seed(0);
    let mut fresh = DinoStep::new(&cfg, NITER, Device::Cpu).expect("step");
    let fresh_loss = fresh.step(&global, Some(&local), 0).expect("step").loss;

    cfg.init = InitConfig {
        init_from: Some(checkpoint),
        ..InitConfig::default()
    };
    cfg.validate().expect("valid config");
    tch::manual_seed(0);
    let mut run = DinoStep::new(&cfg, NITER, Device::Cpu).expect("step");
    let w = start_weights(&cfg)
        .expect("read")
        .expect("weights to start from");
    run.start_from(&w).expect("load");
    let loss = run.step(&global, Some(&local), 0).expect("step").loss;

    let (loss, fresh_loss) = (
        loss.double_value(&[]) as f32,
        fresh_loss.double_value(&[]) as f32,
    );
    let expected = r.f32s("loss")[0];
    let rel = ((loss - expected) / expected).abs();
    let fresh_rel = ((fresh_loss - expected) / expected).abs();
    eprintln!(
        "first-step loss {loss} vs official {expected} (rel {rel:e}; fresh start {fresh_loss}, rel {fresh_rel:e})"
    );
    assert_close(&[loss], &[expected], 0.0, LOSS_RTOL);
    assert!(fresh_rel > 1000.0 * LOSS_RTOL, "a fresh start matches too");

    // The step moved the student well beyond the tolerance, so matching after it is not
    // trivially true.
    let name = "backbone.blocks.0.attn.qkv.weight";
    let loaded = w.student[name].to_f32(&w.path, name).expect("f32");
    let moved = max_abs(&values(&run.student().vs.variables()[name]), &loaded);
    assert!(moved > 10.0 * STATE_ATOL, "{name} moved by {moved:e} only");
    let student = compare_net(&run.student().vs, &r, "student", STATE_ATOL).0;
    let teacher = compare_net(&run.teacher().vs, &r, "teacher", STATE_ATOL).0;
    let (ours, theirs) = (values(run.loss().center()), r.f32s("center"));
    assert_close(&ours, &theirs, STATE_ATOL, 0.0);
    eprintln!(
        "after the step: student {student:e}, teacher {teacher:e}, center {:e} max abs",
        max_abs(&ours, &theirs)
    );
}

#[test]
fn init_from_refuses_another_head() {
    let base = config();
    let (global, local) = crops(&base);
    // The reference keeps its folder alive while the file is read.
    let (checkpoint, _r) = official_checkpoint(&base, &global, &local);
    type Change = fn(&mut TrainConfig);
    let changes: [(&str, Change); 5] = [
        ("configuration has out_dim 128", |c| c.model.out_dim = 128),
        ("use_bn_in_head true", |c| c.model.use_bn_in_head = true),
        ("norm_last_layer true", |c| c.model.norm_last_layer = true),
        ("embed_dim 32", |c| c.model.embed_dim = Some(32)),
        ("trains custom/8", |c| c.model.patch_size = 8),
    ];
    for (what, change) in changes {
        let mut cfg = base.clone();
        change(&mut cfg);
        cfg.init.init_from = Some(checkpoint.clone());
        let e = match start_weights(&cfg) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("checkpoint.pth") && e.contains(what),
            "{what}: {e}"
        );
    }
}
