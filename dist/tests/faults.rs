//! Faults end in errors within the timeout, never in a hang: a peer that exits or stalls
//! mid-run, rank 0 (the store's host) exiting, world sizes that disagree, an occupied port,
//! an unreachable master.
mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{assert_exit, child_role, config, free_port, rank_command, spawn};
use dino_dist::{Backend, DistError, NCCL_AVAILABLE, ProcessGroup};
use tch::Tensor;

/// Short, so that the tests that wait it out stay fast.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Room for process start-up and scheduling on a loaded machine.
const MARGIN: Duration = Duration::from_secs(4);
const EXIT_CODE: i32 = 7;

/// The entry point of a rank; passes trivially unless run as a child.
#[test]
fn child() {
    let Some((scenario, rank, port)) = child_role() else {
        return;
    };
    let pg = ProcessGroup::new(&config(rank, 2, port, TIMEOUT)).expect("join the group");
    let t = Tensor::from_slice(&[1.0f32]);
    pg.all_reduce_sum_(&t)
        .expect("first all_reduce, both ranks alive");
    let leaver = if scenario == "rank0_exits" { 0 } else { 1 };
    if rank == leaver {
        match scenario.as_str() {
            "peer_reports_and_exits" => {
                pg.report_failure("loss is NaN").unwrap();
                std::process::exit(EXIT_CODE)
            }
            "rank0_exits" => std::process::exit(EXIT_CODE),
            // Alive but silent: the survivor's timeout must fire.
            "peer_stalls" => std::thread::sleep(TIMEOUT + MARGIN),
            other => panic!("unknown scenario {other}"),
        }
        return;
    }
    let start = Instant::now();
    let err = pg
        .all_reduce_sum_(&t)
        .expect_err("all_reduce with a dead or silent peer");
    let elapsed = start.elapsed();
    println!("rank {rank} got, after {elapsed:?}: {err}");
    assert!(elapsed < TIMEOUT + MARGIN, "error after {elapsed:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("all_reduce on rank {rank} of 2 failed")),
        "{msg}"
    );
    match scenario.as_str() {
        "peer_reports_and_exits" => assert!(msg.contains("rank 1 reported: loss is NaN"), "{msg}"),
        "rank0_exits" => assert!(msg.contains("store on rank 0 is unreachable"), "{msg}"),
        _ => {}
    }
}

/// Runs both ranks of `scenario`; the leaver's exit code is `leaver_code`, the survivor's 0.
fn run_scenario(scenario: &str, leaver: usize, leaver_code: i32) {
    let port = free_port();
    let procs = spawn(vec![
        ("rank 0", rank_command(scenario, 0, port)),
        ("rank 1", rank_command(scenario, 1, port)),
    ]);
    let results = procs.finish(Duration::from_secs(40));
    for (rank, result) in results.iter().enumerate() {
        let code = if rank == leaver { leaver_code } else { 0 };
        assert_exit(result, code, &format!("{scenario}: rank {rank}"));
    }
    let survivor = &results[1 - leaver].1;
    assert!(
        survivor.contains("test result: ok. 1 passed"),
        "{scenario}: survivor did not check:\n{survivor}"
    );
}

#[test]
fn peer_that_exits_fails_the_collective_and_is_named() {
    run_scenario("peer_reports_and_exits", 1, EXIT_CODE);
}

#[test]
fn rank0_that_exits_fails_the_collective() {
    run_scenario("rank0_exits", 0, EXIT_CODE);
}

#[test]
fn peer_that_stalls_times_out() {
    run_scenario("peer_stalls", 1, 0);
}

/// Two ranks as threads of this process, each with its own world size.
fn join_pair(world_sizes: [usize; 2]) -> Vec<Result<ProcessGroup, DistError>> {
    let port = free_port();
    let threads: Vec<_> = world_sizes
        .into_iter()
        .enumerate()
        .map(|(rank, ws)| {
            std::thread::spawn(move || ProcessGroup::new(&config(rank, ws, port, TIMEOUT)))
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("rank thread"))
        .collect()
}

#[test]
fn world_size_mismatch_is_reported_by_both_ranks_at_once() {
    for sizes in [[3, 2], [2, 3]] {
        let start = Instant::now();
        let results = join_pair(sizes);
        assert!(
            start.elapsed() < TIMEOUT,
            "took {:?}: rank 0 waited out its timeout",
            start.elapsed()
        );
        for (rank, result) in results.into_iter().enumerate() {
            let err = result
                .err()
                .unwrap_or_else(|| panic!("{sizes:?}: rank {rank} joined"));
            println!("{sizes:?} rank {rank}: {err}");
            assert!(
                matches!(err, DistError::WorldSizeMismatch { rank: 1, world_size, rank0_world_size }
                    if world_size == sizes[1] && rank0_world_size == sizes[0]),
                "{sizes:?}: rank {rank}: {err}"
            );
            assert!(err.to_string().contains("world size mismatch"), "{err}");
        }
    }
}

#[test]
fn occupied_port_is_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let err = ProcessGroup::new(&config(0, 2, port, TIMEOUT))
        .err()
        .expect("port in use");
    println!("{err}");
    assert!(
        matches!(err, DistError::PortInUse { port: p, .. } if p == port),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("port {port} is already in use")),
        "{err}"
    );
}

#[test]
fn unreachable_master_fails_within_the_timeout() {
    let start = Instant::now();
    let err = ProcessGroup::new(&config(1, 2, free_port(), TIMEOUT))
        .err()
        .expect("no master");
    println!("{err}");
    assert!(
        start.elapsed() < TIMEOUT + MARGIN,
        "took {:?}",
        start.elapsed()
    );
    assert!(matches!(err, DistError::MasterUnreachable { .. }), "{err}");
    assert!(err.to_string().contains("not reachable within 3s"), "{err}");
}

#[test]
fn bad_configurations_are_rejected_before_any_network() {
    let err = ProcessGroup::new(&config(2, 2, 1, TIMEOUT)).err().unwrap();
    assert!(
        err.to_string()
            .contains("rank 2 is not below the world size 2"),
        "{err}"
    );
    let mut nccl = config(0, 1, free_port(), TIMEOUT);
    nccl.backend = Backend::Nccl;
    if !NCCL_AVAILABLE {
        let err = ProcessGroup::new(&nccl).err().unwrap();
        assert!(matches!(err, DistError::NcclUnavailable), "{err}");
    }
}

/// NCCL where it can run: a group of one on CUDA device 0; without a GPU, a clean error.
#[test]
fn nccl_group_of_one_or_a_clean_error() {
    if !NCCL_AVAILABLE {
        return;
    }
    let mut cfg = config(0, 1, free_port(), TIMEOUT);
    cfg.backend = Backend::Nccl;
    let created = ProcessGroup::new(&cfg);
    if !tch::Cuda::is_available() {
        let err = created.err().expect("NCCL without a GPU");
        println!("{err}");
        assert!(matches!(err, DistError::Rendezvous { .. }), "{err}");
        return;
    }
    let pg = created.expect("NCCL group of one");
    let t = Tensor::from_slice(&[1.0f32, -2.0]).to_device(tch::Device::Cuda(0));
    pg.all_reduce_sum_(&t).unwrap();
    pg.broadcast_(&t, 0).unwrap();
    assert_eq!(pg.all_gather(&t).unwrap().len(), 1);
    pg.barrier().unwrap();
    assert_eq!(
        Vec::<f32>::try_from(&t.to_device(tch::Device::Cpu)).unwrap(),
        [1.0, -2.0]
    );
}
