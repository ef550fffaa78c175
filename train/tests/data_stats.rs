//! Statistics of the random parts of the augmentation, for a fixed seed (so they cannot
//! flake); tolerances are > 10 standard errors.

use std::collections::HashSet;

use dino_train::data::augment::sample_crop;
use dino_train::data::{AugmentConfig, CropBox, MultiCrop, SampleRng, ViewParams};

const W: u32 = 500;
const H: u32 = 375;
const N: u64 = 20_000;

fn draws() -> Vec<Vec<ViewParams>> {
    let aug = MultiCrop::new(AugmentConfig {
        local_crops_number: 10,
        ..AugmentConfig::default()
    })
    .unwrap();
    (0..N)
        .map(|i| aug.sample_views(&mut SampleRng::for_sample(42, 3, i), (W, H)))
        .collect()
}

fn rate(views: impl Iterator<Item = bool>) -> f64 {
    let (mut hits, mut n) = (0usize, 0usize);
    for v in views {
        hits += v as usize;
        n += 1;
    }
    hits as f64 / n as f64
}

fn assert_near(what: &str, got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol, "{what}: {got} vs {want} ± {tol}");
}

/// Area fraction and aspect ratio respect the bounds up to the rounding of `w` and `h`.
fn check_crop(c: &CropBox, scale: (f64, f64)) {
    let (w, h, area) = (c.width as f64, c.height as f64, (W * H) as f64);
    assert!(
        c.left + c.width <= W && c.top + c.height <= H,
        "{c:?} inside the image"
    );
    assert!(
        (w + 0.5) * (h + 0.5) >= scale.0 * area,
        "{c:?} area >= {}",
        scale.0
    );
    assert!(
        (w - 0.5) * (h - 0.5) <= scale.1 * area,
        "{c:?} area <= {}",
        scale.1
    );
    assert!(
        (w + 0.5) / (h - 0.5) >= 0.75 && (w - 0.5) / (h + 0.5) <= 4.0 / 3.0,
        "{c:?} ratio"
    );
}

#[test]
fn crops_respect_scale_and_ratio() {
    let d = draws();
    let (mut area_sum, mut lr_sum, mut pos_sum, mut n) = (0.0, 0.0, 0.0, 0.0);
    for s in &d {
        assert_eq!(s.len(), 12);
        for v in &s[..2] {
            check_crop(&v.crop, (0.4, 1.0));
        }
        for v in &s[2..] {
            check_crop(&v.crop, (0.05, 0.4));
            let c = v.crop;
            area_sum += (c.width * c.height) as f64 / (W * H) as f64;
            lr_sum += (c.width as f64 / c.height as f64).ln();
            pos_sum += c.left as f64 / (W - c.width) as f64;
            n += 1.0;
        }
    }
    // Local crops are never rejected at this image size: area ~ U(0.05, 0.4), log-ratio
    // symmetric, position uniform.
    assert_near("mean local area", area_sum / n, 0.225, 0.003);
    assert_near("mean local log-ratio", lr_sum / n, 0.0, 0.005);
    assert_near("mean relative left", pos_sum / n, 0.5, 0.01);
}

#[test]
fn crop_fallback_is_centred_and_clamped_to_ratio() {
    // A 20:1 strip cannot hold any 90-100 % crop with ratio <= 4/3: torchvision falls back.
    let mut rng = SampleRng::for_sample(0, 0, 0);
    let c = sample_crop(&mut rng, 1000, 50, (0.9, 1.0));
    assert_eq!(
        c,
        CropBox {
            top: 0,
            left: (1000 - 67) / 2,
            height: 50,
            width: 67
        }
    );
    let c = sample_crop(&mut rng, 50, 1000, (0.9, 1.0));
    assert_eq!(
        c,
        CropBox {
            top: (1000 - 67) / 2,
            left: 0,
            height: 67,
            width: 50
        }
    );
    let c = sample_crop(&mut rng, 1, 1, (0.05, 0.4));
    assert_eq!(
        c,
        CropBox {
            top: 0,
            left: 0,
            height: 1,
            width: 1
        }
    );
}

