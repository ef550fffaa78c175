//! `dino-export --linear-head` and the classes it gives `dino-run`:
//! - the models pass `onnx.checker` (full check), and the `logits` output equals the official `eval_linear.py` probe over the PyTorch
//!   reference backbone (`tests/python/linear_ref.py`) on real photos: fp32 within 1e-4
//!   max-abs, fp16 within 0.02 (weights and arithmetic in float16 through 12 blocks;
//!   logits of a few units), for n_last_blocks 1 and 4, avgpool on and off, opsets 13, 17 and 20, with
//!   and without the other optional outputs; the embedding is unchanged;
//! - `dino-run classify` without a gallery prints the reference's argmax class and its
//!   softmax probabilities (text and `--json`), and `serve`'s `/v1/classify` answers the
//!   same without a gallery;
//! - probes of other backbones, other files and unsupported layouts are refused by name,
//!   and classifying with neither logits nor gallery says what to do.

use std::path::{Path, PathBuf};

use dino_core::linear::{LinearHead, LinearHeadConfig, META_LINEAR};
use dino_core::onnx_meta as m;
use dino_core::st::StFile;
use dino_core::testing::{assert_close, max_abs_diff};
use dino_export::onnx::proto::ModelProto;
use dino_tests::export::{REF, compare_linear, export_err, export_ok, weights};
use dino_tests::runtime::{dino_run, json, stderr};
use dino_tests::serve::Server;
use dino_tests::{data_dir, http, output_ok, run_python, s, scratch, sorted_files};
use prost::Message;

const ATOL: f32 = 1e-4;
const FP16_ATOL: f32 = 0.02;

fn fingerprint(w: &Path) -> String {
    let st = StFile::read(w).unwrap();
    m::fingerprint(
        st.tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.data.as_slice())),
    )
}

/// A probe config over the backbone `w` (its width and fingerprint).
fn config(w: &Path, classes: usize, n: usize, avgpool: bool) -> LinearHeadConfig {
    let vit = StFile::read(w).unwrap().vit_config().unwrap();
    LinearHeadConfig {
        classes: (0..classes).map(|i| format!("class_{i}")).collect(),
        embed_dim: vit.embed_dim,
        n_last_blocks: n,
        avgpool_patchtokens: avgpool,
        backbone_fingerprint: fingerprint(w),
    }
}

