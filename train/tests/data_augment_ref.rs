//! Augmentation ops against torchvision + PIL (`python/augment_ref.py`), where they are
//! deterministic. Fixtures are generated at test time into a temp dir.

use std::path::PathBuf;

use dino_core::testing::assert_close;
use dino_tests::{data_dir, run_python};
use dino_train::data::augment::{self, CropBox, ViewParams};
use dino_train::data::{
    AugmentConfig, ColorJitterParams, JitterOp, MultiCrop, PhotometricParams, color,
};
use image::RgbImage;
use serde_json::Value;

struct Fixtures {
    dir: tempfile::TempDir,
    cases: Vec<Value>,
}

/// Generated once per test binary (starting Python with torch is the slow part).
fn fixtures() -> &'static Fixtures {
    static FX: std::sync::OnceLock<Fixtures> = std::sync::OnceLock::new();
    FX.get_or_init(generate)
}

fn generate() -> Fixtures {
    let photo = data_dir().join("photos/chelsea.png");
    let dir = tempfile::tempdir().expect("temp dir");
    run_python(
        "train/tests/python/augment_ref.py",
        &[photo.as_os_str(), dir.path().as_os_str()],
    );
    let manifest = std::fs::read_to_string(dir.path().join("manifest.json")).expect("manifest");
    let cases: Vec<Value> = serde_json::from_str(&manifest).expect("manifest json");
    Fixtures { dir, cases }
}

impl Fixtures {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.bin"))
    }
    fn u8(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("fixture")
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        self.u8(name)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
    fn image(&self, name: &str) -> RgbImage {
        let case = self.cases.iter().find(|c| c["name"] == name).expect("case");
        let (h, w) = (
            case["shape"][0].as_u64().unwrap(),
            case["shape"][1].as_u64().unwrap(),
        );
        RgbImage::from_raw(w as u32, h as u32, self.u8(name)).expect("size")
    }
    fn by_op(&self, op: &str) -> impl Iterator<Item = &Value> {
        let op = op.to_string();
        self.cases.iter().filter(move |c| c["op"] == op.as_str())
    }
}

fn as_f32(v: &[u8]) -> Vec<f32> {
    v.iter().map(|&x| x as f32 / 255.0).collect()
}

fn num(v: &Value) -> f32 {
    v.as_f64().expect("number") as f32
}

/// A fixture's `box`: `[top, left, height, width]`.
fn crop_box(case: &Value) -> CropBox {
    let b: Vec<u32> = case["box"]
        .as_array()
        .expect("box")
        .iter()
        .map(|v| v.as_u64().expect("box entry") as u32)
        .collect();
    CropBox {
        top: b[0],
        left: b[1],
        height: b[2],
        width: b[3],
    }
}

#[test]
fn photometric_ops_match_pil() {
    let fx = fixtures();
    let input = fx.u8("input");
    let small = fx.u8("small");
    let grid = fx.u8("grid");
    let simg = fx.image("small");
    let mut scratch = Vec::new();
    let mut checked = 0;
    for op in [
        "brightness",
        "contrast",
        "saturation",
        "hue",
        "grayscale",
        "solarize",
        "blur",
    ] {
        for case in fx.by_op(op) {
            let name = case["name"].as_str().unwrap();
            let mut px = match case["src"].as_str() {
                Some("small") => small.clone(),
                Some("grid") => grid.clone(),
                _ => input.clone(),
            };
            let f = case.get("factor").map(num).unwrap_or(0.0);
            match op {
                "brightness" => color::adjust_brightness(&mut px, f),
                "contrast" => color::adjust_contrast(&mut px, f),
                "saturation" => color::adjust_saturation(&mut px, f),
                "hue" => color::adjust_hue(&mut px, f),
                "grayscale" => color::grayscale(&mut px),
                "solarize" => color::solarize(&mut px),
                _ => color::gaussian_blur(
                    &mut px,
                    simg.width() as usize,
                    simg.height() as usize,
                    f,
                    &mut scratch,
                ),
            }
            // Pillow's integer and float arithmetic is reproduced exactly (HSV included, over a
            // 3.4M-colour grid), so no tolerance.
            assert_close(&as_f32(&px), &as_f32(&fx.u8(name)), 0.0, 0.0);
            checked += 1;
        }
    }
    assert_eq!(checked, 4 + 3 + 3 + 6 + 1 + 1 + 4);
}

#[test]
fn normalize_matches_torch_bitwise() {
    let fx = fixtures();
    let input = fx.u8("input");
    for case in fx.by_op("normalize") {
        let v3 = |k: &str| -> [f32; 3] { std::array::from_fn(|i| num(&case[k][i])) };
        let norm = color::Normalizer::new(v3("mean"), v3("std"));
        let mut out = vec![0f32; input.len()];
        norm.to_chw(&input, &mut out);
        assert_close(&out, &fx.f32(case["name"].as_str().unwrap()), 0.0, 0.0);
    }
}

#[test]
fn bicubic_resized_crop_matches_pil() {
    let fx = fixtures();
    let img = fx.image("input");
    let mut n = 0;
    for case in fx.by_op("resized_crop") {
        let size = case["size"].as_u64().unwrap() as usize;
        let crop = crop_box(case);
        let mut out = Vec::new();
        augment::resized_crop(&img, crop, size, &mut out).unwrap();
        let want = fx.u8(case["name"].as_str().unwrap());
        // fast_image_resize's fixed-point coefficients differ from PIL's in the last bit.
        assert_close(&as_f32(&out), &as_f32(&want), 2.0 / 255.0 + 1e-6, 0.0);
        let mean_diff: f32 = out
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f32 - *b as f32).abs())
            .sum::<f32>()
            / out.len() as f32;
        assert!(
            mean_diff < 0.25,
            "{}: mean |diff| {mean_diff} levels",
            case["name"]
        );
        n += 1;
    }
    assert_eq!(n, 6);
}

#[test]
fn whole_view_matches_torchvision_composition() {
    let fx = fixtures();
    let img = fx.image("input");
    let ops = [
        JitterOp::Brightness,
        JitterOp::Contrast,
        JitterOp::Saturation,
        JitterOp::Hue,
    ];
    let aug = MultiCrop::new(AugmentConfig::default()).unwrap();
    let mut n = 0;
    for case in fx.by_op("view") {
        let jitter = case["order"].as_array().map(|o| ColorJitterParams {
            order: std::array::from_fn(|k| ops[o[k].as_u64().unwrap() as usize]),
            brightness: num(&case["b"]),
            contrast: num(&case["c"]),
            saturation: num(&case["s"]),
            hue: num(&case["h"]),
        });
        let v = ViewParams {
            crop: crop_box(case),
            flip: case["flip"].as_bool().unwrap(),
            photo: PhotometricParams {
                jitter,
                grayscale: case["gray"].as_bool().unwrap(),
                blur_sigma: case["sigma"].as_f64().map(|s| s as f32),
                solarize: case["solarize"].as_bool().unwrap(),
            },
        };
        let size = case["size"].as_u64().unwrap() as usize;
        let got = aug.render_view(&img, &v, size).unwrap();
        let want = fx.f32(case["name"].as_str().unwrap());
        // Only the resize differs (<= 2 levels); jitter can amplify it a little.
        assert_close(&got, &want, 4.0 / 255.0 / 0.224, 0.0);
        let mean = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / got.len() as f32;
        assert!(mean < 0.01, "{}: mean |diff| {mean}", case["name"]);
        n += 1;
    }
    assert_eq!(n, 3);
}
