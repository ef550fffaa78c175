//! Throughput of the multi-crop data pipeline (decode + augment + batch), for
//! `bench/data_pipeline.sh`. Prints one JSON line.
//!
//! `cargo run --release -p dino-train --example data_bench -- --root DIR --global 32
//!  --local 16 --n-local 6 --threads 1 --batch 64 --samples 5000`

use std::sync::Arc;
use std::time::Instant;

use dino_train::data::{AugmentConfig, ImageDataset, Loader, LoaderConfig, Verify};

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
    let root = get("--root", "../shared/data/cifar10-mini/train");
    let aug = AugmentConfig {
        global_size: num("--global", "32")?,
        local_size: num("--local", "16")?,
        n_local: num("--n-local", "6")?,
        ..AugmentConfig::default()
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
        ..Default::default()
    };
    let loader = Loader::new(ds, aug, cfg)?;
    // Warm-up batch (thread-local buffers, page cache), then the timed run over epochs.
    loader.epoch(1000).next().transpose()?;
    let (t, cpu0) = (Instant::now(), cpu_seconds());
    let mut done = 0;
    let mut checksum = 0f64;
    'outer: for epoch in 0.. {
        for b in loader.epoch(epoch) {
            let b = b?;
            checksum += b.global[0] as f64 + b.local.first().copied().unwrap_or(0.0) as f64;
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
    println!(
        "{{\"impl\": \"dino-rs\", \"threads\": {}, \"samples\": {done}, \"seconds\": {secs:.3}, \"cpu_seconds\": {cpu:.3}, \"samples_per_s\": {:.1}, \"checksum\": {checksum:.3}}}",
        loader.num_threads(),
        done as f64 / secs
    );
    Ok(())
}
