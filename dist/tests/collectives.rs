//! Two processes on 127.0.0.1 with Gloo: all-reduce, broadcast, all-gather and barrier give
//! the values computed here by hand; a group of one works without peers.
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
    assert_eq!(scenario, "collectives");
    let pg = ProcessGroup::new(&config(rank, 2, port, TIMEOUT)).expect("join the group");
    check_collectives(&pg);
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

#[test]
fn two_gloo_ranks_agree_with_hand_computed_results() {
    let port = free_port();
    let procs = spawn(vec![
        ("rank 0", rank_command("collectives", 0, port)),
        ("rank 1", rank_command("collectives", 1, port)),
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
    pg.barrier().unwrap();
    pg.abort();
}
