//! `dino-run` driven as a user would: embeddings against a Python pipeline (PIL +
//! torchvision + onnxruntime) at cosine >= 0.999, gallery indexing and k-NN classification,
//! attention maps, float16 models, and no libtorch in the binary.

use std::path::PathBuf;

use dino_core::knn::knn_accuracy;
use dino_core::testing::cosine;
use dino_tests::runtime::*;
use dino_tests::{data_dir, output_ok, photos, root, run_python, s, scratch};

/// Embeds the photos with dino-run and with Python; returns the minimum cosine.
fn compare_with_python(dir: &std::path::Path, model: &std::path::Path) -> f32 {
    let images = photos();
    let mut cmd = dino_run(dir);
    cmd.args([
        "--threads",
        "2",
        "embed",
        "--raw",
        "--json",
        "--batch-size",
        "3",
        "--model",
    ])
    .arg(model)
    .args(&images);
    let ours = json(&output_ok(&mut cmd, "dino-run"));
    let ref_json = dir.join("ref.json");
    let mut args = vec!["embed".to_string(), s(model), s(&ref_json)];
    args.extend(images.iter().map(|p| s(p)));
    run_python(
        "tests/python/runtime_ref.py",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ref_json).unwrap()).unwrap();
    let mut worst = 1f32;
    for (item, p) in ours.as_array().unwrap().iter().zip(&images) {
        assert_eq!(item["image"].as_str().unwrap(), s(p));
        let c = cosine(&floats(&item["embedding"]), &floats(&want[s(p)]));
        eprintln!("{}: cosine {c:.7}", p.display());
        worst = worst.min(c);
    }
    worst
}

#[test]
fn embeddings_match_python_onnxruntime() {
    let dir = scratch("rt-embed");
    let model = fixture(
        &dir,
        "vit.onnx",
        &[
            "--img", "224", "--patch", "16", "--dim", "64", "--heads", "4",
        ],
    );
    // Photos include a grayscale PNG, an RGBA PNG and a JPEG.
    let worst = compare_with_python(&dir, &model);
    assert!(worst >= 0.999, "worst cosine {worst}");

    // Default output is L2-normalised; the second run loads the cached optimised graph
    // and must give the same numbers.
    let run = |dir: &std::path::Path| {
        let mut c = dino_run(dir);
        c.args(["embed", "--json", "--model"])
            .arg(&model)
            .args(photos());
        json(&output_ok(&mut c, "dino-run"))
    };
    let first = run(&dir);
    assert!(
        std::fs::read_dir(dir.join("cache/dino-rs/ort"))
            .unwrap()
            .count()
            > 0,
        "no cache written"
    );
    let second = run(&dir);
    for (a, b) in first
        .as_array()
        .unwrap()
        .iter()
        .zip(second.as_array().unwrap())
    {
        let (a, b) = (floats(&a["embedding"]), floats(&b["embedding"]));
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        assert!(cosine(&a, &b) > 0.99999);
    }

    // `--latency` times every image on its own and gives the same embeddings.
    let mut c = dino_run(&dir);
    c.args(["embed", "--latency", "--json", "--model"])
        .arg(&model)
        .args(photos());
    let out = output_ok(&mut c, "dino-run embed --latency");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let timed: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("latency\t"))
        .collect();
    assert_eq!(timed.len(), photos().len(), "{stderr}");
    for (line, p) in timed.iter().zip(photos()) {
        let f: Vec<&str> = line.split('\t').collect();
        let ms: f64 = f[1].parse().unwrap();
        assert!(ms > 0.0 && ms.is_finite(), "{line}");
        assert_eq!(f[2], s(&p));
    }
    assert!(stderr.contains(&format!("latency: {} images, median", photos().len())));
    for (a, b) in json(&out)
        .as_array()
        .unwrap()
        .iter()
        .zip(first.as_array().unwrap())
    {
        assert_eq!(a["image"], b["image"]);
        let c = cosine(&floats(&a["embedding"]), &floats(&b["embedding"]));
        assert!(c > 0.99999, "{}: cosine {c}", a["image"]);
    }
    latency_from_stdin_answers_line_by_line(&dir, &model, &first);
    std::fs::remove_dir_all(&dir).ok();
}

/// `embed --latency -` answers each path from stdin before the next one is written (the
/// lockstep a benchmark pairing it with the server relies on), with the batch embeddings;
/// a missing file is an error line, and the run goes on.
fn latency_from_stdin_answers_line_by_line(
    dir: &std::path::Path,
    model: &std::path::Path,
    batch: &serde_json::Value,
) {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let (mut child, mut stdin) = latency_from_stdin(dir, model, &["--json"], Stdio::piped());
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let missing = dir.join("missing.jpg");
    let mut paths = photos();
    paths.insert(1, missing.clone());
    for p in &paths {
        writeln!(stdin, "{}", p.display()).unwrap();
        stdin.flush().unwrap();
        // The answer comes while stdin is still open: nothing waits for its end.
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no answer for {} within 120 s", p.display()));
        let got: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(got["image"].as_str().unwrap(), s(p));
        if *p == missing {
            assert!(
                got["error"].as_str().unwrap().contains("missing.jpg"),
                "{got}"
            );
            continue;
        }
        let want = batch
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["image"] == got["image"]);
        let c = cosine(
            &floats(&got["embedding"]),
            &floats(&want.unwrap()["embedding"]),
        );
        assert!(c > 0.99999, "{}: cosine {c}", p.display());
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing image gives exit status 1"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let timed = stderr
        .lines()
        .filter(|l| l.starts_with("latency\t"))
        .count();
    assert_eq!(timed, photos().len(), "{stderr}");

    // A line no path can be is refused, not buffered without bound.
    let (child, mut stdin) = latency_from_stdin(dir, model, &[], Stdio::null());
    // The child may stop reading early: a broken pipe here is fine.
    let _ = stdin.write_all(&vec![b'x'; 1 << 20]);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stdin: line 1 is longer than 4096 bytes"),
        "{stderr}"
    );
}

