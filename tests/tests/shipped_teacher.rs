//! The teachers shipped for the demo are trained models, not placeholders: their weighted
//! k-NN top-1 (k=20, T=0.07) is the figure recorded in BENCHMARKS.md within float-order
//! noise. The CIFAR one (`demo/teacher.safetensors`, the end of the `configs/cifar-long.toml`
//! run) on the CIFAR-10 subset at 32x32: 35.0% on the GPU that trained it, far above the
//! 27.3-28.3% of a randomly initialised model of the same architecture. The Imagenette one
//! (`demo/imagenette-teacher.safetensors`, `configs/imagenette-cpu.toml`, 45 minutes on a
//! 2-core CPU) on the `imagenette-160` photos: 33.26%, against 30.5% at random
//! initialisation.

use std::process::Command;

use dino_tests::{bin, data_dir, root, run_ok};

/// BENCHMARKS.md's figure minus one test image in a thousand for float-order differences
/// between the GPU that trained it and this CPU; random features score at most 28.3% here.
const MIN_TOP1: f64 = 34.9;

/// BENCHMARKS.md's figure for `demo/imagenette-teacher.safetensors` (the end of
/// `bench/imagenette_cpu.sh 50`, k-NN of the 944 `val` photos against the 8,525 `train`
/// photos at the config's eval transform) minus two validation images (0.21 points) for
/// float-order differences between CPUs; the random initialisation of the same config
/// scores 30.5%.
const IMAGENETTE_MIN_TOP1: f64 = IMAGENETTE_TOP1 - 0.22;
const IMAGENETTE_TOP1: f64 = 33.26;

/// Runs `dino-train knn --json` of the shipped `teacher` (a file of `demo/`) with `args` on
/// the `data` ImageFolder pair and checks the first k's top-1 against `min_top1`.
fn check_knn(teacher: &str, args: &[&str], (train, val): (&str, &str), min_top1: f64) {
    let teacher = root().join("demo").join(teacher);
    assert!(teacher.exists(), "{} is missing", teacher.display());
    let stdout = run_ok(
        Command::new(bin("dino-train"))
            .args(["knn", "--json", "--quiet", "--device", "cpu"])
            .args(args)
            .arg(&teacher)
            .arg("--train")
            .arg(data_dir().join(train))
            .arg("--val")
            .arg(data_dir().join(val)),
        "dino-train knn",
    );
    let first = stdout.lines().next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(first).expect("one JSON object per k");
    let top1 = v["top1"].as_f64().expect("top1");
    eprintln!(
        "{}: k-NN top-1 {top1:.2}%, top-5 {}",
        teacher.display(),
        v["top5"]
    );
    assert!(
        top1 >= min_top1,
        "{}: k-NN top-1 {top1:.2}% < {min_top1:.2}%",
        teacher.display()
    );
}

#[test]
fn shipped_teacher_classifies_cifar_far_above_random_features() {
    check_knn(
        "teacher.safetensors",
        &["--native", "--k", "20", "--checkpoint"],
        ("cifar10-mini/train", "cifar10-mini/test"),
        MIN_TOP1,
    );
}

#[test]
fn shipped_imagenette_teacher_classifies_real_photos_above_random_features() {
    let eval = ["--resize", "73", "--crop", "64"];
    let knn = ["--nb_knn", "20", "--temperature", "0.07"];
    let args = [&knn[..], &eval[..], &["--pretrained_weights"]].concat();
    check_knn(
        "imagenette-teacher.safetensors",
        &args,
        ("imagenette-160/train", "imagenette-160/val"),
        IMAGENETTE_MIN_TOP1,
    );
}
