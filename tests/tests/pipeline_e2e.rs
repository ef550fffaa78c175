//! The whole path on a model this project trained: `dino-train train` (a tiny model, one
//! epoch), `dino-export --outputs attention`, then `dino-run index` + `classify` on the
//! CIFAR-10 subset must give exactly the top-1 of `dino-train knn` on the same data with the
//! same eval transform (native 32x32: the checkpoint's eval transform is resize = crop = 32,
//! which the export carries in its metadata), and `dino-run attention` writes a PNG.

use std::path::PathBuf;
use std::process::Command;

use dino_core::image_io::ImageFolder;
use dino_tests::runtime::{dino_run, json};
use dino_tests::{
    bin, cifar_subset, data_dir, dino_train, output_ok, s, scratch, write_tiny_config,
};

/// The vote of both sides.
const K: &str = "20";
const T: &str = "0.07";

#[test]
fn trained_exported_model_classifies_as_dino_train_knn() {
    let dir = scratch("pipeline");
    let data = cifar_subset(&dir, "train", 20);
    let cfg = write_tiny_config(&dir, "knn_resize = 32\nknn_crop = 32\n");
    let run = dir.join("run");
    let o = dino_train(&cfg, &data, &run, &["--epochs", "1"]);
    assert!(
        o.status.success(),
        "dino-train failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let teacher = run.join("teacher.safetensors");

    let model = dir.join("model.onnx");
    dino_tests::run_ok(
        Command::new(bin("dino-export"))
            .args(["--outputs", "attention", "--img-size", "32", "--checkpoint"])
            .arg(&teacher)
            .arg("--to")
            .arg(&model),
        "dino-export",
    );

    let (train, test) = (
        data_dir().join("cifar10-mini/train"),
        data_dir().join("cifar10-mini/test"),
    );
    let o = output_ok(
        Command::new(bin("dino-train"))
            .args(["knn", "--native", "--json", "--quiet", "--device", "cpu"])
            .args(["--k", K, "--temperature", T, "--checkpoint"])
            .arg(&teacher)
            .arg("--train")
            .arg(&train)
            .arg("--val")
            .arg(&test),
        "dino-train knn",
    );
    let knn = json(&o);
    assert_eq!(
        (knn["resize"].as_u64(), knn["crop"].as_u64()),
        (Some(32), Some(32))
    );
    assert_eq!(knn["skipped"].as_u64(), Some(0));
    let knn_top1 = knn["top1"].as_f64().expect("top1");

    let gallery = dir.join("gallery.dgal");
    output_ok(
        dino_run(&dir)
            .args(["--threads", "2", "index", "--model"])
            .arg(&model)
            .arg("--images")
            .arg(&train)
            .arg("--out")
            .arg(&gallery),
        "dino-run index",
    );
    let (images, labels): (Vec<PathBuf>, Vec<usize>) = ImageFolder::scan(&test)
        .expect("scan test split")
        .samples
        .into_iter()
        .unzip();
    let out = json(&output_ok(
        dino_run(&dir)
            .args([
                "--threads",
                "2",
                "classify",
                "--json",
                "--k",
                K,
                "--temperature",
                T,
            ])
            .arg("--model")
            .arg(&model)
            .arg("--gallery")
            .arg(&gallery)
            .args(&images),
        "dino-run classify",
    ));
    let items = out.as_array().expect("JSON array");
    assert_eq!(items.len(), images.len());
    let hits = items
        .iter()
        .zip(&images)
        .zip(&labels)
        .filter(|((it, p), l)| {
            assert_eq!(it["image"].as_str(), Some(s(p).as_str()));
            it["top"][0]["index"].as_u64() == Some(**l as u64)
        })
        .count();
    let classify_top1 = hits as f64 * 100.0 / images.len() as f64;
    eprintln!(
        "dino-run classify top-1 {classify_top1:.2}%, dino-train knn top-1 {knn_top1:.2}% ({} test images)",
        images.len()
    );
    assert!(
        (classify_top1 - knn_top1).abs() < 1e-9,
        "dino-run classify top-1 {classify_top1} != dino-train knn top-1 {knn_top1}"
    );

    let png = dir.join("attention.png");
    output_ok(
        dino_run(&dir)
            .args(["attention", "--model"])
            .arg(&model)
            .arg(data_dir().join("photos/chelsea.png"))
            .arg("--out")
            .arg(&png),
        "dino-run attention",
    );
    let img = dino_core::image_io::load_rgb(&png).expect("attention PNG");
    assert!(
        img.width() > 32 && img.height() > 32,
        "{:?}",
        img.dimensions()
    );
    std::fs::remove_dir_all(&dir).ok();
}