/// `dino-run embed --latency <extra> --model <model> -` with its stdin taken for the caller.
fn latency_from_stdin(
    dir: &std::path::Path,
    model: &std::path::Path,
    extra: &[&str],
    stdout: std::process::Stdio,
) -> (std::process::Child, std::process::ChildStdin) {
    use std::process::Stdio;
    let mut c = dino_run(dir);
    c.args(["embed", "--latency"])
        .args(extra)
        .arg("--model")
        .arg(model)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

#[test]
fn float16_model_matches_python() {
    let dir = scratch("rt-fp16");
    let model = fixture(
        &dir,
        "vit16.onnx",
        &["--half-io", "--img", "64", "--patch", "16"],
    );
    let worst = compare_with_python(&dir, &model);
    assert!(worst >= 0.999, "worst cosine {worst}");
    std::fs::remove_dir_all(&dir).ok();
}

fn folder_images(split: &str) -> (Vec<PathBuf>, Vec<usize>) {
    let f = dino_core::image_io::ImageFolder::scan(&data_dir().join("cifar10-mini").join(split))
        .unwrap();
    f.samples.into_iter().unzip()
}

#[test]
fn index_then_classify_equals_knn_on_embeddings() {
    let dir = scratch("rt-knn");
    let model = fixture(
        &dir,
        "cifar.onnx",
        &["--img", "32", "--resize", "32", "--patch", "8"],
    );
    let gallery = dir.join("g.dgal");
    let train_dir = data_dir().join("cifar10-mini/train");
    let mut c = dino_run(&dir);
    c.args(["index", "--model"])
        .arg(&model)
        .arg("--images")
        .arg(&train_dir)
        .arg("--out")
        .arg(&gallery);
    output_ok(&mut c, "dino-run");

    let (test, test_labels) = folder_images("test");
    let mut c = dino_run(&dir);
    c.args([
        "classify",
        "--json",
        "--k",
        "20",
        "--temperature",
        "0.07",
        "--model",
    ])
    .arg(&model)
    .arg("--gallery")
    .arg(&gallery)
    .args(&test);
    let out = json(&output_ok(&mut c, "dino-run"));
    let items = out.as_array().unwrap();
    assert_eq!(items.len(), test.len());
    let hits = items
        .iter()
        .zip(&test_labels)
        .filter(|(it, l)| it["top"][0]["index"].as_u64().unwrap() as usize == **l)
        .count();
    let classify_top1 = hits as f64 * 100.0 / test.len() as f64;
    assert_eq!(items[0]["top"].as_array().unwrap().len(), 5);

    // The same vote computed here from `dino-run embed` features.
    let embed = |paths: &[PathBuf]| -> Vec<f32> {
        let mut c = dino_run(&dir);
        c.args(["embed", "--json", "--model"])
            .arg(&model)
            .args(paths);
        json(&output_ok(&mut c, "dino-run"))
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|i| floats(&i["embedding"]))
            .collect()
    };
    let (train, train_labels) = folder_images("train");
    let (tf, qf) = (embed(&train), embed(&test));
    let dim = qf.len() / test.len();
    let (top1, _) = knn_accuracy(&tf, &train_labels, dim, 10, &qf, &test_labels, 20, 0.07).unwrap();
    eprintln!("classify top-1 {classify_top1:.2}%, knn on embeddings {top1:.2}%");
    assert!((classify_top1 - top1).abs() < 1e-9);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn attention_montage_is_written() {
    let dir = scratch("rt-attn");
    let model = fixture(
        &dir,
        "attn.onnx",
        &["--img", "64", "--patch", "16", "--heads", "3"],
    );
    let out = dir.join("attn.png");
    let mut c = dino_run(&dir);
    c.args(["attention", "--model"])
        .arg(&model)
        .arg(data_dir().join("photos/chelsea.png"))
        .arg("--out")
        .arg(&out);
    output_ok(&mut c, "dino-run");
    let img = dino_core::image_io::load_rgb(&out).unwrap();
    // 3 columns (3 heads) and 3 rows of 64px tiles with 4px gaps.
    assert_eq!(img.dimensions(), (3 * 64 + 8, 3 * 64 + 8));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn binary_has_no_libtorch() {
    let needed = dino_tests::dynamic_deps(&dino_tests::bin("dino-run"));
    eprintln!("{}", needed.join("\n"));
    for l in &needed {
        assert!(
            !l.contains("torch") && !l.contains("c10"),
            "libtorch dependency: {l}"
        );
    }
    // Not even transitively in the crate graph.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let tree = std::process::Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "-p",
            "dino-runtime",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cargo tree");
    let tree = String::from_utf8_lossy(&tree.stdout);
    assert!(tree.contains("dino-runtime"), "cargo tree failed");
    assert!(
        !tree
            .lines()
            .any(|l| l.starts_with("tch ") || l.starts_with("torch-sys ")),
        "{tree}"
    );
}

#[test]
fn help_has_examples() {
    let out = output_ok(
        std::process::Command::new(dino_tests::bin("dino-run")).arg("--help"),
        "dino-run --help",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for w in [
        "Examples:",
        "embed",
        "index",
        "classify",
        "attention",
        "--ort-lib",
        "pip install onnxruntime==1.31.1",
    ] {
        assert!(text.contains(w), "--help lacks {w}:\n{text}");
    }
}
