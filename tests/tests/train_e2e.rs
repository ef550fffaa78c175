//! `dino-train` driven as a user would: exact resume, skipped corrupt files, a NaN stop
//! that keeps the last good checkpoint, and clear errors for bad configurations.

use std::path::{Path, PathBuf};
use std::process::Output;

use dino_core::st::StFile;
use dino_tests::{
    TINY_CONFIG, bin, cifar_subset, dino_train as train, dynamic_deps, python, scratch,
    write_tiny_config,
};

fn write_config(dir: &Path) -> PathBuf {
    write_tiny_config(dir, "")
}

/// `per_class` training images of each CIFAR class copied into a fresh ImageFolder.
fn cifar_train(dir: &Path, per_class: usize) -> PathBuf {
    cifar_subset(dir, "train", per_class)
}

#[track_caller]
fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "dino-train failed:\n{err}");
    err
}

#[test]
fn resume_gives_the_same_teacher_as_an_uninterrupted_run() {
    exact_resume("resume", &[]);
}

/// The same with jitter/blur/... as batched tensor ops after the upload (here on CPU).
#[test]
fn resume_is_exact_with_the_device_photometric_stage() {
    exact_resume("resume-photo", &["--photometric", "device"]);
}

fn exact_resume(name: &str, extra: &[&str]) {
    let dir = scratch(name);
    let data = cifar_train(&dir, 6);
    let cfg = write_config(&dir);
    let with = |args: &[&'static str]| -> Vec<&str> { args.iter().chain(extra).copied().collect() };
    ok(&train(&cfg, &data, &dir.join("straight"), &with(&[])));
    let stopped = ok(&train(
        &cfg,
        &data,
        &dir.join("split"),
        &with(&["--stop-after", "1"]),
    ));
    assert!(stopped.contains("--resume"), "{stopped}");
    assert!(!dir.join("split/teacher.safetensors").exists());
    // Without --resume an existing run is never overwritten.
    let refused = train(&cfg, &data, &dir.join("split"), &with(&[]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    ok(&train(
        &cfg,
        &data,
        &dir.join("split"),
        &with(&["--resume"]),
    ));

    let a = StFile::read(&dir.join("straight/teacher.safetensors")).unwrap();
    let b = StFile::read(&dir.join("split/teacher.safetensors")).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (k, t) in &a.tensors {
        assert_eq!(
            t, &b.tensors[k],
            "teacher tensor `{k}` differs after resume"
        );
    }
    // The two runs logged the same losses.
    let losses = |run: &str| -> Vec<String> {
        std::fs::read_to_string(dir.join(run).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"kind\":\"step\""))
            .map(|l| {
                l.split("\"loss\":")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(losses("straight"), losses("split"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn corrupt_and_foreign_files_are_skipped_and_counted() {
    let dir = scratch("corrupt");
    let data = cifar_train(&dir, 4);
    let good = std::fs::read(data.join("cat/0000.jpg")).unwrap();
    std::fs::write(data.join("cat/broken.jpg"), &good[..good.len() / 2]).unwrap();
    std::fs::write(data.join("dog/notes.txt"), "not an image").unwrap();
    let cfg = write_config(&dir);
    let err = ok(&train(&cfg, &data, &dir.join("run"), &["--epochs", "1"]));
    assert!(err.contains("broken.jpg"), "{err}");
    assert!(err.contains("notes.txt"), "{err}");
    assert!(err.contains("2 unreadable file(s) were skipped"), "{err}");
    let log = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    assert!(log.contains("\"skipped_files\":2"), "{log}");
    std::fs::remove_dir_all(dir).ok();
}

/// A teacher and a student so hot that both are uniform: the loss sits at ln(out_dim) and
/// the collapse warning must reach stderr even with `--quiet` and stderr piped (the
/// progress bar is hidden then, and a hidden bar swallows what is printed through it).
#[test]
fn uniform_collapse_is_reported_with_quiet_output() {
    let dir = scratch("collapse");
    let data = cifar_train(&dir, 4);
    let cfg = write_config(&dir);
    let err = ok(&train(
        &cfg,
        &data,
        &dir.join("run"),
        &[
            "--epochs",
            "1",
            "--teacher_temp",
            "1000",
            "--warmup_teacher_temp",
            "1000",
            "--student_temp",
            "1000",
        ],
    ));
    assert!(
        err.contains("warning: epoch 0") && err.contains("collapse to the uniform distribution"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let dir = scratch("nan");
    let data = cifar_train(&dir, 4);
    let cfg = write_config(&dir);
    let run = dir.join("run");
    ok(&train(&cfg, &data, &run, &["--stop-after", "1"]));
    let ckpt = run.join("checkpoint.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    // An absurd learning rate makes the weights, then the loss, overflow.
    let o = train(
        &cfg,
        &data,
        &run,
        &["--resume", "--lr", "1e35", "--clip_grad", "0"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "training with a non-finite loss must fail"
    );
    assert!(
        err.contains("training stopped") && err.contains("intact"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "checkpoint was modified"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_configurations_are_clear_errors() {
    let dir = scratch("badcfg");
    let cfg = write_config(&dir);
    let empty = dir.join("empty");
    std::fs::create_dir_all(empty.join("class")).unwrap();
    let o = train(&cfg, &empty, &dir.join("r1"), &[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no images found"),
        "{:?}",
        o
    );

    let o = train(&cfg, &empty, &dir.join("r2"), &["--lerning_rate", "1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("lerning_rate"));

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, format!("{TINY_CONFIG}\nmomentum_teachr = 0.9\n")).unwrap();
    let o = train(&bad, &empty, &dir.join("r3"), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("momentum_teachr") && err.contains("bad.toml"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// The linker's `--as-needed` would drop libtorch_cuda (no symbol of it is referenced) and
/// CUDA would silently be missing; the build force-links it whenever the wheel has it.
#[test]
fn dino_train_links_libtorch_cuda_when_the_wheel_has_it() {
    let out = python()
        .args([
            "-c",
            "import os, torch; print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .expect("python");
    let lib = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("lib");
    let needed = dynamic_deps(&bin("dino-train"));
    assert!(needed.iter().any(|l| l == "libtorch_cpu.so"), "{needed:?}");
    if lib.join("libtorch_cuda.so").exists() {
        assert!(needed.iter().any(|l| l == "libtorch_cuda.so"), "{needed:?}");
    }
}

#[test]
fn resume_needs_a_checkpoint_and_epochs_to_go() {
    let dir = scratch("resume-nothing");
    let cfg = write_config(&dir);
    let data = cifar_train(&dir, 2);
    let out = dir.join("fresh");
    let o = train(&cfg, &data, &out, &["--resume"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "resumed nothing:\n{err}");
    assert!(err.contains("no checkpoint to continue from"), "{err}");

    // A checkpoint past the epochs asked for now (as a crafted one claiming epoch 99 would
    // be) is refused, not taken as a finished run.
    ok(&train(&cfg, &data, &out, &["--epochs", "2"]));
    let o = train(&cfg, &data, &out, &["--resume", "--epochs", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("at epoch 2, past epochs 1"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

/// `--time-limit` stops after the epoch that spends the budget and still writes the teacher
/// (here a budget of 6 ms: one epoch of the two); `--stop-after 0` writes the teacher of the
/// initialisation without a step, and no checkpoint.
#[test]
fn time_limit_and_stop_after_zero_write_the_teacher() {
    let dir = scratch("time-limit");
    let data = cifar_train(&dir, 4);
    let cfg = write_config(&dir);
    let run = dir.join("timed");
    let err = ok(&train(&cfg, &data, &run, &["--time-limit", "0.0001"]));
    assert!(err.contains("time limit reached after 1 epoch"), "{err}");
    assert!(run.join("teacher.safetensors").exists());
    assert!(run.join("checkpoint.safetensors").exists());
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(log.matches("\"kind\":\"epoch\"").count(), 1, "{log}");
    // The run can go on to its last epoch.
    ok(&train(&cfg, &data, &run, &["--resume"]));
    let bad = train(&cfg, &data, &dir.join("bad"), &["--time-limit", "0"]);
    assert!(!bad.status.success());

    let init = dir.join("init");
    let err = ok(&train(&cfg, &data, &init, &["--stop-after", "0"]));
    assert!(err.contains("no epoch run"), "{err}");
    assert!(init.join("teacher.safetensors").exists());
    assert!(!init.join("checkpoint.safetensors").exists());
    let a = StFile::read(&init.join("teacher.safetensors")).unwrap();
    let b = StFile::read(&run.join("teacher.safetensors")).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    assert!(
        a.tensors.iter().any(|(k, t)| t != &b.tensors[k]),
        "the trained teacher equals the initial one"
    );
    std::fs::remove_dir_all(dir).ok();
}
