//! dino-core's eval preprocessing against PIL + torchvision (`tests/python/runtime_ref.py`).
//!
//! Tolerances: the PIL bicubic resize must match bit for bit (0 levels) on synthetic images
//! in both directions; the whole eval transform must match to 1e-6 on PNG photos (same
//! decoded pixels). JPEG decoders differ (libjpeg-turbo in PIL, zune-jpeg here), so JPEG
//! inputs are held to a looser bound, stated below.

use std::path::PathBuf;

use dino_core::EvalTransform;
use dino_core::image_io::load_rgb;
use dino_core::preprocess::{eval_transform, resize_bicubic};
use dino_core::testing::{assert_close, cosine, max_abs_diff};
use dino_tests::{data_dir, photos, run_python, s, scratch};

#[test]
fn bicubic_resize_is_bit_exact_with_pil() {
    let dir = scratch("runtime-resize");
    run_python("tests/python/runtime_ref.py", &["resize", &s(&dir)]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    for case in manifest.as_array().unwrap() {
        let src = load_rgb(&dir.join(case["src"].as_str().unwrap())).unwrap();
        let dst = load_rgb(&dir.join(case["dst"].as_str().unwrap())).unwrap();
        let ours = resize_bicubic(&src, dst.width(), dst.height());
        let a: Vec<f32> = ours.as_raw().iter().map(|&v| f32::from(v)).collect();
        let b: Vec<f32> = dst.as_raw().iter().map(|&v| f32::from(v)).collect();
        eprintln!(
            "{:?} -> {:?}: max diff {} levels",
            src.dimensions(),
            dst.dimensions(),
            max_abs_diff(&a, &b)
        );
        assert_close(&a, &b, 0.0, 0.0);
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn check_transform(t: &EvalTransform, images: &[PathBuf], tag: &str) {
    let dir = scratch(&format!("runtime-pre-{tag}"));
    let mut args = vec![
        "preprocess".to_string(),
        t.resize_size.to_string(),
        t.crop_size.to_string(),
        s(&dir),
    ];
    args.extend(images.iter().map(|p| s(p)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_python("tests/python/runtime_ref.py", &args);
    for (i, p) in images.iter().enumerate() {
        let bytes = std::fs::read(dir.join(format!("{i}.f32"))).unwrap();
        let want: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let ours = eval_transform(&load_rgb(p).unwrap(), t);
        let jpeg = p.extension().is_some_and(|e| e == "jpg" || e == "jpeg");
        eprintln!(
            "{tag} {}: max abs diff {:.2e}, cosine {:.6}",
            p.display(),
            max_abs_diff(&ours, &want),
            cosine(&ours, &want)
        );
        if jpeg {
            // Different IDCT/upsampling: a few levels on some pixels (1/255/0.225 = 0.017 each).
            assert!(cosine(&ours, &want) > 0.999, "{}", p.display());
            assert!(max_abs_diff(&ours, &want) < 0.5, "{}", p.display());
        } else {
            assert_close(&ours, &want, 1e-6, 0.0);
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn eval_transform_matches_torchvision_on_photos() {
    // Includes grayscale (camera.png) and RGBA (horse.png) images and a JPEG.
    check_transform(&EvalTransform::standard(224), &photos(), "224");
    // An odd size: resize 100 -> crop 57 exercises the half-to-even crop rounding.
    let odd = EvalTransform {
        resize_size: 100,
        crop_size: 57,
        ..EvalTransform::standard(224)
    };
    check_transform(&odd, &photos(), "odd");
}

#[test]
fn native_size_cifar_passes_through() {
    let class_dir = data_dir().join("cifar10-mini/test");
    let mut images: Vec<PathBuf> = Vec::new();
    for c in std::fs::read_dir(&class_dir).unwrap().take(3) {
        let c = c.unwrap().path();
        images.extend(
            std::fs::read_dir(&c)
                .unwrap()
                .take(2)
                .map(|e| e.unwrap().path()),
        );
    }
    let t = EvalTransform {
        resize_size: 32,
        ..EvalTransform::standard(32)
    };
    check_transform(&t, &images, "cifar32");
}
