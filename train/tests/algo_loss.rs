//! The DINO loss against a PyTorch rewrite of the official `DINOLoss`
//! (`python/dino_reference.py loss`): 5 steps with teacher temperature warmup over 3 epochs,
//! 6 crops, a running center, the last step with bf16 logits. Checked per step: the loss
//! (1e-6 relative), its gradient w.r.t. the student logits (1e-6 absolute), the center after
//! the update (1e-6 absolute) and the teacher entropy diagnostics (1e-5 relative).

mod algo_common;

use algo_common::{max_abs, reference, values};
use dino_core::testing::assert_close;
use dino_train::config::TeacherConfig;
use dino_train::loss::{DinoLoss, max_entropy, teacher_stats};
use tch::{Device, Kind, Tensor};

#[test]
fn dino_loss_matches_official_over_several_steps() {
    let r = reference("loss", &[]);
    let temps = r.f64_list("temps");
    let (out_dim, ncrops) = (r.usize("out_dim"), r.usize("ncrops"));
    // The official student temperature and centre momentum.
    let official = TeacherConfig::default();
    let mut loss = DinoLoss::new(&official, out_dim, ncrops, temps.clone(), Device::Cpu).unwrap();
    let (mut worst_loss, mut worst_grad, mut worst_center) = (0f32, 0f32, 0f32);
    for step in 0..temps.len() {
        let student = r.tensor(&format!("student_{step}"));
        let teacher = r.tensor(&format!("teacher_{step}"));
        if step == temps.len() - 1 {
            assert_eq!(
                student.kind(),
                Kind::BFloat16,
                "the last step feeds bf16 logits"
            );
        }

        let stats = loss.teacher_stats(&teacher, step).unwrap();
        let expected_stats: Vec<f32> = r.f32s(&format!("entropy_{step}"));
        let ours_stats = [
            stats.entropy as f32,
            stats.mean_entropy as f32,
            stats.max_entropy as f32,
        ];
        assert_close(&ours_stats, &expected_stats, 0.0, 1e-5);

        // The gradient flows to the student logits (widened to fp32, as the reference).
        let s = student.to_kind(Kind::Float).set_requires_grad(true);
        let l = loss.forward(&s, &teacher, step).unwrap();
        l.backward();
        let ours_loss = values(&l);
        let expected_loss = r.f32s(&format!("loss_{step}"));
        worst_loss = worst_loss.max(max_abs(&ours_loss, &expected_loss));
        assert_close(&ours_loss, &expected_loss, 0.0, 1e-6);

        let grad = values(&s.grad());
        let expected_grad = r.f32s(&format!("grad_{step}"));
        worst_grad = worst_grad.max(max_abs(&grad, &expected_grad));
        assert_close(&grad, &expected_grad, 1e-6, 0.0);

        let center = values(loss.center());
        let expected_center = r.f32s(&format!("center_{step}"));
        worst_center = worst_center.max(max_abs(&center, &expected_center));
        assert_close(&center, &expected_center, 1e-6, 0.0);
    }
    eprintln!("loss: max abs error {worst_loss:e}, grad {worst_grad:e}, center {worst_center:e}");
}

#[test]
fn loss_rejects_mismatched_shapes() {
    let official = TeacherConfig::default();
    let mut loss = DinoLoss::new(&official, 8, 4, vec![0.04], Device::Cpu).unwrap();
    let opts = (Kind::Float, Device::Cpu);
    // 4 crops of 3 images need 12 student rows and 6 teacher rows.
    assert!(
        loss.forward(
            &Tensor::zeros([12, 8], opts),
            &Tensor::zeros([6, 8], opts),
            0
        )
        .is_ok()
    );
    assert!(
        loss.forward(
            &Tensor::zeros([10, 8], opts),
            &Tensor::zeros([6, 8], opts),
            0
        )
        .is_err()
    );
    assert!(
        loss.forward(
            &Tensor::zeros([12, 7], opts),
            &Tensor::zeros([6, 8], opts),
            0
        )
        .is_err()
    );
    assert!(
        loss.forward(
            &Tensor::zeros([12, 8], opts),
            &Tensor::zeros([6, 8], opts),
            1
        )
        .is_err()
    );
    assert!(DinoLoss::new(&TeacherConfig::default(), 8, 1, vec![0.04], Device::Cpu).is_err());
}

#[test]
fn collapse_diagnostics_bound_the_entropy() {
    let opts = (Kind::Float, Device::Cpu);
    // Uniform teacher: both entropies are ln(K).
    let uniform = teacher_stats(&Tensor::full([5, 16], 1.0 / 16.0, opts)).unwrap();
    assert!((uniform.entropy - max_entropy(16)).abs() < 1e-6);
    assert!((uniform.mean_entropy - max_entropy(16)).abs() < 1e-6);
    // Collapse to one dimension: zero entropy everywhere.
    let one_hot = Tensor::zeros([5, 16], opts).index_fill(1, &Tensor::from_slice(&[3i64]), 1.0);
    let collapsed = teacher_stats(&one_hot).unwrap();
    assert_eq!(collapsed.entropy, 0.0);
    assert_eq!(collapsed.mean_entropy, 0.0);
}
