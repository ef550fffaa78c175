//! The head's synchronised BatchNorm in one process, against tch's own BatchNorm: a sync
//! that doubles the statistics (and, as an all-reduce's backward, the gradient) plays two
//! ranks holding the same batch, which must behave as one process on that batch twice:
//! same outputs, running statistics (unbiased over 2n rows, not n) and gradients.
//! A failing sync is an error naming the layer. fp32 CPU, 1e-5 max-abs (gradients: 1e-5 of
//! the largest gradient magnitude). Seeded, so a failure reproduces.

use std::rc::Rc;

use dino_core::HeadConfig;
use dino_core::testing::assert_close;
use dino_models::sync_bn::SyncError;
use dino_models::{BatchStatsSync, DinoHead, ModelError};
use tch::{Device, Kind, Tensor, nn};

const ATOL: f32 = 1e-5;

/// Two ranks with the same batch: every sum over the ranks is twice the local one.
#[derive(Debug)]
struct TwoIdenticalRanks;

impl BatchStatsSync for TwoIdenticalRanks {
    fn all_reduce_sum(&self, stats: &Tensor) -> Result<Tensor, SyncError> {
        Ok(stats * 2.0)
    }
}

#[derive(Debug)]
struct Broken;

impl BatchStatsSync for Broken {
    fn all_reduce_sum(&self, _: &Tensor) -> Result<Tensor, SyncError> {
        Err("peer gone".into())
    }
}

fn cfg() -> HeadConfig {
    HeadConfig {
        use_bn: true,
        hidden_dim: 32,
        bottleneck_dim: 8,
        ..HeadConfig::new(12, 20)
    }
}

/// Two heads with the same random weights (BatchNorm parameters and running statistics in
/// [0.5, 1.5)), the first with `sync`.
fn heads(sync: Rc<dyn BatchStatsSync>) -> [(nn::VarStore, DinoHead); 2] {
    let make = || {
        let vs = nn::VarStore::new(Device::Cpu);
        let head = DinoHead::new(&vs.root(), &cfg());
        (vs, head)
    };
    let ((vs, mut synced), (vs_one, one)) = (make(), make());
    tch::no_grad(|| {
        let src = vs.variables();
        for (k, mut v) in vs_one.variables() {
            if k.contains("mlp.1.") || k.contains("mlp.4.") {
                src[&k]
                    .shallow_clone()
                    .copy_(&(Tensor::rand_like(&v) + 0.5));
            }
            v.copy_(&src[&k]);
        }
    });
    synced.set_batch_stats_sync(Some(sync));
    [(vs, synced), (vs_one, one)]
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().to_kind(Kind::Float).flatten(0, -1)).expect("f32")
}

/// The gradient of every trainable variable, by name.
fn grads(vs: &nn::VarStore) -> Vec<(String, Vec<f32>)> {
    let mut g: Vec<_> = (vs.variables().into_iter())
        .filter(|(_, t)| t.requires_grad())
        .map(|(k, t)| (k, values(&t.grad())))
        .collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    g
}

#[test]
fn synced_batch_norm_on_two_identical_ranks_equals_one_process_on_both_batches() {
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    // A mean far from 0, as after a Linear with a bias: E[x²] - E[x]² must hold up.
    let x = (Tensor::randn([6, 12], opts) * 2.0 + 3.0).set_requires_grad(true);
    let w = Tensor::randn([6, 20], opts);

    let [(vs_sync, synced), (vs_one, one)] = heads(Rc::new(TwoIdenticalRanks));
    let before = vs_one.variables();
    let before: Vec<(String, Vec<f32>)> = (before.iter())
        .filter(|(k, _)| k.contains("running_"))
        .map(|(k, v)| (k.clone(), values(v)))
        .collect();
    let y = synced.f_forward_t(&x, true).expect("synced forward");
    (&y * &w).sum(Kind::Float).backward();

    let x2 = Tensor::cat(&[x.detach(), x.detach()], 0).set_requires_grad(true);
    let y2 = one.forward_t(&x2, true);
    (&y2 * Tensor::cat(&[&w, &w], 0))
        .sum(Kind::Float)
        .backward();

    assert_close(&values(&y), &values(&y2.narrow(0, 0, 6)), ATOL, 0.0);
    // Rank 0's input gradient is that of the first copy in the one-process batch.
    assert_close(
        &values(&x.grad()),
        &values(&x2.grad().narrow(0, 0, 6)),
        ATOL,
        0.0,
    );
    // Each rank's parameter gradient is half of the one-process one (the sum of both), to
    // 1e-5 of the largest gradient magnitude in the head (up to 1e2 here, where float32
    // sums differ). One scale for all: the bias before a BatchNorm has a gradient of zero in
    // exact arithmetic, so its float32 value is rounding noise of the other gradients' size.
    let (g_sync, g_one) = (grads(&vs_sync), grads(&vs_one));
    assert_eq!(g_sync.len(), g_one.len());
    let scale = (g_one.iter().flat_map(|(_, g)| g)).fold(1f32, |m, v| m.max(v.abs()));
    for ((k, g), (k2, g2)) in g_sync.iter().zip(&g_one) {
        assert_eq!(k, k2);
        let doubled: Vec<f32> = g.iter().map(|v| 2.0 * v).collect();
        assert_close(&doubled, g2, ATOL * scale, 0.0);
    }
    let first = &g_one
        .iter()
        .find(|(k, _)| k == "mlp.0.weight")
        .expect("mlp.0")
        .1;
    assert!(first.iter().any(|v| v.abs() > 1e-3), "a vanishing gradient");
    let (a, b) = (vs_sync.variables(), vs_one.variables());
    assert_eq!(before.len(), 4, "2 layers, mean and var");
    for (name, start) in &before {
        let (got, want) = (values(&a[name]), values(&b[name]));
        assert_close(&got, &want, ATOL, 0.0);
        let moved = want.iter().zip(start).map(|(w, s)| (w - s).abs());
        assert!(moved.fold(0f32, f32::max) > 0.01, "{name} did not move");
    }
}

#[test]
fn evaluation_uses_the_running_statistics_without_the_sync() {
    let x = Tensor::randn([4, 12], (Kind::Float, Device::Cpu));
    let [(_, synced), (_, one)] = heads(Rc::new(Broken));
    let got = synced.f_forward_t(&x, false).expect("no sync in eval mode");
    assert_close(&values(&got), &values(&one.forward_t(&x, false)), 0.0, 0.0);
}

#[test]
fn a_failing_sync_or_a_single_row_is_an_error_naming_the_layer() {
    let [(_, broken), _] = heads(Rc::new(Broken));
    let x = Tensor::randn([4, 12], (Kind::Float, Device::Cpu));
    let err = broken.f_forward_t(&x, true).unwrap_err();
    assert!(matches!(err, ModelError::BatchStatsSync { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("`mlp.1`") && msg.contains("peer gone"),
        "{msg}"
    );

    let [(_, synced), _] = heads(Rc::new(TwoIdenticalRanks));
    let err = synced.f_forward_t(&x.narrow(0, 0, 1), true).unwrap_err();
    assert!(err.to_string().contains("at least 2 rows"), "{err}");
}
