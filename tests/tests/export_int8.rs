//! `dino-export --precision int8` on the shipped demo teacher:
//! - the graph passes `onnx.checker.check_model(full_check=True)` and says `int8`;
//! - its int8 weights and scales equal `tests/python/int8_ref.py`'s numpy quantisation of
//!   the safetensors weights exactly, and ONNX Runtime's output of every int8 Linear, on
//!   its own input, equals that script's numpy DynamicQuantizeLinear + integer matmul
//!   within 1e-5 (exact in practice: the same integers, scaled once). End to end, where
//!   float rounding differences of a few ulp move some activations to the next
//!   quantisation step, ONNX Runtime and the numpy model agree within a cosine of 0.9999
//!   per image and at least twice as closely as int8 and fp32 do (embedding, patch
//!   tokens), and within a cosine of 0.999 and 0.01 max-abs (attention probabilities);
//! - accuracy against fp32 on the 1,000 CIFAR-10 test images, and of the shipped Imagenette
//!   teacher on the 944 Imagenette `val` photos: cosine of the embeddings mean >= 0.999
//!   and min >= 0.995 for both weight ranges; k-NN top-1 (5,000 / 8,525 train images,
//!   k = 10, 20, 100, 200) within 0.5 points for the range that suits the CPU
//!   (`reduced` on x86 without VNNI, whose int8 kernel in ONNX Runtime saturates int16
//!   pairs of products; `full` elsewhere);
//! - `dino-run embed`, `index`, `classify` and `attention` run on it unchanged;
//! - `--int8-range` without `--precision int8` is refused, and `--help` tells of both.

use std::path::{Path, PathBuf};

use prost::Message;

use dino_core::onnx_meta as m;
use dino_export::onnx::proto::ModelProto;
use dino_tests::runtime::{dino_run, floats, json, stderr};
use dino_tests::{cifar_subset, data_dir, output_ok, root, run_python, s, scratch, sorted_files};

const REF: &str = "tests/python/int8_ref.py";

fn teacher() -> PathBuf {
    root().join("demo/teacher.safetensors")
}

/// Exports the demo teacher to `dir/<name>.onnx` with `extra` arguments.
fn export(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    export_from(&teacher(), dir, name, extra)
}

