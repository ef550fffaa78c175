//! The teacher shipped for the demo (`demo/teacher.safetensors`, the end of the
//! `configs/cifar-long.toml` run) is a trained model, not a placeholder: its weighted k-NN
//! top-1 on the CIFAR-10 subset (native 32x32 images, k=20, T=0.07) is the figure recorded
//! in BENCHMARKS.md (35.0% on the GPU that trained it) within float-order noise, far above
//! the 27.3-28.3% of a randomly initialised model of the same architecture.

use std::process::Command;

use dino_tests::{bin, data_dir, root, run_ok};

/// BENCHMARKS.md's figure minus one test image in a thousand for float-order differences
/// between the GPU that trained it and this CPU; random features score at most 28.3% here.
const MIN_TOP1: f64 = 34.9;

#[test]
fn shipped_teacher_classifies_cifar_far_above_random_features() {
    let teacher = root().join("demo/teacher.safetensors");
    assert!(teacher.exists(), "{} is missing", teacher.display());
    let stdout = run_ok(
        Command::new(bin("dino-train"))
            .args([
                "knn", "--native", "--json", "--quiet", "--device", "cpu", "--k", "20",
            ])
            .arg("--checkpoint")
            .arg(&teacher)
            .arg("--train")
            .arg(data_dir().join("cifar10-mini/train"))
            .arg("--val")
            .arg(data_dir().join("cifar10-mini/test")),
        "dino-train knn",
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout).expect("dino-train knn --json prints one object");
    let top1 = v["top1"].as_f64().expect("top1");
    eprintln!(
        "shipped teacher: k-NN top-1 {top1:.1}%, top-5 {}",
        v["top5"]
    );
    assert!(
        top1 >= MIN_TOP1,
        "shipped teacher k-NN top-1 {top1:.1}% < {MIN_TOP1}%"
    );
}
