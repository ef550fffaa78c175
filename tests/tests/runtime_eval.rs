//! `dino-run eval` against a gallery gives the k-NN accuracy of `dino-train knn` on the same
//! teacher and images (the shipped demo teacher exported to ONNX, a CIFAR-10 subset), per
//! k; folder classes are matched by name; unreadable images are counted; errors.
//!
//! The counts of hits must be equal, not merely close: both sides preprocess with
//! `dino_core::preprocess` and vote with `dino_core::knn`, and the fp32 features of ONNX
//! Runtime and libtorch differ by ~1e-6, far below the similarity gaps that decide these
//! votes (a flip would need two neighbours within 1e-6 of each other at the k-th place).

use std::path::Path;
use std::process::{Command, Output};

use dino_tests::runtime::{dino_run, stderr};
use dino_tests::{bin, cifar_subset, output_ok, root, s, scratch};

fn lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn eval(dir: &Path, model: &Path, gallery: &Path, images: &Path, extra: &[&str]) -> Output {
    dino_run(dir)
        .args(["--threads", "2", "eval", "--json", "--model", &s(model)])
        .args(["--gallery", &s(gallery), "--images", &s(images)])
        .args(extra)
        .output()
        .expect("run dino-run eval")
}

#[test]
fn eval_equals_dino_train_knn_and_reports_errors() {
    let dir = scratch("runtime-eval");
    let (train, test) = (
        cifar_subset(&dir, "train", 10),
        cifar_subset(&dir, "test", 5),
    );
    let teacher = root().join("demo/teacher.safetensors");
    let model = dir.join("demo.onnx");
    output_ok(
        Command::new(bin("dino-export")).args([
            "--img-size",
            "32",
            "--checkpoint",
            &s(&teacher),
            "--to",
            &s(&model),
        ]),
        "dino-export",
    );
    let gallery = dir.join("train.dgal");
    output_ok(
        dino_run(&dir)
            .args(["--threads", "2", "index", "--model", &s(&model)])
            .args(["--images", &s(&train), "--out", &s(&gallery)]),
        "dino-run index",
    );
    let ks = ["--nb_knn", "1", "5", "20"];
    let ours = eval(&dir, &model, &gallery, &test, &ks);
    assert!(ours.status.success(), "{}", stderr(&ours));
    let knn = output_ok(
        Command::new(bin("dino-train"))
            .args(["knn", "--native", "--json", "--quiet", "--device", "cpu"])
            .args([
                "--checkpoint",
                &s(&teacher),
                "--train",
                &s(&train),
                "--val",
                &s(&test),
            ])
            .args(ks),
        "dino-train knn",
    );
    let (ours, theirs) = (lines(&ours), lines(&knn));
    assert_eq!(ours.len(), 3);
    for (a, b) in ours.iter().zip(&theirs) {
        eprintln!(
            "k={}: dino-run eval top-1 {}/{} top-5 {}, dino-train knn top-1 {} top-5 {}",
            a["k"],
            a["top1_correct"],
            a["val_images"],
            a["top5_correct"],
            b["top1_correct"],
            b["top5_correct"]
        );
        for key in [
            "k",
            "top1_correct",
            "top5_correct",
            "train_images",
            "val_images",
            "skipped",
        ] {
            assert_eq!(a[key], b[key], "{key}: dino-run {a} vs dino-train {b}");
        }
    }

    // A subset of the gallery's classes, in a folder of its own: matched by name.
    let two = dir.join("two");
    for c in ["cat", "truck"] {
        std::fs::create_dir_all(two.join(c)).unwrap();
        for f in dino_tests::sorted_files(&test.join(c)) {
            std::fs::copy(&f, two.join(c).join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(two.join("cat/broken.jpg"), b"\xff\xd8 not a jpeg").unwrap();
    let o = eval(&dir, &model, &gallery, &two, &["--k", "20"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "an unreadable image: exit 1\n{}",
        stderr(&o)
    );
    let r = lines(&o);
    assert_eq!(
        (r[0]["val_images"].as_u64(), r[0]["skipped"].as_u64()),
        (Some(10), Some(1)),
        "{r:?}"
    );
    assert!(stderr(&o).contains("broken.jpg"), "{}", stderr(&o));

    // Errors: a class the gallery lacks, a folder without classes, bad parameters.
    std::fs::rename(two.join("truck"), two.join("lorry")).unwrap();
    let o = eval(&dir, &model, &gallery, &two, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("lorry") && stderr(&o).contains("not among the gallery"),
        "{}",
        stderr(&o)
    );
    let flat = dir.join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    std::fs::copy(
        test.join("cat")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
        flat.join("a.jpg"),
    )
    .unwrap();
    let e = stderr(&eval(&dir, &model, &gallery, &flat, &[]));
    assert!(e.contains("not an ImageFolder"), "{e}");
    let e = stderr(&eval(&dir, &model, &gallery, &test, &["--nb_knn", "0"]));
    assert!(e.contains("k must be positive"), "{e}");
    let e = stderr(&eval(
        &dir,
        &model,
        &gallery,
        &test,
        &["--temperature", "0"],
    ));
    assert!(e.contains("temperature"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
