//! The model that runs is the model asked for: dino-run refuses an export with damaged
//! bytes, its optimised-graph cache follows the model's content (not its path, size or
//! date, which `cp -p`, `rsync -a` and `tar` carry over), a damaged cache entry is rebuilt,
//! and no tool writes its output over its input.

use std::path::{Path, PathBuf};

use dino_core::testing::cosine;
use dino_tests::runtime::*;
use dino_tests::{data_dir, output_ok, root, s, scratch};

fn export(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let teacher = root().join("demo/teacher.safetensors");
    dino_tests::export::export_ok(&["--checkpoint", &s(&teacher), "--to", &s(&out)]);
    out
}

fn embed(dir: &Path, model: &Path, extra: &[&str]) -> Vec<f32> {
    let mut c = dino_run(dir);
    c.args(extra)
        .args(["embed", "--json", "--model"])
        .arg(model)
        .arg(data_dir().join("photos/coffee.png"));
    floats(&json(&output_ok(&mut c, "dino-run embed"))[0]["embedding"])
}

#[test]
fn a_damaged_export_is_refused() {
    let dir = scratch("integrity-damaged");
    let model = export(&dir, "m.onnx");
    embed(&dir, &model, &[]);
    // Flip one bit in the middle of the file: inside the weights.
    let mut bytes = std::fs::read(&model).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&model, &bytes).unwrap();
    // Refused on the warm path (its optimised graph, cached under the digest the file
    // records, loads while the file is hashed) and on the cold one.
    for extra in [&[][..], &["--no-cache"]] {
        let mut c = dino_run(&dir);
        c.args(["embed", "--model"])
            .arg(&model)
            .args(extra)
            .arg(data_dir().join("photos/coffee.png"));
        let out = c.output().unwrap();
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "a damaged model ran ({extra:?}):\n{err}"
        );
        assert!(err.contains("m.onnx") && err.contains("damaged"), "{err}");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// Two models of one architecture: the demo teacher and a fixture of the same shape.
fn two_models(dir: &Path) -> (PathBuf, PathBuf) {
    let args = ["--img", "32", "--resize", "32", "--patch", "8"];
    let a = fixture(dir, "a.onnx", &args);
    let mut b_args = args.to_vec();
    b_args.extend(["--seed", "1"]);
    let b = fixture(dir, "b.onnx", &b_args);
    (a, b)
}

#[test]
fn the_graph_cache_follows_content_not_dates() {
    let dir = scratch("integrity-cache");
    let (a, b) = two_models(&dir);
    assert_eq!(
        std::fs::metadata(&a).unwrap().len(),
        std::fs::metadata(&b).unwrap().len(),
        "the fixtures should have one size, as two exports of one architecture do"
    );
    let truth_b = embed(&dir, &b, &["--no-cache"]);
    // Run a at path P, so that its optimised graph is cached; then put b's bytes at P
    // with a's size and modification time, as `cp -p` of another export does.
    let p = dir.join("model.onnx");
    std::fs::copy(&a, &p).unwrap();
    let truth_a = embed(&dir, &p, &[]);
    std::fs::copy(&b, &p).unwrap();
    let touched = std::process::Command::new("touch")
        .arg("-r")
        .arg(&a)
        .arg(&p)
        .status()
        .unwrap();
    assert!(touched.success());
    let after = embed(&dir, &p, &[]);
    assert!(
        cosine(&after, &truth_b) > 0.99999,
        "the cache ran another model"
    );
    assert!(
        cosine(&truth_a, &truth_b) < 0.999,
        "the fixtures are too alike to tell"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_damaged_cache_entry_is_rebuilt() {
    let dir = scratch("integrity-cache-damaged");
    let (a, _) = two_models(&dir);
    let first = embed(&dir, &a, &[]);
    let cache = dir.join("cache/dino-rs/ort");
    let mut damaged = 0;
    for e in std::fs::read_dir(&cache).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".onnx") || name.ends_with(".onnx.data") {
            let mut bytes = std::fs::read(&p).unwrap();
            let at = bytes.len() * 3 / 4;
            bytes[at] ^= 0x40;
            std::fs::write(&p, &bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no cache entry in {}", cache.display());
    let second = embed(&dir, &a, &[]);
    assert!(
        cosine(&first, &second) > 0.99999,
        "a damaged cache entry ran"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn outputs_never_replace_inputs() {
    let dir = scratch("integrity-distinct");
    let teacher = dir.join("teacher.safetensors");
    std::fs::copy(root().join("demo/teacher.safetensors"), &teacher).unwrap();
    let before = std::fs::read(&teacher).unwrap();
    let err = dino_tests::export::export_err(&["--checkpoint", &s(&teacher), "--to", &s(&teacher)]);
    assert!(err.contains("replace the input"), "{err}");
    let err = dino_tests::export::export_err(&[
        "import",
        &s(&teacher),
        "--to",
        &s(&dir.join(".").join("teacher.safetensors")),
    ]);
    assert!(err.contains("replace the input"), "{err}");
    assert_eq!(
        std::fs::read(&teacher).unwrap(),
        before,
        "the input changed"
    );

    let model = export(&dir, "m.onnx");
    let model_bytes = std::fs::read(&model).unwrap();
    let mut c = dino_run(&dir);
    c.args(["attention", "--model"])
        .arg(&model)
        .arg(data_dir().join("photos/coffee.png"))
        .arg("--out")
        .arg(&model);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("replace the input"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&model).unwrap(), model_bytes);
    std::fs::remove_dir_all(dir).ok();
}

/// The modification times of the graph-cache entries under `dir`'s cache.
fn cache_entries(dir: &Path) -> Vec<(String, std::time::SystemTime)> {
    let cache = dir.join("cache/dino-rs/ort");
    let mut entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let t = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), t)
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn a_cache_entry_is_reused_with_or_without_a_recorded_digest() {
    let dir = scratch("integrity-cache-reuse");
    // A fixture written without a digest, and an export that records one.
    let (plain, _) = two_models(&dir);
    let exported = export(&dir, "m.onnx");
    for model in [plain, exported] {
        let _ = std::fs::remove_dir_all(dir.join("cache"));
        let first = embed(&dir, &model, &[]);
        let written = cache_entries(&dir);
        assert!(
            written.iter().any(|(n, _)| n.ends_with(".seal")),
            "{written:?}"
        );
        let second = embed(&dir, &model, &[]);
        assert_eq!(first, second);
        assert_eq!(
            cache_entries(&dir),
            written,
            "{}: the cache entry was written again instead of loaded",
            model.display()
        );
    }
    std::fs::remove_dir_all(dir).ok();
}
