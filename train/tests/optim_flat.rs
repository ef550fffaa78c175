//! Flat AdamW ([`Optimizer::use_flat_buffer`]) against the per-parameter AdamW, side by side
//! from identical weights and gradients: parameters and exported state must be identical
//! after every step. The set has every segment (decayed or not, head's last layer or not, a
//! frozen tensor), the last layer cancelled in the first steps, a tensor that gets its first
//! gradient late (its segment falls back to per-parameter updates) and segments larger
//! than the CPU chunk; halfway, both optimizers are rebuilt from their exported state
//! (taken while the last layer has no state yet and after), crossing flat and per-parameter.

use dino_core::testing::assert_close;
use dino_train::clip::{cancel_gradients_last_layer, clip_gradients};
use dino_train::flat::FlatBuffer;
use dino_train::optim::{Optimizer, OptimizerKind, STEP_COUNT_KEY, get_params_groups, shallow};
use tch::{Device, Kind, Tensor};

const STEPS: usize = 9;
/// Steps per "epoch"; the last layer is frozen in epoch 0.
const NITER: usize = 3;
/// First step that gives `late.bias` a gradient.
const LATE: usize = 4;

type Params = Vec<(String, Tensor)>;

fn shapes() -> Vec<(&'static str, Vec<i64>)> {
    vec![
        ("backbone.blocks.0.attn.qkv.weight", vec![600, 300]),
        ("backbone.blocks.0.attn.qkv.bias", vec![600]),
        ("backbone.cls_token", vec![1, 1, 300]),
        ("backbone.norm.weight", vec![300]),
        ("backbone.late.bias", vec![7]),
        ("head.mlp.0.weight", vec![40, 30]),
        ("head.mlp.0.bias", vec![40]),
        ("head.last_layer.weight_v", vec![64, 30]),
        ("head.last_layer.bias", vec![64]),
        ("head.last_layer.weight_g", vec![64, 1]),
    ]
}

/// Values in [-1, 1) from `seed`, without libtorch's generator (global: the tests run in
/// parallel).
fn pseudo_random(shape: &[i64], seed: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    let x = Tensor::arange(n, (Kind::Double, Device::Cpu)) * (0.754_877_666 + 0.01 * seed) + seed;
    let h = x.sin() * 43_758.545_3;
    ((&h - h.floor()) * 2.0 - 1.0)
        .to_kind(Kind::Float)
        .view(shape)
}

/// Two identical parameter sets: the first in one flat buffer in [`FlatBuffer::order_key`]
/// order (as `DinoStep` lays out the student), the second as separate tensors.
fn params() -> (Params, Params, FlatBuffer) {
    let mut flat: Params = Vec::new();
    let mut separate: Params = Vec::new();
    for (i, (name, shape)) in shapes().into_iter().enumerate() {
        let t = pseudo_random(&shape, i as f64);
        let trainable = !name.ends_with("weight_g");
        flat.push((name.into(), t.copy().set_requires_grad(trainable)));
        separate.push((name.into(), t.copy().set_requires_grad(trainable)));
    }
    flat.sort_by_key(|(n, t)| (FlatBuffer::order_key(n, t), n.clone()));
    let buffer = FlatBuffer::new(shallow(&flat)).unwrap();
    (flat, separate, buffer)
}

fn adamw(params: &Params, buffer: Option<&FlatBuffer>) -> Optimizer {
    let mut opt = Optimizer::new(OptimizerKind::AdamW, get_params_groups(shallow(params)));
    if let Some(b) = buffer {
        assert!(opt.use_flat_buffer(b).unwrap(), "flat layout accepted");
    }
    opt
}

/// Gives every parameter the gradient `g_{step}` (by backpropagating `sum(p * g)`), except
/// `late.bias` before [`LATE`] and the frozen one.
fn set_grads(params: &Params, step: usize) {
    let mut total: Option<Tensor> = None;
    let names: Vec<&str> = shapes().into_iter().map(|(n, _)| n).collect();
    for (n, p) in params {
        let mut p = p.shallow_clone();
        p.zero_grad();
        if !p.requires_grad() || (n.contains("late") && step < LATE) {
            continue;
        }
        let i = names.iter().position(|m| m == n).unwrap();
        let g = pseudo_random(&p.size(), (100 * (step + 1) + i) as f64);
        let term = (&p * g).sum(Kind::Float);
        total = Some(match total {
            None => term,
            Some(t) => t + term,
        });
    }
    total.unwrap().backward();
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().flatten(0, -1)).unwrap()
}