#[test]
fn random_decisions_have_the_official_rates() {
    let d = draws();
    let all = || d.iter().flatten();
    let view = |k: usize| d.iter().map(move |s| s[k]);
    let locals = || d.iter().flat_map(|s| s[2..].iter().copied());
    // 240k draws: standard error ~0.001.
    assert_near("flip", rate(all().map(|v| v.flip)), 0.5, 0.01);
    assert_near(
        "jitter",
        rate(all().map(|v| v.photo.jitter.is_some())),
        0.8,
        0.01,
    );
    assert_near(
        "grayscale",
        rate(all().map(|v| v.photo.grayscale)),
        0.2,
        0.01,
    );
    assert_eq!(rate(view(0).map(|v| v.photo.blur_sigma.is_some())), 1.0);
    assert_near(
        "blur view 2",
        rate(view(1).map(|v| v.photo.blur_sigma.is_some())),
        0.1,
        0.015,
    );
    assert_near(
        "blur locals",
        rate(locals().map(|v| v.photo.blur_sigma.is_some())),
        0.5,
        0.01,
    );
    assert_near(
        "solarize view 2",
        rate(view(1).map(|v| v.photo.solarize)),
        0.2,
        0.015,
    );
    assert_eq!(rate(view(0).chain(locals()).map(|v| v.photo.solarize)), 0.0);

    let mut orders = HashSet::new();
    let mut hue_sum = 0.0;
    let jit: Vec<_> = all().filter_map(|v| v.photo.jitter).collect();
    for j in &jit {
        assert!((0.6..1.4).contains(&j.brightness) && (0.6..1.4).contains(&j.contrast));
        assert!((0.8..1.2).contains(&j.saturation) && (-0.1..0.1).contains(&j.hue));
        let mut ops = j.order.to_vec();
        ops.sort_by_key(|o| *o as u8);
        ops.dedup();
        assert_eq!(ops.len(), 4, "order is a permutation");
        orders.insert(j.order.map(|o| o as u8));
        hue_sum += j.hue as f64;
    }
    assert_eq!(orders.len(), 24, "every order of the four ops occurs");
    assert_near("mean hue", hue_sum / jit.len() as f64, 0.0, 0.002);
    let sigmas: Vec<f32> = all().filter_map(|v| v.photo.blur_sigma).collect();
    assert!(sigmas.iter().all(|s| (0.1..2.0).contains(s)));
    let mean = sigmas.iter().map(|&s| s as f64).sum::<f64>() / sigmas.len() as f64;
    assert_near("mean sigma", mean, 1.05, 0.01);
}

#[test]
fn configured_blur_and_solarization_rates_are_followed() {
    let aug = |cfg: AugmentConfig| {
        let aug = MultiCrop::new(cfg).unwrap();
        (0..2_000)
            .map(|i| aug.sample_views(&mut SampleRng::for_sample(7, 0, i), (W, H)))
            .collect::<Vec<_>>()
    };
    // Blur off everywhere (the CIFAR recipes): no view is blurred, and the first view's
    // crop, flip and jitter (drawn before its blur) equal those of the official setting.
    let off = aug(AugmentConfig {
        global_blur_prob: [0.0, 0.0],
        local_blur_prob: 0.0,
        ..AugmentConfig::default()
    });
    let official = aug(AugmentConfig::default());
    assert!(off.iter().flatten().all(|v| v.photo.blur_sigma.is_none()));
    for (a, b) in off.iter().zip(&official) {
        let (a, b) = (a[0], b[0]);
        assert_eq!(
            (a.crop, a.flip, a.photo.jitter),
            (b.crop, b.flip, b.photo.jitter)
        );
    }
    // Swapped view probabilities and a narrow sigma range.
    let swapped = aug(AugmentConfig {
        global_blur_prob: [0.1, 1.0],
        local_blur_prob: 1.0,
        blur_sigma: [0.2, 0.3],
        solarization_prob: [0.5, 0.0],
        ..AugmentConfig::default()
    });
    let view = |k: usize| swapped.iter().map(move |s| s[k]);
    assert_near(
        "blur view 1",
        rate(view(0).map(|v| v.photo.blur_sigma.is_some())),
        0.1,
        0.03,
    );
    assert_eq!(rate(view(1).map(|v| v.photo.blur_sigma.is_some())), 1.0);
    assert_near(
        "solarize view 1",
        rate(view(0).map(|v| v.photo.solarize)),
        0.5,
        0.05,
    );
    assert_eq!(rate(view(1).map(|v| v.photo.solarize)), 0.0);
    let sigmas = swapped.iter().flatten().filter_map(|v| v.photo.blur_sigma);
    assert!(sigmas.into_iter().all(|s| (0.2..0.3).contains(&s)));
    // Out-of-range settings are refused.
    for bad in [
        AugmentConfig {
            local_blur_prob: 1.5,
            ..AugmentConfig::default()
        },
        AugmentConfig {
            solarization_prob: [-0.1, 0.2],
            ..AugmentConfig::default()
        },
        AugmentConfig {
            blur_sigma: [0.0, 2.0],
            ..AugmentConfig::default()
        },
        AugmentConfig {
            blur_sigma: [2.0, 1.0],
            ..AugmentConfig::default()
        },
    ] {
        assert!(MultiCrop::new(bad).is_err());
    }
}
