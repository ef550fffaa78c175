//! The batched tensor photometric stage (`data::device_photometric`) against the CPU path
//! (`augment::apply_photometric` + `color::Normalizer`) on the same uint8 crops of real
//! images, on CPU tensors (on a GPU machine: `DINO_TEST_DEVICE=cuda`, with
//! `DINO_SHARED_DATA` naming the data folder when the test binary was carried there).
//!
//! Both paths quantise to uint8 after every op as PIL does, with the same float/double
//! steps, so they agree exactly: measured on CPU tensors (libtorch 2.x, x86-64) max |diff|
//! 0 levels and mean |diff| 0 over ~2.3 M values (photos at 224/96/37 px, CIFAR at 32/16).
//! The tolerances (`MAX_LEVELS` = 1 level, mean 1e-3 level) leave room for a different
//! rounding of a tie on another backend, yet a wrong jitter order, blur kernel or edge rule
//! moves many values by many levels (see `a_wrong_jitter_order_would_fail`).

use dino_core::testing::assert_close;
use dino_tests::{data_dir, photos as photo_paths, sorted_files};
use dino_train::data::augment::{self, CropBox};
use dino_train::data::{
    AugmentConfig, ColorJitterParams, DevicePhotometric, JitterOp, MultiCrop, PhotometricParams,
    SampleRng, color,
};
use image::RgbImage;
use tch::{Device, Kind, Tensor};

/// Largest per-value difference allowed, in uint8 levels.
const MAX_LEVELS: f32 = 1.0;
/// Largest mean absolute difference allowed, in uint8 levels.
const MEAN_LEVELS: f64 = 1e-3;

