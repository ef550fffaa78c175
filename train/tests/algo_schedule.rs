//! Schedules against numpy (`python/dino_reference.py schedule`): official
//! `utils.cosine_scheduler` with and without warmup, the teacher temperature schedule, and the
//! lr (linear scaling + warmup), wd, momentum and temperature of a whole `train_dino` setup.
//! f64, `|a - e| <= 1e-7 * |e|` (plus 1e-15 absolute for values at 0).

mod algo_common;

use algo_common::{assert_close_f64, max_rel_f64, reference};
use dino_train::config::{OptimConfig, TeacherConfig};
use dino_train::schedule::{Schedules, cosine_scheduler, teacher_temp_schedule};

const RTOL: f64 = 1e-7;
const ATOL: f64 = 1e-15;

/// A fixture's argument list.
fn numbers(args: &serde_json::Value) -> Vec<f64> {
    args.as_array()
        .expect("argument list")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

#[test]
fn schedules_match_numpy() {
    let r = reference("schedule", &[]);
    let mut worst = 0f64;
    let mut check = |ours: &[f64], key: &str| {
        let expected = r.f64s(key);
        worst = worst.max(max_rel_f64(ours, &expected));
        assert_close_f64(ours, &expected, ATOL, RTOL);
    };

    for (name, args) in r.config["runs"].as_object().expect("runs") {
        let a = numbers(args);
        let ours = cosine_scheduler(
            a[0],
            a[1],
            a[2] as usize,
            a[3] as usize,
            a[4] as usize,
            a[5],
        )
        .unwrap();
        check(&ours, name);
    }
    for (name, args) in r.config["temps"].as_object().expect("temps") {
        let a = numbers(args);
        let ours = teacher_temp_schedule(a[0], a[1], a[2] as usize, a[3] as usize).unwrap();
        check(&ours, name);
    }

    let t = &r.config["train"];
    let u = |k: &str| t[k].as_u64().unwrap() as usize;
    let f = |k: &str| t[k].as_f64().unwrap();
    let optim = OptimConfig {
        epochs: u("epochs"),
        batch_size: u("batch"),
        lr: f("lr"),
        min_lr: f("min_lr"),
        warmup_epochs: u("warmup_epochs"),
        weight_decay: f("weight_decay"),
        weight_decay_end: f("weight_decay_end"),
        ..OptimConfig::default()
    };
    let teacher = TeacherConfig {
        momentum_teacher: f("momentum_teacher"),
        warmup_teacher_temp: f("warmup_teacher_temp"),
        teacher_temp: f("teacher_temp"),
        warmup_teacher_temp_epochs: u("warmup_teacher_temp_epochs"),
        ..TeacherConfig::default()
    };
    let niter_per_ep = u("niter");
    let s = Schedules::new(&optim, &teacher, niter_per_ep).unwrap();
    check(&s.lr, "train_lr");
    check(&s.wd, "train_wd");
    check(&s.momentum, "train_momentum");
    check(&s.teacher_temp, "train_temp");
    // Per-iteration access: the temperature follows the epoch of the iteration.
    let at = s.at(niter_per_ep * 2 + 3).unwrap();
    assert_eq!(at.epoch, 2);
    assert_eq!(at.lr, s.lr[niter_per_ep * 2 + 3]);
    assert_eq!(at.teacher_temp, s.teacher_temp[2]);
    assert!(s.at(s.len()).is_err());
    eprintln!("schedules: max relative error {worst:e}");
}

#[test]
fn schedule_arguments_are_checked() {
    assert!(cosine_scheduler(1.0, 0.0, 0, 10, 0, 0.0).is_err());
    assert!(cosine_scheduler(1.0, 0.0, 2, 10, 3, 0.0).is_err());
    assert!(teacher_temp_schedule(0.04, 0.07, 11, 10).is_err());
    assert!(teacher_temp_schedule(0.0, 0.07, 1, 10).is_err());
}
