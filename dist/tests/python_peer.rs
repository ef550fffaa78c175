//! Independent cross-check: a Rust rank and a Python rank (`$PYTHON`'s torch, plain
//! `torch.distributed.init_process_group("gloo", init_method="tcp://...")`) in one group.
//! Each side checks the other's contribution, so the shim must speak c10d's own protocol.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{assert_exit, child_role, config, free_port, rank_command, spawn};
use dino_dist::ProcessGroup;
use tch::{Kind, Tensor};

/// The Rust rank 0; passes trivially unless run as a child.
#[test]
fn child() {
    let Some((_, rank, port)) = child_role() else {
        return;
    };
    let pg = ProcessGroup::new(&config(rank, 2, port, Duration::from_secs(30))).expect("join");

    // Python's rank 1 holds [1.5, 2, -50, 1].
    let t = Tensor::from_slice(&[0.25f32, -3.0, 100.0, 1.0]);
    pg.all_reduce_sum_(&t).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), [1.75, -1.0, 50.0, 2.0]);

    let b = (Tensor::arange(6, (Kind::Double, tch::Device::Cpu)) * 1.5).reshape([2, 3]);
    pg.broadcast_(&b, 0).unwrap();

    let from_python = Tensor::zeros([3], (Kind::Int64, tch::Device::Cpu));
    pg.broadcast_(&from_python, 1).unwrap();
    assert_eq!(Vec::<i64>::try_from(&from_python).unwrap(), [11, -22, 33]);

    let gathered = pg.all_gather(&Tensor::from_slice(&[1i32, 2])).unwrap();
    let got: Vec<Vec<i32>> = gathered.iter().map(|g| Vec::try_from(g).unwrap()).collect();
    assert_eq!(got, [[1, 2], [5, 6]]);

    pg.barrier().unwrap();
}

#[test]
fn rust_and_python_ranks_share_a_gloo_group() {
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/c10d_peer.py");
    let mut python = Command::new(std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into()));
    // Gloo on the loopback interface only, as the Rust rank picks for a master on 127.0.0.1.
    python
        .arg(&script)
        .arg(port.to_string())
        .env("GLOO_SOCKET_IFNAME", "lo");
    let procs = spawn(vec![
        ("rust rank 0", rank_command("python_peer", 0, port)),
        ("python rank 1", python),
    ]);
    let results = procs.finish(Duration::from_secs(50));
    assert_exit(&results[0], 0, "rust rank 0");
    assert!(
        results[0].1.contains("test result: ok. 1 passed"),
        "rust rank 0 did not run:\n{}",
        results[0].1
    );
    assert_exit(&results[1], 0, "python rank 1");
    assert!(
        results[1].1.contains("all checks passed"),
        "{}",
        results[1].1
    );
}
