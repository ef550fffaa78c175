//! Throughput of the multi-crop data pipeline (decode + augment + batch), for
//! `bench/data_pipeline.sh`. Prints one JSON line.
//!
//! `cargo run --release -p dino-train --example data_bench -- --root DIR --global 32
//!  --local 16 --n-local 6 --threads 1 --batch 64 --samples 5000`
//!
//! `--deferred` leaves the photometric part out (`Photometric::Deferred`, as training with
//! `photometric = "device"` does): the CPU side alone, decode + crop + resize.
//!
//! `--photometric-device [--device cuda|cpu] [--iters N]` times the batched photometric
//! stage alone (`data::device_photometric`) on synthetic uint8 crops already on the device
//! (default 2 x 224 + 10 x 96 per sample, batch 256), and the CPU `color.rs` path per view
//! on one thread for comparison.

use std::sync::Arc;
use std::time::Instant;

use dino_train::data::augment::apply_photometric;
use dino_train::data::color::Normalizer;
use dino_train::data::{
    AugmentConfig, DevicePhotometric, ImageDataset, Loader, LoaderConfig, MultiCrop, Photometric,
    PhotometricParams, SampleRng, Verify,
};
use tch::{Device, Kind, Tensor};

/// CPU seconds used by this process (all threads), from `/proc/self/stat` (Linux; USER_HZ
/// is 100 there). `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str, d: &str| -> String {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| d.to_string())
    };
    let num = |k: &str, d: &str| -> Result<usize, String> {
        get(k, d).parse().map_err(|e| format!("{k}: {e}"))
    };
    if args.iter().any(|a| a == "--photometric-device") {
        let device = match get("--device", "auto").as_str() {
            "cpu" => Device::Cpu,
            "auto" => Device::cuda_if_available(),
            _ => Device::Cuda(0),
        };
        return photometric_bench(
            device,
            num("--batch", "256")?,
            (num("--global", "224")?, num("--local", "96")?),
            num("--n-local", "10")?,
            num("--iters", "10")?,
        );
    }
    let root = get("--root", "../shared/data/cifar10-mini/train");
    let aug = AugmentConfig {
        global_crop_size: num("--global", "32")?,
        local_crop_size: num("--local", "16")?,
        local_crops_number: num("--n-local", "6")?,
        ..AugmentConfig::default()
    };
    let photometric = if args.iter().any(|a| a == "--deferred") {
        Photometric::Deferred
    } else {
        Photometric::Cpu
    };
    let (threads, batch, samples) = (
        num("--threads", "1")?,
        num("--batch", "64")?,
        num("--samples", "5000")?,
    );
    let ds = Arc::new(ImageDataset::open(root.as_ref(), Verify::Header)?);
    let cfg = LoaderConfig {
        batch_size: batch,
        num_workers: threads,
        prefetch: 2,
        seed: 0,
        photometric,
        ..Default::default()
    };
    let loader = Loader::new(ds, aug, cfg)?;
    let Timed {
        done,
        secs,
        cpu,
        checksum,
    } = time_loader(&loader, samples)?;
    println!(
        "{{\"impl\": \"dino-rs\", \"photometric\": \"{:?}\", \"threads\": {}, \"samples\": {done}, \"seconds\": {secs:.3}, \"cpu_seconds\": {cpu:.3}, \"samples_per_s\": {:.1}, \"checksum\": {checksum:.3}}}",
        photometric,
        loader.num_threads(),
        done as f64 / secs
    );
    Ok(())
}

/// What a timed loader run gives: samples, wall and CPU seconds, and a checksum that keeps
/// the batches from being optimised away.
struct Timed {
    done: usize,
    secs: f64,
    cpu: f64,
    checksum: f64,
}