/// Where the tensor path runs: CPU unless `DINO_TEST_DEVICE` names a CUDA device.
fn device() -> Device {
    match std::env::var("DINO_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

fn photos() -> Vec<RgbImage> {
    photo_paths()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
        .map(|p| image::open(p).unwrap().to_rgb8())
        .collect()
}

fn cifar(n: usize) -> Vec<RgbImage> {
    let mut out = Vec::new();
    for c in sorted_files(&data_dir().join("cifar10-mini/train")) {
        for f in sorted_files(&c).iter().take(n.div_ceil(10)) {
            out.push(image::open(f).unwrap().to_rgb8());
        }
    }
    out
}

/// A random crop of `img` resized to `size` (the loader's geometric half), HWC bytes.
fn crop(img: &RgbImage, rng: &mut SampleRng, size: usize) -> Vec<u8> {
    let b: CropBox = augment::sample_crop(rng, img.width(), img.height(), (0.05, 1.0));
    let mut out = Vec::new();
    augment::resized_crop(img, b, size, &mut out).unwrap();
    out
}

fn cpu_path(crops: &[Vec<u8>], params: &[PhotometricParams], size: usize) -> Vec<f32> {
    let cfg = AugmentConfig::default();
    let norm = color::Normalizer::new(cfg.mean, cfg.std);
    let mut scratch = Vec::new();
    let mut out = vec![0f32; crops.len() * 3 * size * size];
    for ((c, p), o) in crops
        .iter()
        .zip(params)
        .zip(out.chunks_mut(3 * size * size))
    {
        let mut px = c.clone();
        augment::apply_photometric(&mut px, size, p, &mut scratch);
        norm.to_chw(&px, o);
    }
    out
}

fn device_path(crops: &[Vec<u8>], params: &[PhotometricParams], size: usize) -> Vec<f32> {
    let cfg = AugmentConfig::default();
    let dp = DevicePhotometric::new(cfg.mean, cfg.std, device());
    let flat: Vec<u8> = crops.concat();
    let s = size as i64;
    let x = Tensor::from_slice(&flat)
        .view([crops.len() as i64, s, s, 3])
        .to_device(device()); // [n, h, w, 3]
    let y = dp.apply(&x, params).unwrap(); // [n, 3, h, w]
    assert_eq!(y.size(), [crops.len() as i64, 3, s, s]);
    assert_eq!(y.kind(), Kind::Float);
    Vec::<f32>::try_from(y.flatten(0, -1).to_device(Device::Cpu)).unwrap()
}

/// (max, mean) absolute difference in uint8 levels between two normalised outputs.
fn level_diff(a: &[f32], b: &[f32], size: usize) -> (f32, f64) {
    let std = AugmentConfig::default().std;
    let plane = size * size;
    let (mut max, mut sum) = (0f32, 0f64);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs() * std[(i / plane) % 3] * 255.0;
        max = max.max(d);
        sum += d as f64;
    }
    (max, sum / a.len() as f64)
}

/// Compares both paths; returns the (max, mean) level differences.
#[track_caller]
fn check(name: &str, crops: &[Vec<u8>], params: &[PhotometricParams], size: usize) -> (f32, f64) {
    let want = cpu_path(crops, params, size);
    let got = device_path(crops, params, size);
    let (max, mean) = level_diff(&got, &want, size);
    if std::env::var_os("DP_DEBUG").is_some() {
        let l = 3 * size * size;
        for k in 0..crops.len() {
            let (m, a) = level_diff(&got[k * l..(k + 1) * l], &want[k * l..(k + 1) * l], size);
            if m > 0.0 {
                eprintln!("  view {k}: max {m:.2} mean {a:.2e} {:?}", params[k]);
            }
        }
    }
    eprintln!(
        "{name}: {} views of {size}px: max {max:.3} levels, mean {mean:.2e}",
        crops.len()
    );
    // Normalised values: one level is 1 / (255 * std) <= 0.0175 for the ImageNet std.
    let atol = (MAX_LEVELS + 0.01) / (255.0 * 0.224);
    assert_close(&got, &want, atol, 0.0);
    assert!(mean <= MEAN_LEVELS, "{name}: mean |diff| {mean} levels");
    (max, mean)
}

fn jitter(order: [JitterOp; 4]) -> ColorJitterParams {
    ColorJitterParams {
        order,
        brightness: 1.37,
        contrast: 0.62,
        saturation: 1.19,
        hue: -0.093,
    }
}

fn all_orders() -> Vec<[JitterOp; 4]> {
    use JitterOp::*;
    let ops = [Brightness, Contrast, Saturation, Hue];
    let mut out = Vec::new();
    for a in 0..4 {
        for b in 0..4 {
            for c in 0..4 {
                let d = 6 - a - b - c;
                if a != b && b != c && a != c && d < 4 && d != a && d != b && d != c {
                    out.push([ops[a], ops[b], ops[c], ops[d]]);
                }
            }
        }
    }
    out
}

/// Every op alone, every jitter order, both blur extremes, solarize, and mixtures.
fn hand_set() -> Vec<PhotometricParams> {
    use JitterOp::*;
    let none = PhotometricParams::default();
    // One factor away from neutral; the hue round trip itself always runs, as in PIL.
    let only = |op: JitterOp| {
        let mut j = jitter([Brightness, Contrast, Saturation, Hue]);
        (j.brightness, j.contrast, j.saturation, j.hue) = (1.0, 1.0, 1.0, 0.0);
        match op {
            Brightness => j.brightness = 0.61,
            Contrast => j.contrast = 1.38,
            Saturation => j.saturation = 0.81,
            Hue => j.hue = 0.097,
        }
        PhotometricParams {
            jitter: Some(j),
            ..none
        }
    };
    let mut v = vec![none];
    v.extend([Brightness, Contrast, Saturation, Hue].map(only));
    v.extend(all_orders().into_iter().map(|o| PhotometricParams {
        jitter: Some(jitter(o)),
        ..none
    }));
    for sigma in [0.1f32, 0.5, 1.0, 1.7, 2.0] {
        v.push(PhotometricParams {
            blur_sigma: Some(sigma),
            ..none
        });
    }
    v.push(PhotometricParams {
        grayscale: true,
        ..none
    });
    v.push(PhotometricParams {
        solarize: true,
        ..none
    });
    v.push(PhotometricParams {
        jitter: Some(jitter([Hue, Saturation, Contrast, Brightness])),
        grayscale: true,
        blur_sigma: Some(2.0),
        solarize: true,
    });
    v
}

#[test]
fn hand_set_params_match_the_cpu_path() {
    let photos = photos();
    let params = hand_set();
    let mut rng = SampleRng::for_sample(7, 0, 0);
    for size in [96, 37] {
        let crops: Vec<_> = (0..params.len())
            .map(|k| crop(&photos[k % photos.len()], &mut rng, size))
            .collect();
        check("hand-set", &crops, &params, size);
    }
}

#[test]
fn sampled_params_match_the_cpu_path_on_photos_and_cifar() {
    let aug = MultiCrop::new(AugmentConfig::default()).unwrap();
    let sample = |n: usize, seed: u64| -> Vec<PhotometricParams> {
        (0..n)
            .flat_map(|i| {
                let mut rng = SampleRng::for_sample(seed, 0, i as u64);
                aug.sample_views(&mut rng, (64, 64))
            })
            .map(|v| v.photo)
            .take(n)
            .collect()
    };
    let mut rng = SampleRng::for_sample(11, 0, 1);
    let photos = photos();
    for (size, n) in [(224, 14), (96, 60)] {
        let params = sample(n, size as u64);
        let crops: Vec<_> = (0..n)
            .map(|k| crop(&photos[k % photos.len()], &mut rng, size))
            .collect();
        check("photos", &crops, &params, size);
    }
    let small = cifar(200);
    for size in [32, 16] {
        let params = sample(small.len(), 100 + size as u64);
        let crops: Vec<_> = small.iter().map(|im| crop(im, &mut rng, size)).collect();
        check("cifar", &crops, &params, size);
    }
}

/// The comparison is sharp enough to catch a wrong jitter order: the CPU path with two
/// different orders differs by far more than the tolerance.
#[test]
fn a_wrong_jitter_order_would_fail() {
    use JitterOp::*;
    let photos = photos();
    let mut rng = SampleRng::for_sample(3, 0, 0);
    let crops: Vec<_> = (0..4).map(|k| crop(&photos[k], &mut rng, 64)).collect();
    let with = |o| {
        vec![
            PhotometricParams {
                jitter: Some(jitter(o)),
                ..Default::default()
            };
            4
        ]
    };
    let a = cpu_path(&crops, &with([Brightness, Contrast, Saturation, Hue]), 64);
    let b = device_path(&crops, &with([Hue, Saturation, Contrast, Brightness]), 64);
    let (max, _) = level_diff(&a, &b, 64);
    assert!(max > 10.0 * MAX_LEVELS, "orders indistinguishable: {max}");
}

#[test]
fn shape_and_count_mismatches_are_errors() {
    let dp = DevicePhotometric::new([0.5; 3], [0.5; 3], Device::Cpu);
    let x = Tensor::zeros([2, 3, 8, 8], (Kind::Uint8, Device::Cpu));
    assert!(dp.apply(&x, &[PhotometricParams::default()]).is_err());
    assert!(dp.apply(&x.view([6, 8, 8]), &[]).is_err());
    let ok = dp.apply(&x, &[PhotometricParams::default(); 2]).unwrap();
    assert_eq!(ok.size(), [2, 3, 8, 8]);
}
