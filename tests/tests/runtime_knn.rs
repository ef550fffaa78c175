//! dino-core's k-NN vote against a restatement of the official `eval_knn.py` in PyTorch
//! (`tests/python/runtime_ref.py knn`): per-class scores to rtol 1e-4, top-1/top-5 equal.

use dino_core::knn::{knn_accuracy, knn_classify};
use dino_core::testing::assert_close;
use dino_tests::{run_python, scratch};

#[test]
fn weighted_vote_matches_official_formula() {
    let dir = scratch("runtime-knn");
    let out = dir.join("knn.json");
    run_python(
        "tests/python/runtime_ref.py",
        &["knn", out.to_str().unwrap()],
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let f32s = |k: &str| -> Vec<f32> {
        r[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    let usizes = |k: &str| -> Vec<usize> {
        r[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect()
    };
    let (train, test, want) = (f32s("train"), f32s("test"), f32s("scores"));
    let (train_labels, test_labels) = (usizes("train_labels"), usizes("test_labels"));
    let nc = r["num_classes"].as_u64().unwrap() as usize;
    let dim = r["dim"].as_u64().unwrap() as usize;
    let k = r["k"].as_u64().unwrap() as usize;
    let t = r["temperature"].as_f64().unwrap() as f32;

    let ranked = knn_classify(&train, &train_labels, dim, nc, &test, k, t).unwrap();
    let mut scores = vec![0f32; ranked.len() * nc];
    for (q, classes) in ranked.iter().enumerate() {
        for &(c, s) in classes {
            scores[q * nc + c] = s;
        }
    }
    // Largest weight is exp(1/0.07) ~ 1.6e6: compare relative to each query's scale.
    assert_close(&scores, &want, 1e-3, 1e-4);

    let (top1, top5) =
        knn_accuracy(&train, &train_labels, dim, nc, &test, &test_labels, k, t).unwrap();
    eprintln!(
        "top1 {top1} (official {}), top5 {top5} (official {})",
        r["top1"], r["top5"]
    );
    assert!((top1 - r["top1"].as_f64().unwrap()).abs() < 1e-9);
    assert!((top5 - r["top5"].as_f64().unwrap()).abs() < 1e-9);
    std::fs::remove_dir_all(&dir).ok();
}
