//! The small training configuration of the whole-step tests (step fidelity, `--init_from`,
//! distributed step) and its translation for `dino_ref.train.build`: written once, so the
//! Rust side and the PyTorch reference always describe the same run.

use dino_train::config::{
    Arch, AugmentConfig, ModelConfig, OptimConfig, RunConfig, TeacherConfig, TrainConfig,
};
use dino_train::device::{DeviceSpec, PrecisionSpec};
use serde_json::json;

use super::{Reference, max_abs, values};
use dino_core::testing::assert_close;

/// A 2-block ViT of width 24 on 16 px crops (2 local crops of 8 px), fp32 on the CPU,
/// with schedules of 4 epochs whose phases a 20-step run crosses.
pub fn small_config() -> TrainConfig {
    TrainConfig {
        model: ModelConfig {
            arch: Arch::Custom,
            patch_size: 4,
            embed_dim: Some(24),
            depth: Some(2),
            num_heads: Some(2),
            out_dim: 64,
            head_hidden_dim: 48,
            head_bottleneck_dim: 16,
            drop_path_rate: 0.0,
            ..ModelConfig::default()
        },
        teacher: TeacherConfig {
            // A fast teacher, so that the EMA visibly moves it in 20 steps.
            momentum_teacher: 0.9,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.07,
            warmup_teacher_temp_epochs: 2,
            ..TeacherConfig::default()
        },
        optim: OptimConfig {
            precision: PrecisionSpec::Fp32,
            // Peak lr 0.128 * 4 / 256 = 2e-3.
            lr: 0.128,
            min_lr: 1e-6,
            warmup_epochs: 1,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            clip_grad: 0.3,
            freeze_last_layer: 1,
            batch_size: 4,
            epochs: 4,
            ..OptimConfig::default()
        },
        augment: AugmentConfig {
            local_crops_number: 2,
            global_crop_size: 16,
            local_crop_size: 8,
            ..AugmentConfig::default()
        },
        run: RunConfig {
            device: DeviceSpec::Cpu,
            ..RunConfig::default()
        },
        ..TrainConfig::default()
    }
}

/// `cfg` in the key names of `dino_ref.train.build`, for `niter` iterations per epoch.
pub fn reference_config(cfg: &TrainConfig, niter: usize) -> serde_json::Value {
    let vit = cfg.vit().expect("valid config");
    let (m, t, o) = (&cfg.model, &cfg.teacher, &cfg.optim);
    json!({
        "img_size": vit.img_size, "patch": vit.patch_size, "dim": vit.embed_dim,
        "depth": vit.depth, "heads": vit.num_heads, "out_dim": m.out_dim,
        "hidden": m.head_hidden_dim, "bottleneck": m.head_bottleneck_dim,
        "norm_last_layer": m.norm_last_layer, "drop_path_rate": m.drop_path_rate,
        "ncrops": 2 + cfg.augment.local_crops_number, "epochs": o.epochs, "niter": niter,
        "batch": o.batch_size, "lr": o.lr, "min_lr": o.min_lr,
        "warmup_epochs": o.warmup_epochs, "weight_decay": o.weight_decay,
        "weight_decay_end": o.weight_decay_end, "momentum_teacher": t.momentum_teacher,
        "warmup_teacher_temp": t.warmup_teacher_temp, "teacher_temp": t.teacher_temp,
        "warmup_teacher_temp_epochs": t.warmup_teacher_temp_epochs,
        "student_temp": t.student_temp, "center_momentum": t.center_momentum,
        "clip_grad": o.clip_grad, "freeze_last_layer": o.freeze_last_layer,
    })
}

/// Every variable of `vs` against the reference's `prefix.*` tensors within `atol`
/// max-abs (the reference must hold exactly those); the largest difference and its name.
pub fn compare_net(
    vs: &tch::nn::VarStore,
    r: &Reference,
    prefix: &str,
    atol: f32,
) -> (f32, String) {
    let vars = vs.variables();
    let expected =
        r.st.tensors
            .keys()
            .filter(|k| k.starts_with(&format!("{prefix}.")))
            .count();
    assert_eq!(vars.len(), expected, "{prefix}: variable count");
    let mut worst = (0f32, String::new());
    for (name, t) in &vars {
        let (ours, theirs) = (values(t), r.f32s(&format!("{prefix}.{name}")));
        let diff = max_abs(&ours, &theirs);
        if diff >= worst.0 {
            worst = (diff, name.clone());
        }
        assert_close(&ours, &theirs, atol, 0.0);
    }
    worst
}
