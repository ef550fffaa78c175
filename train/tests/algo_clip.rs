//! Per-parameter gradient clipping and last-layer cancellation against the official
//! `utils.clip_gradients` / `utils.cancel_gradients_last_layer`
//! (`python/dino_reference.py clip`): norms and clipped gradients within 1e-6 relative.

mod algo_common;

use algo_common::{backprop_grads, max_abs, params_from, reference, values};
use dino_core::testing::assert_close;
use dino_train::clip::{cancel_gradients_last_layer, clip_gradients};

#[test]
fn clipping_and_cancelling_match_official() {
    let r = reference("clip", &[]);
    let names: Vec<String> =
        r.st.tensors
            .keys()
            .filter_map(|k| k.strip_prefix("param.").map(str::to_string))
            .collect();
    let params = params_from(&r, &names, "param");
    backprop_grads(&params, &r, "grad");
    for (n, p) in &params {
        if r.has(&format!("grad.{n}")) {
            assert_eq!(
                values(&p.grad()),
                r.f32s(&format!("grad.{n}")),
                "gradient set up for {n}"
            );
        } else {
            assert!(!p.grad().defined(), "{n} must have no gradient");
        }
    }
    let norms = clip_gradients(&params, r.f64("clip")).unwrap();
    let ours = norms.to_vec().unwrap();
    let expected: Vec<f32> = norms
        .names
        .iter()
        .flat_map(|n| r.f32s(&format!("norm.{n}")))
        .collect();
    assert_eq!(
        norms.names.len(),
        r.st.tensors
            .keys()
            .filter(|k| k.starts_with("norm."))
            .count(),
        "norms exactly for the parameters with a gradient"
    );
    assert_close(&ours, &expected, 0.0, 1e-6);

    let mut worst = 0f32;
    for (n, p) in &params {
        let key = format!("clipped.{n}");
        if r.has(&key) {
            let (ours, expected) = (values(&p.grad()), r.f32s(&key));
            worst = worst.max(max_abs(&ours, &expected));
            assert_close(&ours, &expected, 0.0, 1e-6);
        }
    }

    // Epoch 1 >= freeze_last_layer 1: nothing cancelled.
    let kept = |c: &dino_train::clip::CancelledGrads| -> Vec<String> {
        let mut v: Vec<String> = norms
            .names
            .iter()
            .filter(|n| !c.contains(n))
            .cloned()
            .collect();
        v.sort();
        v
    };
    let c1 = cancel_gradients_last_layer(1, &params, 1);
    assert!(c1.is_empty());
    assert_eq!(kept(&c1), r.str_list("kept_at_epoch_1"));
    let c0 = cancel_gradients_last_layer(0, &params, 1);
    assert_eq!(kept(&c0), r.str_list("kept_at_epoch_0"));
    for (n, p) in &params {
        if c0.contains(n) && p.grad().defined() {
            assert!(values(&p.grad()).iter().all(|&g| g == 0.0), "{n} zeroed");
        }
    }
    eprintln!("clip: max abs error of clipped gradients {worst:e}");
}

#[test]
fn clip_must_be_positive() {
    assert!(clip_gradients(&[], 0.0).is_err());
}
