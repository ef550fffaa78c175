//! `dino-train linear` driven as a user would: the shipped teacher probed on a slice of the
//! CIFAR-10 subset writes `linear.safetensors` (tied to the backbone by the fingerprint
//! `dino-export` computes), prints top-1/top-5, `--evaluate` reproduces the reported top-1,
//! the augmented protocol runs, and bad inputs give errors naming the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dino_core::linear::LinearHead;
use dino_tests::{bin, cifar_subset, root, run_ok, scratch};

fn teacher() -> PathBuf {
    root().join("demo/teacher.safetensors")
}

fn linear(args: &[&str], paths: &[(&str, &Path)]) -> Command {
    let mut c = Command::new(bin("dino-train"));
    c.args(["linear", "--quiet", "--device", "cpu"]).args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    c
}

/// The percentage after `label` in `text` (e.g. `top-1 36.30%`).
fn percent(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in: {text}"));
    let rest = &text[at + label.len()..];
    let end = rest.find('%').expect("a percentage");
    rest[..end].trim().parse().expect("a number")
}

fn failed(out: Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn probes_the_shipped_teacher_and_evaluate_reproduces_it() {
    let dir = scratch("linear-cli");
    let (train, val) = (
        cifar_subset(&dir, "train", 20),
        cifar_subset(&dir, "test", 10),
    );
    let out = dir.join("probe");
    let common = ["--batch_size_per_gpu", "32", "--lr", "0.05"];
    let stdout = run_ok(
        linear(&common, &[("--output_dir", &out)])
            .args(["--cached_features", "--epochs", "2"])
            .arg("--pretrained_weights")
            .arg(teacher())
            .arg("--train")
            .arg(&train)
            .arg("--val")
            .arg(&val),
        "dino-train linear",
    );
    eprintln!("{stdout}");
    let (top1, top5) = (percent(&stdout, "best top-1"), percent(&stdout, "top-5"));
    assert!(stdout.contains("200 train / 100 val images"), "{stdout}");
    // 10 classes: chance is 10% top-1 and 50% top-5; the shipped teacher's k-NN is 35%.
    assert!(top1 > 15.0 && top5 > top1, "top-1 {top1}, top-5 {top5}");

    let head = LinearHead::read(&out.join("linear.safetensors")).unwrap();
    let c = &head.config;
    assert_eq!(c.classes.len(), 10);
    assert_eq!(c.classes[0], "airplane");
    assert_eq!(
        (c.n_last_blocks, c.avgpool_patchtokens, c.embed_dim),
        (4, false, 192)
    );
    assert_eq!(head.weight.len(), 10 * 4 * 192);
    // The fingerprint is the one dino-export writes for this backbone.
    let onnx = dir.join("teacher.onnx");
    let summary = dino_export::export(&teacher(), &onnx, &Default::default()).unwrap();
    assert_eq!(c.backbone_fingerprint, summary.fingerprint);

    let log = std::fs::read_to_string(out.join("linear_log.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert!(rows[1]["train_lr"].as_f64().unwrap() < rows[0]["train_lr"].as_f64().unwrap());
    let best = rows.iter().map(|r| r["test_acc1"].as_f64().unwrap());
    assert_eq!(best.fold(0.0, f64::max), top1);

    let eval = run_ok(
        linear(&common, &[("--output_dir", &out), ("--val", &val)])
            .arg("--evaluate")
            .arg("--pretrained_weights")
            .arg(teacher()),
        "dino-train linear --evaluate",
    );
    eprintln!("{eval}");
    assert_eq!(percent(&eval, "top-1"), top1, "{eval}");
    assert_eq!(percent(&eval, "top-5"), top5, "{eval}");

    // The official protocol (random crops every epoch) on the same slice.
    let aug = dir.join("aug");
    let stdout = run_ok(
        linear(
            &common,
            &[("--output_dir", &aug), ("--train", &train), ("--val", &val)],
        )
        .args([
            "--epochs",
            "1",
            "--n_last_blocks",
            "1",
            "--avgpool_patchtokens",
        ])
        .arg("--pretrained_weights")
        .arg(teacher()),
        "dino-train linear (augmented)",
    );
    assert!(
        stdout.contains("n_last_blocks=1, avgpool_patchtokens=true"),
        "{stdout}"
    );
    let head = LinearHead::read(&aug.join("linear.safetensors")).unwrap();
    assert_eq!(head.config.feat_dim(), 2 * 192);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_inputs_name_the_file_and_the_problem() {
    let dir = scratch("linear-cli-errors");
    let data = dir.join("data");
    cifar_subset(&data, "train", 1);
    // --data_path without val/ (CIFAR's split is test/).
    let err = failed(
        linear(&[], &[("--data_path", &data), ("--output_dir", &dir)])
            .arg("--pretrained_weights")
            .arg(teacher())
            .output()
            .unwrap(),
    );
    assert!(
        err.contains(&format!("{}", data.join("val").display()))
            && err.contains("does not exist")
            && err.contains("--val"),
        "{err}"
    );

    // A file that holds no backbone.
    let not_backbone = dir.join("head.safetensors");
    let head = dino_core::linear::LinearHead {
        config: dino_core::linear::LinearHeadConfig {
            classes: vec!["a".into(), "b".into()],
            embed_dim: 2,
            n_last_blocks: 1,
            avgpool_patchtokens: false,
            backbone_fingerprint: "00".into(),
        },
        weight: vec![0.0; 4],
        bias: vec![0.0; 2],
    };
    head.write(&not_backbone).unwrap();
    let val = data.join("train");
    let err = failed(
        linear(&[], &[("--data_path", &data), ("--val", &val)])
            .arg("--pretrained_weights")
            .arg(&not_backbone)
            .output()
            .unwrap(),
    );
    assert!(
        err.contains(&not_backbone.display().to_string()) && err.contains("no backbone"),
        "{err}"
    );

    // --evaluate with a probe for another architecture, then for another backbone of the
    // same architecture.
    let evaluate = |probe: &Path| {
        failed(
            linear(&[], &[("--val", &val), ("--linear_weights", probe)])
                .arg("--evaluate")
                .arg("--pretrained_weights")
                .arg(teacher())
                .output()
                .unwrap(),
        )
    };
    let err = evaluate(&not_backbone);
    assert!(
        err.contains(&not_backbone.display().to_string()) && err.contains("embed_dim"),
        "{err}"
    );
    let other = dir.join("other.safetensors");
    let mut head = head;
    head.config.classes = (0..10).map(|i| i.to_string()).collect();
    head.config.embed_dim = 192;
    head.config.n_last_blocks = 4;
    head.weight = vec![0.0; 10 * 4 * 192];
    head.bias = vec![0.0; 10];
    head.write(&other).unwrap();
    let err = evaluate(&other);
    assert!(
        err.contains(&other.display().to_string()) && err.contains("another backbone"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}
