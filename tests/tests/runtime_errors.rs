//! Every bad input of `dino-run` gives a clear error: unreadable images (named, the others
//! still processed, exit 1), a gallery of another model, corrupt or truncated galleries,
//! models without metadata or the needed output, a missing ONNX Runtime library, CUDA that
//! cannot load (never a silent CPU fallback).

use std::process::Output;
use std::sync::OnceLock;

use dino_tests::runtime::*;
use dino_tests::{data_dir, output_ok, scratch};

struct Fixtures {
    dir: std::path::PathBuf,
    model: std::path::PathBuf,
    gallery: std::path::PathBuf,
}

/// One model and its gallery of a few CIFAR classes, shared by the tests below.
fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = scratch("rt-errors");
        let model = fixture(
            &dir,
            "m.onnx",
            &["--img", "32", "--resize", "32", "--patch", "8"],
        );
        let folder = dir.join("folder");
        for class in ["cat", "dog"] {
            std::fs::create_dir_all(folder.join(class)).unwrap();
            let src = data_dir().join("cifar10-mini/train").join(class);
            for e in std::fs::read_dir(&src).unwrap().take(5) {
                let p = e.unwrap().path();
                std::fs::copy(&p, folder.join(class).join(p.file_name().unwrap())).unwrap();
            }
        }
        let gallery = dir.join("g.dgal");
        let mut c = dino_run(&dir);
        c.args(["index", "--model"])
            .arg(&model)
            .arg("--images")
            .arg(&folder)
            .arg("--out")
            .arg(&gallery);
        output_ok(&mut c, "dino-run index");
        Fixtures {
            dir,
            model,
            gallery,
        }
    })
}

fn fails_with(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks `{n}`:\n{err}");
    }
}

#[test]
fn unreadable_images_are_named_and_others_processed() {
    let f = fixtures();
    let bad = f.dir.join("not-an-image.jpg");
    std::fs::write(&bad, b"this is text").unwrap();
    let missing = f.dir.join("missing.png");
    let good = data_dir().join("photos/coffee.png");
    let mut c = dino_run(&f.dir);
    c.args(["embed", "--json", "--model"])
        .arg(&f.model)
        .arg(&bad)
        .arg(&good)
        .arg(&missing);
    let out = c.output().unwrap();
    fails_with(
        &out,
        1,
        &["not-an-image.jpg", "missing.png", "could not be processed"],
    );
    let items = json(&out);
    assert!(items[0]["error"].is_string());
    assert_eq!(floats(&items[1]["embedding"]).len(), 48);
    assert!(items[2]["error"].is_string());

    // A truncated JPEG (the first 60% of a photo) is refused as Pillow refuses it, not
    // embedded with a padded grey bottom.
    let jpeg = std::fs::read(data_dir().join("photos/rocket.jpg")).unwrap();
    let cut = f.dir.join("cut.jpg");
    std::fs::write(&cut, &jpeg[..jpeg.len() * 6 / 10]).unwrap();
    let mut c = dino_run(&f.dir);
    c.args(["embed", "--model"])
        .arg(&f.model)
        .arg(&cut)
        .arg(&good);
    fails_with(&c.output().unwrap(), 1, &["cut.jpg", "truncated JPEG"]);

    // Same through classify and index.
    let mut c = dino_run(&f.dir);
    c.args(["classify", "--model"])
        .arg(&f.model)
        .arg("--gallery")
        .arg(&f.gallery)
        .arg(&bad)
        .arg(&good);
    let out = c.output().unwrap();
    fails_with(&out, 1, &["not-an-image.jpg"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("coffee.png"));
}

#[test]
fn gallery_of_another_model_is_refused() {
    let f = fixtures();
    let other = fixture(
        &f.dir,
        "other.onnx",
        &[
            "--img", "32", "--resize", "32", "--patch", "8", "--seed", "1",
        ],
    );
    let mut c = dino_run(&f.dir);
    c.args(["classify", "--model"])
        .arg(&other)
        .arg("--gallery")
        .arg(&f.gallery)
        .arg(data_dir().join("photos/coffee.png"));
    fails_with(
        &c.output().unwrap(),
        2,
        &["g.dgal", "another model", "dino-run index"],
    );
}

#[test]
fn corrupt_and_truncated_galleries_are_refused() {
    let f = fixtures();
    let bytes = std::fs::read(&f.gallery).unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "flipped.dgal",
            {
                let mut b = bytes.clone();
                let n = b.len();
                b[n - 100] ^= 1;
                b
            },
            "checksum",
        ),
        (
            "truncated.dgal",
            bytes[..bytes.len() / 2].to_vec(),
            "truncated",
        ),
        ("text.dgal", b"hello".repeat(20), "not a .dgal file"),
    ];
    for (name, data, needle) in cases {
        let p = f.dir.join(name);
        std::fs::write(&p, data).unwrap();
        let mut c = dino_run(&f.dir);
        c.args(["classify", "--model"])
            .arg(&f.model)
            .arg("--gallery")
            .arg(&p)
            .arg(data_dir().join("photos/coffee.png"));
        fails_with(&c.output().unwrap(), 2, &[name, needle]);
    }
}