/// Exports `checkpoint` to `dir/<name>.onnx` with `extra` arguments.
fn export_from(checkpoint: &Path, dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let to = dir.join(format!("{name}.onnx"));
    let mut args = vec![
        "--checkpoint".to_string(),
        s(checkpoint),
        "--to".into(),
        s(&to),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    dino_tests::export::export_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    to
}

fn metadata(model: &Path, key: &str) -> String {
    let model = ModelProto::decode(&std::fs::read(model).unwrap()[..]).unwrap();
    let e = model.metadata_props.iter().find(|e| e.key == key);
    e.unwrap_or_else(|| panic!("metadata {key} missing"))
        .value
        .clone()
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The first `per_class` images of each class of an ImageFolder, in class order.
fn class_images(folder: &Path, per_class: usize) -> Vec<PathBuf> {
    sorted_files(folder)
        .iter()
        .flat_map(|c| sorted_files(c).into_iter().take(per_class))
        .collect()
}

/// The first `per_class` test images of each CIFAR-10 class.
fn cifar_test_images(per_class: usize) -> Vec<PathBuf> {
    class_images(&data_dir().join("cifar10-mini/test"), per_class)
}

/// Every image of an ImageFolder, in order.
fn sorted_images(folder: &Path) -> Vec<PathBuf> {
    class_images(folder, usize::MAX)
}

/// Checks one `compare` output folder of `int8_ref.py`; `layers` is the expected number
/// of int8 Linear layers.
fn check_compare(out: &Path, layers: u64, what: &str) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let w = &manifest["weights"];
    eprintln!("{what}: weights {w}, layers {}", manifest["layers"]);
    assert_eq!(w["int8_mismatches"], 0, "{what}: {w}");
    assert_eq!(w["scale_mismatches"], 0, "{what}: {w}");
    // 6 blocks of qkv [576, 192] + proj [192, 192] + fc1 [768, 192] + fc2 [192, 768].
    assert_eq!(w["checked"], 6 * 192 * (576 + 192 + 768 + 768), "{what}");
    let l = &manifest["layers"];
    assert_eq!(l["count"], layers, "{what}: {l}");
    let diff = l["max_abs_diff"].as_f64().unwrap();
    assert!(l["max_abs"].as_f64().unwrap() > 1.0, "{what}: {l}");
    assert!(diff <= 1e-5, "{what}: an int8 layer differs by {diff}");
    let batch = manifest["batch"].as_u64().unwrap() as usize;
    for name in ["embedding", "patch_tokens", "attention"] {
        let Some(e) = manifest.get(name) else {
            continue;
        };
        let v = |tag: &str| read_f32(&out.join(e[tag].as_str().unwrap()));
        let (ort, reference, fp32) = (v("ort"), v("ref"), v("fp32"));
        let per = ort.len() / batch;
        let worst = (0..batch)
            .map(|i| {
                let r = i * per..(i + 1) * per;
                cosine(&ort[r.clone()], &reference[r])
            })
            .fold(f64::INFINITY, f64::min);
        let (to_ref, to_fp32) = (max_abs_diff(&ort, &reference), max_abs_diff(&ort, &fp32));
        eprintln!(
            "{what} {name}: ORT vs numpy int8 worst cosine {worst:.6}, max-abs {to_ref:.2e}; \
             ORT int8 vs fp32 max-abs {to_fp32:.2e}"
        );
        if name == "attention" {
            // Softmax rows amplify the end-to-end flips most; still far inside int8's error.
            assert!(worst >= 0.999, "{what} {name}: cosine {worst}");
            assert!(to_ref <= 0.01, "{what} {name}: max-abs {to_ref}");
        } else {
            assert!(worst >= 0.9999, "{what} {name}: cosine {worst}");
            assert!(
                to_ref * 2.0 <= to_fp32,
                "{what} {name}: {to_ref} vs {to_fp32}"
            );
        }
    }
}

#[test]
fn int8_graph_is_valid_and_equals_a_numpy_reference() {
    let dir = scratch("export-int8-ref");
    let images: Vec<String> = cifar_test_images(2).iter().map(|p| s(p)).collect();
    // Without patch tokens the last block runs on CLS rows only: one more Linear (q, kv).
    let all = ["--outputs", "patch_tokens,attention"];
    for (tag, extra, range, layers) in [
        ("cls", &[][..], "full", 25),
        ("all", &all[..], "full", 24),
        ("reduced", &[][..], "reduced", 25),
    ] {
        let fp32 = export(&dir, &format!("{tag}-fp32"), extra);
        let mut args = extra.to_vec();
        args.extend(["--precision", "int8", "--int8-range", range]);
        let int8 = export(&dir, &format!("{tag}-int8"), &args);
        assert_eq!(metadata(&int8, m::META_PRECISION), "int8");
        let (small, big) = (
            std::fs::metadata(&int8).unwrap().len(),
            std::fs::metadata(&fp32).unwrap().len(),
        );
        eprintln!("{tag}: int8 {small} bytes, fp32 {big} bytes");
        assert!(small * 3 < big, "{small} vs {big}");
        run_python(REF, &["check", &s(&int8)]);
        let out = dir.join(format!("{tag}-compare"));
        let mut a = vec!["compare".to_string(), "--weights".into(), s(&teacher())];
        a.extend(["--int8".into(), s(&int8), "--fp32".into(), s(&fp32)]);
        let qmax = if range == "full" { "127" } else { "63" };
        a.extend(["--out".into(), s(&out), "--qmax".into(), qmax.into()]);
        a.extend(images.iter().cloned());
        run_python(REF, &a);
        check_compare(&out, layers, tag);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn int8_range_needs_int8_and_help_shows_int8() {
    let dir = scratch("export-int8-args");
    let to = dir.join("m.onnx");
    let err = dino_tests::export::export_err(&[
        "--checkpoint",
        &s(&teacher()),
        "--to",
        &s(&to),
        "--int8-range",
        "reduced",
    ]);
    assert!(
        err.contains("--int8-range applies to --precision int8 only"),
        "{err}"
    );
    assert!(!to.exists());
    let help = dino_tests::export::export_ok(&["--help"]);
    for needle in ["--precision int8", "--int8-range reduced", "VNNI"] {
        assert!(help.contains(needle), "{needle} not in --help");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `dino-run embed --json` of `images`: the L2-normalised embeddings, in order.
fn embed(dir: &Path, model: &Path, images: &[PathBuf]) -> Vec<Vec<f32>> {
    let mut c = dino_run(dir);
    c.args(["--threads", "2", "embed", "--json", "--model"])
        .arg(model)
        .args(images);
    let out = json(&output_ok(&mut c, "dino-run embed"));
    let items = out.as_array().unwrap();
    assert_eq!(items.len(), images.len());
    items.iter().map(|i| floats(&i["embedding"])).collect()
}

/// k-NN top-1 (%) of `test` against a gallery of `train` built with `model`, for each of
/// [`KS`].
fn knn_top1(dir: &Path, model: &Path, (train, test): (&Path, &Path), tag: &str) -> Vec<f64> {
    let gallery = dir.join(format!("{tag}.dgal"));
    let mut c = dino_run(dir);
    c.args(["--threads", "2", "index", "--model"])
        .arg(model)
        .arg("--images")
        .arg(train)
        .arg("--out")
        .arg(&gallery);
    output_ok(&mut c, "dino-run index");
    let mut c = dino_run(dir);
    c.args(["--threads", "2", "eval", "--json", "--nb_knn"])
        .args(KS.map(|k| k.to_string()))
        .arg("--model")
        .arg(model)
        .arg("--gallery")
        .arg(&gallery)
        .arg("--images")
        .arg(test);
    let o = output_ok(&mut c, "dino-run eval");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), KS.len());
    lines
        .iter()
        .map(|l| {
            let n = l["val_images"].as_f64().unwrap();
            assert_eq!(n as usize, sorted_images(test).len(), "{l}");
            100.0 * l["top1_correct"].as_f64().unwrap() / n
        })
        .collect()
}

/// The k values of DINO's k-NN evaluation.
const KS: [usize; 4] = [10, 20, 100, 200];

/// Whether ONNX Runtime's uint8 x int8 kernel saturates on this CPU: x86 without VNNI
/// (the same test as `int8_ref.py`'s `saturating_kernel`).
fn saturating_cpu() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    !info
        .split_whitespace()
        .any(|f| ["avx512_vnni", "avx_vnni", "amx_int8"].contains(&f))
}

/// int8 against fp32 of `checkpoint` on the `test` images of an ImageFolder pair: cosine of
/// the embeddings (mean >= 0.999, min >= 0.995) for both weight ranges, and k-NN top-1
/// within 0.5 points at every k of [`KS`] for the range that suits this CPU (the other's
/// gallery is not built: it would add a third pass over `train` to every run).
fn int8_keeps_the_fp32_accuracy(checkpoint: &Path, (train, test): (&Path, &Path), what: &str) {
    let dir = scratch(&format!("export-int8-{what}"));
    let fp32 = export_from(checkpoint, &dir, "fp32", &[]);
    let images = sorted_images(test);
    let base = embed(&dir, &fp32, &images);
    let top1_fp32 = knn_top1(&dir, &fp32, (train, test), "fp32");
    eprintln!("{what} fp32: k-NN top-1 {top1_fp32:?}% at k = {KS:?}");
    // The range that suits this CPU must meet every criterion; the other must keep the
    // embeddings.
    let suited = if saturating_cpu() { "reduced" } else { "full" };
    for range in ["full", "reduced"] {
        let extra = ["--precision", "int8", "--int8-range", range];
        let int8 = export_from(checkpoint, &dir, range, &extra);
        let cos: Vec<f64> = embed(&dir, &int8, &images)
            .iter()
            .zip(&base)
            .map(|(x, y)| cosine(x, y))
            .collect();
        let mean = cos.iter().sum::<f64>() / cos.len() as f64;
        let min = cos.iter().cloned().fold(f64::INFINITY, f64::min);
        eprintln!(
            "{what} int8 {range} vs fp32 on {} test images: cosine mean {mean:.6} min {min:.6}",
            images.len()
        );
        assert!(mean >= 0.999, "{range}: mean cosine {mean}");
        assert!(min >= 0.995, "{range}: min cosine {min}");
        if range == suited {
            let top1 = knn_top1(&dir, &int8, (train, test), range);
            eprintln!("{what} int8 {range}: k-NN top-1 {top1:?}% at k = {KS:?}");
            for ((a, b), k) in top1_fp32.iter().zip(&top1).zip(KS) {
                assert!((a - b).abs() <= 0.5, "{range}, k = {k}: {a} vs {b}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn int8_keeps_the_fp32_accuracy_on_cifar() {
    let data = data_dir().join("cifar10-mini");
    assert_eq!(sorted_images(&data.join("test")).len(), 1000);
    int8_keeps_the_fp32_accuracy(
        &teacher(),
        (&data.join("train"), &data.join("test")),
        "cifar",
    );
}

/// The shipped Imagenette ViT on the 944 `val` photos at its native size (8,525 `train`
/// photos in the galleries).
#[test]
fn int8_keeps_the_fp32_accuracy_on_imagenette() {
    let data = data_dir().join("imagenette-160");
    int8_keeps_the_fp32_accuracy(
        &root().join("demo/imagenette-teacher.safetensors"),
        (&data.join("train"), &data.join("val")),
        "imagenette",
    );
}

/// `dino-run index` of `train` then `classify --json` of `test`: the top class of each.
fn classify(dir: &Path, model: &Path, train: &Path, test: &[PathBuf], tag: &str) -> Vec<String> {
    let gallery = dir.join(format!("{tag}.dgal"));
    let mut c = dino_run(dir);
    c.args(["index", "--model"])
        .arg(model)
        .args(["--images", &s(train), "--out", &s(&gallery)]);
    output_ok(&mut c, "dino-run index");
    let mut c = dino_run(dir);
    c.args(["classify", "--json", "--topk", "3", "--model"])
        .arg(model)
        .arg("--gallery")
        .arg(&gallery)
        .args(test);
    let out = json(&output_ok(&mut c, "dino-run classify"));
    let items = out.as_array().unwrap();
    assert_eq!(items.len(), test.len());
    items
        .iter()
        .map(|it| {
            assert_eq!(it["top"].as_array().unwrap().len(), 3, "{it}");
            it["top"][0]["class"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn dino_run_embeds_classifies_and_draws_attention_with_int8() {
    let dir = scratch("export-int8-run");
    let int8 = export(
        &dir,
        "int8",
        &["--precision", "int8", "--outputs", "attention"],
    );
    let fp32 = export(&dir, "fp32", &["--outputs", "attention"]);
    let photos = dino_tests::photos();
    let (a, b) = (embed(&dir, &int8, &photos), embed(&dir, &fp32, &photos));
    for ((x, y), p) in a.iter().zip(&b).zip(&photos) {
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{}: norm {norm}", p.display());
        let c = cosine(x, y);
        assert!(c >= 0.99, "{}: cosine to fp32 {c}", p.display());
    }

    // index + classify with each model: int8 votes as fp32 does on nearly every image.
    let train = cifar_subset(&dir, "train", 20);
    let test = cifar_test_images(3);
    let (ours, theirs) = (
        classify(&dir, &int8, &train, &test, "int8"),
        classify(&dir, &fp32, &train, &test, "fp32"),
    );
    let truth: Vec<&str> = test
        .iter()
        .map(|p| p.parent().unwrap().file_name().unwrap().to_str().unwrap())
        .collect();
    let count = |a: &[String], b: &[&str]| a.iter().zip(b).filter(|(x, y)| x == *y).count();
    let theirs_ref: Vec<&str> = theirs.iter().map(String::as_str).collect();
    let (same, hits) = (count(&ours, &theirs_ref), count(&ours, &truth));
    eprintln!(
        "classify: int8 top-1 equals fp32's on {same}/30, right on {hits}/30 (fp32 {})",
        count(&theirs, &truth)
    );
    assert!(same >= 27, "{ours:?} vs {theirs:?}");
    // Chance is 3 of 30.
    assert!(hits >= 6, "{hits}/30");

    let png = dir.join("attn.png");
    let mut c = dino_run(&dir);
    c.args(["attention", "--model"])
        .arg(&int8)
        .arg(data_dir().join("photos/chelsea.png"))
        .arg("--out")
        .arg(&png);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let img = dino_core::image_io::load_rgb(&png).unwrap();
    // 3 heads of 32px tiles (the model's input) with 4px gaps, 3 rows.
    assert_eq!(img.dimensions(), (3 * 32 + 8, 3 * 32 + 8));
    std::fs::remove_dir_all(&dir).ok();
}