/// Writes a probe of `config` with seeded weights (logits of a few units) via
/// `LinearHead::write`.
fn write_probe(dir: &Path, name: &str, config: LinearHeadConfig, seed: u64) -> PathBuf {
    let mut state = seed;
    let mut next = move || {
        // splitmix64, mapped to [-1, 1).
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let (c, f) = (config.num_classes(), config.feat_dim());
    let scale = 3.0 / (f as f32).sqrt();
    let weight = (0..c * f).map(|_| next() * scale).collect();
    let bias = (0..c).map(|_| next() * 0.5).collect();
    let path = dir.join(name);
    LinearHead {
        config,
        weight,
        bias,
    }
    .write(&path)
    .unwrap();
    path
}

fn export_with(w: &Path, head: &Path, to: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--checkpoint", w.to_str().unwrap(), "--to"];
    args.extend([
        to.to_str().unwrap(),
        "--linear-head",
        head.to_str().unwrap(),
    ]);
    args.extend(extra);
    export_ok(&args)
}

fn metadata(path: &Path, key: &str) -> String {
    let model = ModelProto::decode(&std::fs::read(path).unwrap()[..]).unwrap();
    let e = model.metadata_props.iter().find(|e| e.key == key);
    e.unwrap_or_else(|| panic!("metadata {key} missing"))
        .value
        .clone()
}

#[test]
fn logits_match_the_official_probe_in_pytorch() {
    let dir = scratch("export-linear-parity");
    let w = weights(&dir, "vit_tiny", 16, 32, &[]);
    let photos = data_dir().join("photos");
    let cases = [
        (1, false, "17", ""),
        (1, true, "17", "patch_tokens,attention"),
        (1, true, "20", ""),
        (4, false, "13", "attention"),
    ];
    for (i, (n, avgpool, opset, outputs)) in cases.into_iter().enumerate() {
        let tag = format!("n{n}-avg{avgpool}-o{opset}");
        let head = write_probe(
            &dir,
            &format!("{tag}.safetensors"),
            config(&w, 7, n, avgpool),
            i as u64,
        );
        let (f32m, f16m) = (
            dir.join(format!("{tag}.onnx")),
            dir.join(format!("{tag}-fp16.onnx")),
        );
        for (to, precision) in [(&f32m, "fp32"), (&f16m, "fp16")] {
            let mut extra = vec!["--img-size", "48", "--opset", opset];
            extra.extend(["--precision", precision]);
            if !outputs.is_empty() {
                extra.extend(["--outputs", outputs]);
            }
            let text = export_with(&w, &head, to, &extra);
            assert!(text.contains("logits"), "{text}");
        }
        run_python(REF, &["check", &s(&f32m), &s(&f16m)]);
        let c = compare_linear(&dir, (&w, &head), (&f32m, Some(&f16m)), &photos, 48, &tag);
        assert_eq!(c.shape("logits"), [c.batch(), 7]);
        let want = c.values("logits", "ref");
        let (got, got16) = (c.values("logits", "ort"), c.values("logits", "ort_fp16"));
        let range = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        eprintln!(
            "{tag}: logits up to {range:.2}; max-abs vs PyTorch {:.2e} (fp32), {:.2e} (fp16)",
            max_abs_diff(&got, &want),
            max_abs_diff(&got16, &want)
        );
        assert!(range > 1.0, "{tag}: logits too small to tell layouts apart");
        assert_close(&got, &want, ATOL, 0.0);
        assert_close(&got16, &want, FP16_ATOL, 0.0);
        let emb = (c.values("embedding", "ort"), c.values("embedding", "ref"));
        assert_close(&emb.0, &emb.1, ATOL, 0.0);

        let mut names = vec!["embedding"];
        names.extend(outputs.split(',').filter(|o| !o.is_empty()));
        names.push("logits");
        for path in [&f32m, &f16m] {
            assert_eq!(metadata(path, m::META_OUTPUTS), names.join(","));
            let meta: LinearHeadConfig =
                serde_json::from_str(&metadata(path, META_LINEAR)).unwrap();
            assert_eq!(meta, LinearHead::read(&head).unwrap().config);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A 32 px model whose eval transform keeps 32x32 images as they are, a 10-class probe
/// (avgpool: the interleaved layout), and 32x32 PNGs of CIFAR-10 test images (one per
/// class), so `dino-run` and the reference see the very same pixels.
struct Classifier {
    dir: PathBuf,
    weights: PathBuf,
    head: PathBuf,
    model: PathBuf,
    images: PathBuf,
}

fn classifier(name: &str) -> Classifier {
    let dir = scratch(name);
    let eval =
        r#"{"resize_size":32,"crop_size":32,"mean":[0.485,0.456,0.406],"std":[0.229,0.224,0.225]}"#;
    let w = weights(&dir, "vit_tiny", 16, 32, &["--eval", eval]);
    let head = write_probe(&dir, "linear.safetensors", config(&w, 10, 1, true), 42);
    let model = dir.join("classifier.onnx");
    export_with(&w, &head, &model, &[]);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let test = data_dir().join("cifar10-mini/test");
    for (i, class) in sorted_files(&test).iter().enumerate() {
        let src = &sorted_files(class)[0];
        let img = image::open(src).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 32), "{}", src.display());
        img.save(images.join(format!("{i:02}.png"))).unwrap();
    }
    Classifier {
        dir,
        weights: w,
        head,
        model,
        images,
    }
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b })
}

