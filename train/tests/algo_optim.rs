//! AdamW, SGD and LARS against `torch.optim.AdamW`, `torch.optim.SGD(momentum=0.9)` and the
//! official `utils.LARS` (`python/dino_reference.py optim --kind K`): 9 iterations of the
//! official step (new gradients, per-parameter clipping, last layer frozen in epoch 0,
//! scheduled lr with warmup from 0 and scheduled wd on group 0) over parameters named like the
//! student's, one of them without gradient and one frozen. Parameters after every iteration
//! and the final optimizer state within 1e-6; halfway, the optimizer is rebuilt from its
//! exported state (exact resume).

mod algo_common;

use algo_common::{Reference, backprop_grads, max_abs, params_from, reference, values};
use dino_core::testing::assert_close;
use dino_train::clip::{cancel_gradients_last_layer, clip_gradients};
use dino_train::optim::{Optimizer, OptimizerKind, STEP_COUNT_KEY, get_params_groups, shallow};
use tch::Tensor;

const ATOL: f32 = 1e-6;
/// Iteration after which the optimizer is rebuilt from its exported state (in epoch 1, when
/// the last layer has taken fewer steps than the rest).
const RESUME_AT: usize = 4;

fn run(kind: &str) {
    let r: Reference = reference("optim", &["--kind", kind]);
    let names = r.str_list("names");
    let params = params_from(&r, &names, "init");
    let (lr, wd) = (r.f64_list("lr"), r.f64_list("wd"));
    let (niter, freeze, clip) = (
        r.usize("niter"),
        r.usize("freeze_last_layer"),
        r.f64("clip"),
    );
    let kind: OptimizerKind = kind.parse().unwrap();
    let mut opt = Optimizer::new(kind, get_params_groups(shallow(&params)));
    let mut worst = 0f32;
    for it in 0..lr.len() {
        if it == RESUME_AT {
            let saved: Vec<(String, Tensor)> = opt
                .state_tensors()
                .into_iter()
                .map(|(k, t)| (k, t.copy()))
                .collect();
            opt = Optimizer::new(kind, get_params_groups(shallow(&params)));
            opt.load_state(&saved).unwrap();
            assert_eq!(opt.step_count(), RESUME_AT as i64);
        }
        backprop_grads(&params, &r, &format!("grad_{it}"));
        clip_gradients(&params, clip).unwrap();
        let cancelled = cancel_gradients_last_layer(it / niter, &params, freeze);
        opt.step(lr[it], wd[it], &cancelled).unwrap();
        for (n, p) in &params {
            let (ours, expected) = (values(p), r.f32s(&format!("param_{it}.{n}")));
            worst = worst.max(max_abs(&ours, &expected));
            assert_close(&ours, &expected, ATOL, 0.0);
        }
    }

    let state = opt.state_tensors();
    let expected_keys: Vec<&str> =
        r.st.tensors
            .keys()
            .filter_map(|k| k.strip_prefix("state."))
            .collect();
    let mut ours_keys: Vec<&str> = state
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != STEP_COUNT_KEY)
        .collect();
    ours_keys.sort();
    assert_eq!(
        ours_keys, expected_keys,
        "state for exactly the parameters torch has state for"
    );
    let mut worst_state = 0f32;
    for (k, t) in &state {
        if k == STEP_COUNT_KEY {
            assert_eq!(t.int64_value(&[]), lr.len() as i64);
            continue;
        }
        let (ours, expected) = (values(t), r.f32s(&format!("state.{k}")));
        worst_state = worst_state.max(max_abs(&ours, &expected));
        assert_close(&ours, &expected, ATOL, 0.0);
    }
    eprintln!("{kind:?}: max abs error params {worst:e}, state {worst_state:e}");
}

#[test]
fn adamw_matches_torch() {
    run("adamw");
}

#[test]
fn sgd_matches_torch() {
    run("sgd");
}

#[test]
fn lars_matches_official() {
    run("lars");
}

#[test]
fn bad_state_is_rejected() {
    let p = vec![(
        "w".to_string(),
        Tensor::zeros([2, 2], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true),
    )];
    let mut opt = Optimizer::new(OptimizerKind::AdamW, get_params_groups(p));
    let count = || (STEP_COUNT_KEY.to_string(), Tensor::from(3i64));
    let z = |s: &[i64]| Tensor::zeros(s, (tch::Kind::Float, tch::Device::Cpu));
    assert!(opt.load_state(&[count()]).is_ok());
    assert!(opt.load_state(&[]).is_err(), "step count required");
    assert!(
        opt.load_state(&[count(), ("x.exp_avg".into(), z(&[2, 2]))])
            .is_err(),
        "unknown parameter"
    );
    assert!(
        opt.load_state(&[count(), ("w.mu".into(), z(&[2, 2]))])
            .is_err(),
        "not an AdamW state"
    );
    assert!(
        opt.load_state(&[count(), ("w.exp_avg".into(), z(&[4]))])
            .is_err(),
        "wrong shape"
    );
    assert!(
        opt.load_state(&[count(), ("w.exp_avg".into(), z(&[2, 2]))])
            .is_err(),
        "incomplete"
    );
}
