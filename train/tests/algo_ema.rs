//! Teacher EMA against the official update `param_k.mul_(m).add_((1 - m) * param_q)`
//! (`python/dino_reference.py ema`): 3 steps with the momentum schedule while the student
//! moves, tensor by tensor ([`EmaPairs`]) and on flat buffers ([`FlatEma`]), both exact
//! (atol 0: same element-wise operations in the same order).

mod algo_common;

use algo_common::{Reference, max_abs, reference, values};
use dino_core::testing::assert_close;
use dino_train::ema::{EmaPairs, FlatEma};
use dino_train::flat::FlatBuffer;
use tch::{Device, Kind, Tensor};

fn names(r: &Reference) -> Vec<String> {
    r.st.tensors
        .keys()
        .filter_map(|k| k.strip_prefix("teacher.").map(str::to_string))
        .collect()
}

fn tensors(r: &Reference, prefix: &str) -> Vec<(String, Tensor)> {
    names(r)
        .into_iter()
        .map(|n| {
            let t = r.tensor(&format!("{prefix}.{n}"));
            (n, t)
        })
        .collect()
}

/// Runs the reference's steps with `update` (plain or flat) and checks the teacher after each.
fn check(r: &Reference, flat: bool) -> f32 {
    let teacher = tensors(r, "teacher");
    let student = tensors(r, "student_0");
    let handles: Vec<(String, Tensor)> = teacher
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let student_handles: Vec<(String, Tensor)> = student
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let pairs = EmaPairs::new(teacher, student).unwrap();
    let flat_ema = flat.then(|| {
        FlatEma::new(
            EmaPairs::new(
                handles.iter().map(|(n, t)| (n.clone(), t.shallow_clone())),
                student_handles
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone())),
            )
            .unwrap(),
        )
        .unwrap()
    });
    let mut worst = 0f32;
    for (step, m) in r.f64_list("momenta").into_iter().enumerate() {
        // Move the student in place, as the optimizer does.
        tch::no_grad(|| {
            for (n, s) in &student_handles {
                let mut s = s.shallow_clone();
                s.copy_(&r.tensor(&format!("student_{step}.{n}")));
            }
        });
        match &flat_ema {
            Some(f) => f.update(m).unwrap(),
            None => pairs.update(m).unwrap(),
        }
        for (n, t) in &handles {
            let (ours, expected) = (values(t), r.f32s(&format!("teacher_{step}.{n}")));
            worst = worst.max(max_abs(&ours, &expected));
            assert_close(&ours, &expected, 0.0, 0.0);
        }
    }
    worst
}

#[test]
fn ema_matches_official_update() {
    let r = reference("ema", &[]);
    let plain = check(&r, false);
    let flat = check(&r, true);
    eprintln!("ema: max abs error {plain:e} (per tensor), {flat:e} (flat)");
}

#[test]
fn ema_pairs_must_match() {
    let opts = (Kind::Float, Device::Cpu);
    let t = |n: &str, s: i64| (n.to_string(), Tensor::zeros([s], opts));
    assert!(EmaPairs::new([t("a", 2)], [t("a", 3)]).is_err());
    assert!(EmaPairs::new([t("a", 2)], [t("b", 2)]).is_err());
    assert!(EmaPairs::new([t("a", 2)], [t("a", 2), t("b", 2)]).is_err());
    assert!(EmaPairs::new([t("a", 2), t("b", 1)], [t("b", 1), t("a", 2)]).is_ok());
}

#[test]
fn flat_ema_detects_replaced_storage() {
    let opts = (Kind::Float, Device::Cpu);
    let teacher = vec![
        ("a".to_string(), Tensor::ones([3], opts)),
        ("b".to_string(), Tensor::ones([2, 2], opts)),
    ];
    let student = vec![
        ("a".to_string(), Tensor::zeros([3], opts)),
        ("b".to_string(), Tensor::zeros([2, 2], opts)),
    ];
    let mut b = teacher[1].1.shallow_clone();
    let flat = FlatEma::new(EmaPairs::new(teacher, student).unwrap()).unwrap();
    flat.update(0.5).unwrap();
    assert_eq!(values(&b), vec![0.5; 4], "the views see the update");
    b.set_data(&Tensor::ones([2, 2], opts));
    assert!(flat.update(0.5).is_err());
    // A flat buffer keeps values.
    let xs = [
        Tensor::from_slice(&[1f32, 2.0]),
        Tensor::from_slice(&[3f32]),
    ];
    let buf = FlatBuffer::new([
        ("x".into(), xs[0].shallow_clone()),
        ("y".into(), xs[1].shallow_clone()),
    ])
    .unwrap();
    assert_eq!(values(buf.buffer()), vec![1.0, 2.0, 3.0]);
    assert_eq!(values(&xs[1]), vec![3.0]);
}