/// A warm-up batch (thread-local buffers, page cache), then `samples` samples over as many
/// epochs as it takes.
fn time_loader(loader: &Loader, samples: usize) -> Result<Timed, Box<dyn std::error::Error>> {
    loader.epoch(1000).next().transpose()?;
    let (t, cpu0) = (Instant::now(), cpu_seconds());
    let mut done = 0;
    let mut checksum = 0f64;
    'outer: for epoch in 0.. {
        for b in loader.epoch(epoch) {
            let b = b?;
            checksum += match &b.raw {
                Some(r) => r.global[0] as f64 + r.local.first().copied().unwrap_or(0) as f64,
                None => b.global[0] as f64 + b.local.first().copied().unwrap_or(0.0) as f64,
            };
            done += b.batch_size;
            if done >= samples {
                break 'outer;
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds()
        .zip(cpu0)
        .map(|(b, a)| b - a)
        .unwrap_or(f64::NAN);
    Ok(Timed {
        done,
        secs,
        cpu,
        checksum,
    })
}

/// Synthetic crops (a smooth gradient plus noise, so every op has work to do) and the
/// parameters the real augmentation samples for them.
fn synthetic(
    aug: &MultiCrop,
    batch: usize,
    views: std::ops::Range<usize>,
    size: usize,
) -> (Vec<u8>, Vec<PhotometricParams>) {
    let mut params = Vec::new();
    for k in views.clone() {
        for i in 0..batch {
            let mut rng = SampleRng::for_sample(0, 0, i as u64);
            params.push(aug.sample_views(&mut rng, (500, 375))[k].photo);
        }
    }
    let mut rng = SampleRng::for_sample(1, 0, 0);
    let plane = size * size;
    let bytes = (0..params.len() * 3 * plane)
        .map(|j| {
            let (c, p) = ((j / plane) % 3, j % plane);
            let ramp = (p % size + p / size + 40 * c) as u64;
            ((ramp + rng.below(48)) % 256) as u8
        })
        .collect();
    (bytes, params)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn photometric_bench(
    device: Device,
    batch: usize,
    (g, l): (usize, usize),
    n_local: usize,
    iters: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = AugmentConfig {
        global_crop_size: g,
        local_crop_size: l,
        local_crops_number: n_local,
        ..AugmentConfig::default()
    };
    let aug = MultiCrop::new(cfg.clone())?;
    let dp = DevicePhotometric::new(cfg.mean, cfg.std, device);
    let sets = [
        (synthetic(&aug, batch, 0..2, g), g),
        (synthetic(&aug, batch, 2..2 + n_local, l), l),
    ];
    // Crops already on the device: this times the photometric stage alone.
    let crops: Vec<Tensor> = sets
        .iter()
        .map(|((bytes, p), s)| {
            let s = *s as i64;
            Tensor::from_slice(bytes)
                .view([p.len() as i64, 3, s, s])
                .to_device(device)
        })
        .collect();
    let run = || -> Result<f64, Box<dyn std::error::Error>> {
        let mut check = Tensor::zeros([], (Kind::Float, device));
        for (c, ((_, p), _)) in crops.iter().zip(&sets) {
            check += dp.apply(c, p)?.mean(Kind::Float);
        }
        Ok(check.double_value(&[]))
    };
    run()?; // warm-up (allocator, kernels)
    sync(device);
    let t = Instant::now();
    let mut checksum = 0.0;
    for _ in 0..iters {
        checksum += run()?;
    }
    sync(device);
    let secs = t.elapsed().as_secs_f64() / iters as f64;
    // The CPU color.rs path on one thread, over a sample of the same views.
    let norm = Normalizer::new(cfg.mean, cfg.std);
    let (mut cpu_secs, mut cpu_views) = (0.0, 0usize);
    for ((bytes, params), size) in &sets {
        let plane = size * size;
        let take = params.len().min(64);
        let mut out = vec![0f32; 3 * plane];
        let mut scratch = Vec::new();
        let t = Instant::now();
        for (k, p) in params.iter().take(take).enumerate() {
            let chw = &bytes[k * 3 * plane..(k + 1) * 3 * plane];
            let mut hwc: Vec<u8> = (0..plane)
                .flat_map(|i| [chw[i], chw[plane + i], chw[2 * plane + i]])
                .collect();
            apply_photometric(&mut hwc, *size, p, &mut scratch);
            norm.to_chw(&hwc, &mut out);
        }
        // Scaled to the batch's view count at this size.
        cpu_secs += t.elapsed().as_secs_f64() * params.len() as f64 / take as f64;
        cpu_views += params.len();
    }
    println!(
        "{{\"impl\": \"dino-rs\", \"stage\": \"photometric\", \"device\": \"{device:?}\", \"batch\": {batch}, \"global\": {g}, \"local\": {l}, \"n_local\": {n_local}, \"views\": {cpu_views}, \"seconds_per_batch\": {secs:.5}, \"samples_per_s\": {:.1}, \"cpu_1thread_seconds_per_batch\": {cpu_secs:.4}, \"cpu_1thread_samples_per_s\": {:.1}, \"checksum\": {:.4}}}",
        batch as f64 / secs,
        batch as f64 / cpu_secs,
        checksum / iters as f64
    );
    Ok(())
}
