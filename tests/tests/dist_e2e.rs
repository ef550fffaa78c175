//! `dino-train` in two processes on one machine, as a user launches it: the built-in
//! launcher (`--nproc_per_node 2`) and torchrun from the venv both train and resume; a
//! rank killed mid-run makes the other exit non-zero within `--dist_timeout`, and the run
//! then resumes from its last checkpoint. Gloo on 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dino_core::st::StFile;
use dino_tests::{bin, cifar_subset, dino_train, scratch, write_tiny_config};

/// 5 images of each class: 50 images, 25 per rank, one batch of 8 per rank and step.
fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(name);
    let data = cifar_subset(&dir, "train", 5);
    let cfg = write_tiny_config(&dir, "");
    (dir, data, cfg)
}

#[track_caller]
fn ok(o: &std::process::Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "dino-train failed:\n{err}");
}

fn epoch_of(out: &Path) -> usize {
    let f = StFile::read(&out.join("checkpoint.safetensors")).expect("checkpoint");
    f.meta("dino_rs.epoch")
        .expect("epoch")
        .parse()
        .expect("number")
}

#[test]
fn launcher_trains_and_resumes_with_two_ranks() {
    let (dir, data, cfg) = setup("dist-launcher");
    let out = dir.join("run");
    let two = [
        "--nproc_per_node",
        "2",
        "--epochs",
        "2",
        "--batch_size_per_gpu",
        "8",
    ];
    ok(&dino_train(
        &cfg,
        &data,
        &out,
        &[&two[..], &["--stop-after", "1"]].concat(),
    ));
    assert_eq!(epoch_of(&out), 1);
    ok(&dino_train(
        &cfg,
        &data,
        &out,
        &[&two[..], &["--resume"]].concat(),
    ));
    assert_eq!(epoch_of(&out), 2);
    assert!(out.join("teacher.safetensors").exists());
    // Rank 0 alone wrote the log: one epoch row per epoch.
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    assert_eq!(log.matches("\"kind\":\"epoch\"").count(), 2, "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn torchrun_launches_dino_train() {
    let python = PathBuf::from(std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into()));
    let torchrun = python.with_file_name("torchrun");
    if !torchrun.exists() {
        eprintln!(
            "skipped torchrun_launches_dino_train: no torchrun beside {}",
            python.display()
        );
        return;
    }
    let (dir, data, cfg) = setup("dist-torchrun");
    let out = dir.join("run");
    let o = Command::new(&torchrun)
        .args(["--standalone", "--nproc_per_node", "2", "--no-python"])
        .arg(bin("dino-train"))
        .args([
            "train",
            "--quiet",
            "--epochs",
            "1",
            "--batch_size",
            "8",
            "--config",
        ])
        .arg(&cfg)
        .arg("--data_path")
        .arg(&data)
        .arg("--output_dir")
        .arg(&out)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("run torchrun");
    ok(&o);
    assert_eq!(epoch_of(&out), 1);
    let _ = std::fs::remove_dir_all(dir);
}

/// One rank process, launched by hand with torchrun's variables.
fn rank(r: usize, port: u16, cfg: &Path, data: &Path, out: &Path) -> std::process::Child {
    Command::new(bin("dino-train"))
        .args(["train", "--quiet", "--epochs", "40", "--batch_size", "8"])
        .args(["--dist_timeout", "20", "--config"])
        .arg(cfg)
        .arg("--data_path")
        .arg(data)
        .arg("--output_dir")
        .arg(out)
        .env("RANK", r.to_string())
        .env("LOCAL_RANK", r.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rank")
}

#[test]
fn a_killed_rank_stops_the_other_and_the_run_resumes() {
    let (dir, data, cfg) = setup("dist-kill");
    let out = dir.join("run");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut r0 = rank(0, port, &cfg, &data, &out);
    let mut r1 = rank(1, port, &cfg, &data, &out);
    // Wait for the first checkpoint, then kill rank 1 mid-run.
    let start = Instant::now();
    while !out.join("checkpoint.safetensors").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    r1.kill().expect("kill rank 1");
    let _ = r1.wait();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = r0.try_wait().expect("wait") {
            break s;
        }
        if killed.elapsed() > Duration::from_secs(20 + 30) {
            let _ = r0.kill();
            let _ = r0.wait();
            panic!(
                "rank 0 still running {:?} after rank 1 was killed",
                killed.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut r0.stderr.take().expect("stderr"), &mut err).ok();
    assert!(
        !status.success(),
        "rank 0 must fail when rank 1 dies:\n{err}"
    );
    assert!(
        err.contains("distributed training"),
        "the error says what failed:\n{err}"
    );
    eprintln!("rank 0 stopped {:?} after the kill", killed.elapsed());

    // The last checkpoint is whole and the run continues from it.
    let saved = epoch_of(&out);
    assert!(saved >= 1);
    let more = (saved + 1).to_string();
    let resume = [
        "--nproc_per_node",
        "2",
        "--resume",
        "--batch_size",
        "8",
        "--epochs",
        &more,
    ];
    ok(&dino_train(&cfg, &data, &out, &resume));
    assert_eq!(epoch_of(&out), saved + 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn gathered_knn_of_two_ranks_equals_the_one_process_knn() {
    let (dir, data, cfg) = setup("dist-knn");
    let val = cifar_subset(&dir, "test", 3);
    let out = dir.join("run");
    let val_arg = val.to_string_lossy().into_owned();
    let train_arg = data.to_string_lossy().into_owned();
    let knn = [
        "--nproc_per_node",
        "2",
        "--epochs",
        "1",
        "--batch_size_per_gpu",
        "8",
        "--knn_freq",
        "1",
        "--knn_train",
        &train_arg,
        "--knn_val",
        &val_arg,
    ];
    ok(&dino_train(&cfg, &data, &out, &knn));
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    let row: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["kind"] == "knn")
        .expect("a k-NN row");
    let o = Command::new(bin("dino-train"))
        .args([
            "knn",
            "--quiet",
            "--json",
            "--device",
            "cpu",
            "--k",
            "20",
            "--checkpoint",
        ])
        .arg(out.join("teacher.safetensors"))
        .arg("--train")
        .arg(&data)
        .arg("--val")
        .arg(&val)
        .output()
        .expect("run dino-train knn");
    ok(&o);
    let single: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(
        row["top1"], single["top1"],
        "gathered {row} vs one process {single}"
    );
    assert_eq!(
        row["top5"], single["top5"],
        "gathered {row} vs one process {single}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