#[test]
fn classify_without_a_gallery_answers_the_reference_class() {
    let f = classifier("export-linear-classify");
    let c = compare_linear(
        &f.dir,
        (&f.weights, &f.head),
        (&f.model, None),
        &f.images,
        32,
        "cifar",
    );
    let (classes, want) = (c.classes(), c.values("logits", "ref"));
    let images = sorted_files(&f.images);
    let mut cmd = dino_run(&f.dir);
    cmd.args(["--threads", "2", "classify", "--json", "--topk", "3"])
        .arg("--model")
        .arg(&f.model)
        .args(&images);
    let items = json(&output_ok(&mut cmd, "dino-run classify"));
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), images.len());
    let mut worst = 0f32;
    for ((item, logits), path) in items.iter().zip(want.chunks(10)).zip(&images) {
        assert_eq!(item["image"].as_str().unwrap(), s(path));
        let p = softmax(logits);
        let top = item["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["class"], classes[argmax(logits)].as_str());
        for e in top {
            let index = e["index"].as_u64().unwrap() as usize;
            assert_eq!(e["class"], classes[index].as_str());
            let share = e["share"].as_f64().unwrap() as f32;
            assert_eq!(e["score"], e["share"]);
            worst = worst.max((share - p[index]).abs());
        }
        let shares: Vec<f64> = top.iter().map(|e| e["share"].as_f64().unwrap()).collect();
        assert!(shares.windows(2).all(|w| w[0] >= w[1]), "{shares:?}");
    }
    eprintln!("softmax probabilities: max-abs {worst:.2e} vs the reference logits");
    assert!(worst < 1e-4, "{worst}");

    // Text: per image its path, then `class probability` columns.
    let mut cmd = dino_run(&f.dir);
    cmd.args(["--threads", "2", "classify", "--topk", "1", "--model"])
        .arg(&f.model)
        .args(&images);
    let out = output_ok(&mut cmd, "dino-run classify");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), images.len(), "{text}");
    for ((line, logits), path) in lines.iter().zip(want.chunks(10)).zip(&images) {
        let k = argmax(logits);
        let (name, rest) = line.split_once('\t').unwrap();
        assert_eq!(name, s(path));
        let (class, prob) = rest.split_once(' ').unwrap();
        assert_eq!(class, classes[k]);
        let prob: f32 = prob.parse().unwrap();
        assert!((prob - softmax(logits)[k]).abs() <= 5e-4, "{line}");
    }
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[test]
fn serve_classifies_with_the_logits_without_a_gallery() {
    let f = classifier("export-linear-serve");
    let images = sorted_files(&f.images);
    let mut cmd = dino_run(&f.dir);
    cmd.args(["--threads", "2", "classify", "--json", "--topk", "3"])
        .arg("--model")
        .arg(&f.model)
        .args(&images);
    let want = json(&output_ok(&mut cmd, "dino-run classify"));
    let srv = Server::start(&f.dir, &["--threads", "2"], &["--model", &s(&f.model)]);
    // The address is read from the same line, possibly before the log has it.
    let t = std::time::Instant::now();
    while !srv.logged("linear probe of 10 classes") {
        assert!(t.elapsed().as_secs() < 10, "the start line names the probe");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let files: Vec<(String, Vec<u8>)> = images
        .iter()
        .map(|p| (s(p), std::fs::read(p).unwrap()))
        .collect();
    let parts: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
    let (ct, body) = http::multipart(&parts);
    let headers = [("Content-Type", ct.as_str())];
    let r = http::request(srv.addr, "POST", "/v1/classify?topk=3", &headers, &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    for (g, w) in got.as_array().unwrap().iter().zip(want.as_array().unwrap()) {
        let (gt, wt) = (g["top"].as_array().unwrap(), w["top"].as_array().unwrap());
        assert_eq!(gt.len(), 3);
        for (a, b) in gt.iter().zip(wt) {
            assert_eq!(a["class"], b["class"], "{g} vs {w}");
            let (x, y) = (a["share"].as_f64().unwrap(), b["share"].as_f64().unwrap());
            assert!((x - y).abs() < 1e-5, "{g} vs {w}");
        }
    }
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[test]
fn probes_of_other_backbones_and_other_files_are_refused() {
    let dir = scratch("export-linear-errors");
    let w = weights(&dir, "vit_tiny", 16, 32, &[]);
    // Same width and depth, other weights (patch 8): only the fingerprint tells.
    let other = weights(&dir, "vit_tiny", 8, 32, &[]);
    let to = dir.join("m.onnx");
    let run = |head: &Path| {
        export_err(&[
            "--checkpoint",
            &s(&w),
            "--to",
            &s(&to),
            "--linear-head",
            &s(head),
        ])
    };
    let foreign = write_probe(&dir, "other.safetensors", config(&other, 3, 1, false), 1);
    let e = run(&foreign);
    for part in [
        &s(&foreign),
        &s(&w),
        "does not fit the backbone",
        "fingerprint",
    ] {
        assert!(e.contains(part), "{part}: {e}");
    }
    let mut wide = config(&w, 3, 1, false);
    wide.embed_dim = 384;
    let wide = write_probe(&dir, "wide.safetensors", wide, 2);
    let e = run(&wide);
    for part in [&s(&wide), &s(&w), "width 384", "embed_dim is 192"] {
        assert!(e.contains(part), "{part}: {e}");
    }
    let deep = write_probe(&dir, "deep.safetensors", config(&w, 3, 13, false), 3);
    assert!(run(&deep).contains("the last 13 blocks, the backbone has 12"));
    let pooled4 = write_probe(&dir, "pooled4.safetensors", config(&w, 3, 4, true), 4);
    let e = run(&pooled4);
    assert!(
        e.contains(&s(&pooled4)) && e.contains("the official layout exists for 1 only"),
        "{e}"
    );
    let e = run(&w);
    assert!(
        e.contains(&s(&w)) && e.contains("not a linear probe"),
        "{e}"
    );
    let missing = dir.join("missing.safetensors");
    assert!(run(&missing).contains(&s(&missing)));
    assert!(!to.exists(), "nothing is written on error");

    // A model without logits, classify without a gallery: what to do.
    export_ok(&["--checkpoint", &s(&w), "--to", &s(&to)]);
    let photo = data_dir().join("photos/camera.png");
    let mut cmd = dino_run(&dir);
    let o = cmd
        .args(["classify", "--model", &s(&to), &s(&photo)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    for part in [&s(&to), "no `logits` output", "--gallery", "--linear-head"] {
        assert!(e.contains(part), "{part}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