#[test]
fn models_without_metadata_or_output_are_refused() {
    let f = fixtures();
    let no_attn = fixture(
        &f.dir,
        "noattn.onnx",
        &["--img", "32", "--patch", "8", "--no-attention"],
    );
    let mut c = dino_run(&f.dir);
    c.args(["attention", "--model"])
        .arg(&no_attn)
        .arg(data_dir().join("photos/coffee.png"))
        .arg("--out")
        .arg(f.dir.join("a.png"));
    fails_with(
        &c.output().unwrap(),
        2,
        &["noattn.onnx", "no `attention` output"],
    );

    let no_meta = fixture(
        &f.dir,
        "nometa.onnx",
        &["--img", "32", "--patch", "8", "--no-metadata"],
    );
    let mut c = dino_run(&f.dir);
    c.args(["embed", "--model"])
        .arg(&no_meta)
        .arg(data_dir().join("photos/coffee.png"));
    fails_with(
        &c.output().unwrap(),
        2,
        &["nometa.onnx", "dino_rs.vit", "missing"],
    );

    let garbage = f.dir.join("garbage.onnx");
    std::fs::write(&garbage, b"not a model").unwrap();
    let mut c = dino_run(&f.dir);
    c.args(["embed", "--model"])
        .arg(&garbage)
        .arg(data_dir().join("photos/coffee.png"));
    fails_with(
        &c.output().unwrap(),
        2,
        &["garbage.onnx", "not a readable ONNX model"],
    );
}

#[test]
fn missing_onnxruntime_library_says_how_to_get_it() {
    let f = fixtures();
    let img = data_dir().join("photos/coffee.png");
    let mut c = dino_run(&f.dir);
    c.args([
        "--ort-lib",
        "/nonexistent/libonnxruntime.so",
        "embed",
        "--model",
    ])
    .arg(&f.model)
    .arg(&img);
    fails_with(
        &c.output().unwrap(),
        2,
        &[
            "/nonexistent/libonnxruntime.so",
            "pip install onnxruntime==1.31.1",
            "--ort-lib",
        ],
    );
    let mut c = dino_run(&f.dir);
    c.env("ORT_DYLIB_PATH", "/nonexistent/ort.so")
        .args(["embed", "--model"])
        .arg(&f.model)
        .arg(&img);
    fails_with(
        &c.output().unwrap(),
        2,
        &["ORT_DYLIB_PATH", "/nonexistent/ort.so"],
    );
    // A file that is not a library.
    let mut c = dino_run(&f.dir);
    c.arg("--ort-lib")
        .arg(&f.model)
        .args(["embed", "--model"])
        .arg(&f.model)
        .arg(&img);
    fails_with(&c.output().unwrap(), 2, &["cannot load ONNX Runtime"]);
}

#[test]
fn cuda_that_cannot_load_is_an_error() {
    let f = fixtures();
    let mut c = dino_run(&f.dir);
    c.args(["--device", "cuda:0", "embed", "--model"])
        .arg(&f.model)
        .arg(data_dir().join("photos/coffee.png"));
    let out = c.output().unwrap();
    // The test venv has the CPU wheel, which has no CUDA execution provider.
    fails_with(&out, 2, &["CUDA", "never falls back to the CPU"]);
    let mut c = dino_run(&f.dir);
    c.args(["--device", "tpu", "embed", "--model"])
        .arg(&f.model)
        .arg(data_dir().join("photos/coffee.png"));
    fails_with(&c.output().unwrap(), 2, &["invalid device `tpu`"]);
}

#[test]
fn graphs_that_disagree_with_their_metadata_are_refused() {
    let f = fixtures();
    let photos = [
        data_dir().join("photos/coffee.png"),
        data_dir().join("photos/rocket.jpg"),
    ];
    // An embedding output that ignores the batch: two images, one row.
    let one_row = fixture(
        &f.dir,
        "onerow.onnx",
        &["--img", "32", "--patch", "8", "--first-row-only"],
    );
    let mut c = dino_run(&f.dir);
    c.args(["embed", "--batch-size", "2", "--model"])
        .arg(&one_row)
        .args(&photos);
    fails_with(
        &c.output().unwrap(),
        2,
        &["onerow.onnx", "embedding", "[2, 48]"],
    );

    // Metadata claiming another width than the graph computes.
    let wide = fixture(
        &f.dir,
        "wide.onnx",
        &[
            "--img",
            "32",
            "--patch",
            "8",
            "--meta-dim",
            "96",
            "--heads",
            "3",
        ],
    );
    let mut c = dino_run(&f.dir);
    c.args(["embed", "--model"]).arg(&wide).arg(&photos[0]);
    fails_with(&c.output().unwrap(), 2, &["wide.onnx", "embedding", "96"]);
}