fn by_name(params: &Params, name: &str) -> Tensor {
    params
        .iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
        .shallow_clone()
}

fn assert_same(flat: &Params, separate: &Params) {
    for (n, t) in separate {
        let (a, e) = (values(&by_name(flat, n)), values(t));
        // Bit for bit: the same element-wise kernels with the same scalars.
        assert_close(&a, &e, 0.0, 0.0);
    }
}

fn exported(opt: &Optimizer) -> Vec<(String, Tensor)> {
    let mut s: Vec<_> = opt
        .state_tensors()
        .into_iter()
        .map(|(k, t)| (k, t.copy()))
        .collect();
    s.sort_by(|a, b| a.0.cmp(&b.0));
    s
}

fn assert_same_state(flat: &Optimizer, separate: &Optimizer) {
    let (a, e) = (exported(flat), exported(separate));
    let keys = |s: &[(String, Tensor)]| s.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&a), keys(&e), "state for the same parameters");
    for ((k, a), (_, e)) in a.iter().zip(&e) {
        if k.ends_with(".step") || k == STEP_COUNT_KEY {
            assert_eq!(a.int64_value(&[]), e.int64_value(&[]), "{k}");
        } else {
            assert_eq!(a.size(), e.size(), "{k}");
            assert_close(&values(a), &values(e), 0.0, 0.0);
        }
    }
}

fn run(resume_at: usize) {
    let (flat, separate, buffer) = params();
    let mut opt_flat = adamw(&flat, Some(&buffer));
    let mut opt_sep = adamw(&separate, None);
    for it in 0..STEPS {
        if it == resume_at {
            // Crossed: the flat optimizer continues from the per-parameter one's state and
            // vice versa (same values, so the runs stay identical).
            let (from_flat, from_sep) = (exported(&opt_flat), exported(&opt_sep));
            opt_flat = adamw(&flat, Some(&buffer));
            opt_flat.load_state(&from_sep).unwrap();
            opt_sep = adamw(&separate, None);
            opt_sep.load_state(&from_flat).unwrap();
            assert_same_state(&opt_flat, &opt_sep);
        }
        let (lr, wd) = (1e-2 * (it + 1) as f64, 0.04 + 0.01 * it as f64);
        for params in [&flat, &separate] {
            set_grads(params, it);
            clip_gradients(params, 3.0).unwrap();
        }
        let cancelled = cancel_gradients_last_layer(it / NITER, &flat, 1);
        opt_flat.step(lr, wd, &cancelled).unwrap();
        opt_sep.step(lr, wd, &cancelled).unwrap();
        assert_same(&flat, &separate);
        assert_same_state(&opt_flat, &opt_sep);
    }
    let state = exported(&opt_flat);
    let step_of = |name: &str| {
        let key = format!("{name}.step");
        state
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap()
            .1
            .int64_value(&[])
    };
    assert_eq!(step_of("backbone.norm.weight"), STEPS as i64);
    assert_eq!(step_of("backbone.late.bias"), (STEPS - LATE) as i64);
    assert_eq!(step_of("head.last_layer.bias"), (STEPS - NITER) as i64);
    assert!(!state.iter().any(|(k, _)| k.contains("weight_g")));
}

#[test]
fn flat_adamw_equals_per_parameter_resumed_before_last_layer_state() {
    run(2);
}

#[test]
fn flat_adamw_equals_per_parameter_resumed_after_last_layer_state() {
    run(5);
}

#[test]
fn flat_layout_is_refused_when_it_does_not_apply() {
    let (flat, separate, buffer) = params();
    // Separate tensors are not views of the buffer.
    let mut opt = Optimizer::new(OptimizerKind::AdamW, get_params_groups(shallow(&separate)));
    assert!(!opt.use_flat_buffer(&buffer).unwrap());
    // SGD keeps its per-parameter path.
    let mut opt = Optimizer::new(OptimizerKind::Sgd, get_params_groups(shallow(&flat)));
    assert!(!opt.use_flat_buffer(&buffer).unwrap());
    // Name order interleaves decayed and non-decayed tensors: segments not contiguous.
    let mut by_name: Params = shallow(&separate);
    by_name.sort_by(|a, b| a.0.cmp(&b.0));
    let buffer = FlatBuffer::new(shallow(&by_name)).unwrap();
    let mut opt = Optimizer::new(OptimizerKind::AdamW, get_params_groups(by_name));
    assert!(!opt.use_flat_buffer(&buffer).unwrap());
}
