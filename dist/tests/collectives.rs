//! Two processes on 127.0.0.1 with Gloo: all-reduce, broadcast, all-gather and barrier give
//! the values computed here by hand, and so do the forward and the backward of the
//! differentiable all-reduce; a group of one works without peers.
mod common;

use std::time::Duration;

use common::{assert_exit, child_role, config, free_port, rank_command, spawn};
use dino_dist::{Backend, ProcessGroup};
use tch::{Kind, Tensor};

const TIMEOUT: Duration = Duration::from_secs(20);

/// The entry point of a rank; passes trivially unless run as a child.
#[test]
fn child() {
    let Some((scenario, rank, port)) = child_role() else {
        return;
    };
    let pg = ProcessGroup::new(&config(rank, 2, port, TIMEOUT)).expect("join the group");
    match scenario.as_str() {
        "collectives" => check_collectives(&pg),
        "autograd" => check_autograd_all_reduce(&pg),
        other => panic!("unknown scenario {other}"),
    }
}

fn check_collectives(pg: &ProcessGroup) {
    let (rank, r) = (pg.rank(), pg.rank() as f32);
    assert_eq!((pg.world_size(), pg.backend()), (2, Backend::Gloo));

    // Rank r holds [r+1, 10(r+1), -r] (2x3 with a second row of 0.5): sums by hand.
    let t = Tensor::from_slice(&[r + 1.0, 10.0 * (r + 1.0), -r, 0.5, 0.5, 0.5]).reshape([2, 3]);
    pg.all_reduce_sum_(&t).unwrap();
    let want = Tensor::from_slice(&[3.0f32, 30.0, -1.0, 1.0, 1.0, 1.0]).reshape([2, 3]);
    assert!(t.equal(&want), "rank {rank}: all_reduce gave {t}");

    let ints = Tensor::from_slice(&[rank as i64 * 1000 + 7, -(rank as i64)]);
    pg.all_reduce_sum_(&ints).unwrap();
    assert_eq!(Vec::<i64>::try_from(&ints).unwrap(), [1014, -1]);

    let mean = Tensor::from_slice(&[r * 4.0 + 1.0]);
    pg.all_reduce_mean_(&mean).unwrap();
    assert_eq!(f32::try_from(&mean).unwrap(), 3.0);

    // Root 1's values overwrite rank 0's.
    let b = Tensor::from_slice(&[r * 2.0 + 1.0, r - 5.0, 9.0]).to_kind(Kind::Double);
    pg.broadcast_(&b, 1).unwrap();
    assert_eq!(
        Vec::<f64>::try_from(&b).unwrap(),
        [3.0, -4.0, 9.0],
        "rank {rank}"
    );

    let gathered = pg
        .all_gather(&Tensor::from_slice(&[r, r * r + 1.0]))
        .unwrap();
    let got: Vec<Vec<f32>> = gathered.iter().map(|g| Vec::try_from(g).unwrap()).collect();
    assert_eq!(got, [[0.0, 1.0], [1.0, 2.0]], "rank {rank}");

    pg.barrier().unwrap();
    let err = pg.broadcast_(&b, 2).unwrap_err();
    assert!(
        err.to_string()
            .contains("root 2 is not a rank of a group of 2"),
        "{err}"
    );
    let strided = Tensor::zeros([3, 2], (Kind::Float, tch::Device::Cpu)).transpose(0, 1);
    assert!(
        pg.all_reduce_sum_(&strided)
            .unwrap_err()
            .to_string()
            .contains("contiguous")
    );
}

/// Rank r's input `[r+1, 2(r+1), -r, 0.25]` and loss weights `[1+r, 10, r-2, 4r]`.
fn autograd_inputs(r: f32) -> (Tensor, Tensor) {
    let x = Tensor::from_slice(&[r + 1.0, 2.0 * (r + 1.0), -r, 0.25]).set_requires_grad(true);
    let w = Tensor::from_slice(&[1.0 + r, 10.0, r - 2.0, 4.0 * r]);
    (x, w)
}

/// Forward: the sum over the ranks, in a new tensor. Backward of `(y * w_r).sum()` on each
/// rank: the gradient summed over the ranks, `w_0 + w_1`, on both ranks.
fn check_autograd_all_reduce(pg: &ProcessGroup) {
    let (rank, r) = (pg.rank(), pg.rank() as f32);
    let (x, w) = autograd_inputs(r);
    let y = pg.all_reduce_sum_autograd(&x).unwrap();
    assert_eq!(Vec::<f32>::try_from(&y).unwrap(), [3.0, 6.0, -1.0, 0.5]);
    assert!(
        y.requires_grad(),
        "rank {rank}: the sum is not differentiable"
    );
    let before: Vec<f32> = autograd_inputs(r).0.try_into().unwrap();
    assert_eq!(Vec::<f32>::try_from(&x).unwrap(), before, "the input moved");
    (&y * &w).sum(Kind::Float).backward();
    let grad = Vec::<f32>::try_from(x.grad()).unwrap();
    assert_eq!(grad, [3.0, 20.0, -3.0, 4.0], "rank {rank}");

    // Without grad (the teacher's forward): still the sum, and no graph.
    let z = tch::no_grad(|| pg.all_reduce_sum_autograd(&(x.detach() * 2.0)).unwrap());
    assert_eq!(Vec::<f32>::try_from(&z).unwrap(), [6.0, 12.0, -2.0, 1.0]);
    assert!(!z.requires_grad());

    // A strided view is summed as its values.
    let m = Tensor::from_slice(&[r, 1.0, 2.0, 10.0 * r]).reshape([2, 2]);
    let t = pg.all_reduce_sum_autograd(&m.transpose(0, 1)).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap(),
        [1.0, 4.0, 2.0, 10.0]
    );
}

#[test]
fn two_gloo_ranks_agree_with_hand_computed_results() {
    two_ranks_pass("collectives");
}

#[test]
fn differentiable_all_reduce_sums_values_and_gradients_over_two_ranks() {
    two_ranks_pass("autograd");
}

fn two_ranks_pass(scenario: &str) {
    let port = free_port();
    let procs = spawn(vec![
        ("rank 0", rank_command(scenario, 0, port)),
        ("rank 1", rank_command(scenario, 1, port)),
    ]);
    for (rank, result) in procs.finish(Duration::from_secs(45)).iter().enumerate() {
        assert_exit(result, 0, &format!("rank {rank}"));
        assert!(
            result.1.contains("test result: ok. 1 passed"),
            "rank {rank} did not run:\n{}",
            result.1
        );
    }
}

#[test]
fn group_of_one_needs_no_peer() {
    let pg = ProcessGroup::new(&config(0, 1, free_port(), Duration::from_secs(10))).unwrap();
    let t = Tensor::from_slice(&[1.0f32, 2.0]);
    pg.all_reduce_sum_(&t).unwrap();
    pg.all_reduce_mean_(&t).unwrap();
    pg.broadcast_(&t, 0).unwrap();
    let all = pg.all_gather(&t).unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].equal(&t));
    let (x, w) = autograd_inputs(0.0);
    let y = pg.all_reduce_sum_autograd(&x).unwrap();
    assert!(y.equal(&x));
    (&y * &w).sum(Kind::Float).backward();
    assert!(
        x.grad().equal(&w),
        "one rank: the gradient of (x * w).sum() is w"
    );
    pg.barrier().unwrap();
    pg.abort();
}
