//! `dino-train bench`: the speed of the training step alone, printed as one JSON object so
//! a script can tabulate it (`bench/gpu.sh`).
//!
//! The step runs on synthetic crops already on the device, so the model, loss, optimizer
//! and EMA are measured, not the input; `train/examples/data_bench.rs` measures the data
//! pipeline alone.

use std::time::Instant;

use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::dist::Dist;
use crate::error::{Result, TrainError};
use crate::step::DinoStep;

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Steady-state images/s of the training step after `warmup` steps. With `breakdown`, as
/// many steps again synchronise after each part of the step and report the milliseconds of
/// each (teacher + student forward with the loss, backward, the gradient all-reduce of a
/// multi-process run, clip + optimizer + EMA). Launched as several ranks (torchrun or
/// `--nproc_per_node`), every rank steps on its batch and rank 0 reports the total rate;
/// the others return `None`.
pub fn bench_step(
    cfg: &TrainConfig,
    warmup: usize,
    steps: usize,
    breakdown: bool,
) -> Result<Option<serde_json::Value>> {
    if steps == 0 {
        return Err(TrainError::Invalid(
            "bench needs at least one timed step".into(),
        ));
    }
    let (dist, device) = Dist::from_env(cfg)?;
    let world = dist.as_ref().map_or(1, |d| d.world_size());
    let main = dist.as_ref().is_none_or(|d| d.is_main());
    // No loader runs here: the step gets every core, as in training without data workers.
    // libtorch's intra-op pool: one thread per core unless OMP_NUM_THREADS says otherwise.
    let threads = tch::get_num_threads();
    tch::manual_seed(cfg.run.seed as i64);
    let total = warmup + steps;
    let mut run = DinoStep::with_dist(cfg, total, device, dist)?;
    let (a, batch) = (&cfg.augment, cfg.optim.batch_size);
    let b = batch as i64;
    let (g, l) = (a.global_crop_size as i64, a.local_crop_size as i64);
    let opts = (Kind::Float, device);
    let global = Tensor::randn([2 * b, 3, g, g], opts);
    let local = (a.local_crops_number > 0)
        .then(|| Tensor::randn([a.local_crops_number as i64 * b, 3, l, l], opts));
    let mut last = None;
    let mut t0 = Instant::now();
    for it in 0..total {
        if it == warmup {
            sync(device);
            t0 = Instant::now();
        }
        last = Some(run.step(&global, local.as_ref(), it)?.loss);
    }
    let loss = last.map_or(f64::NAN, |l| l.double_value(&[]));
    sync(device);
    let secs = t0.elapsed().as_secs_f64();
    let mut parts = serde_json::Map::new();
    if breakdown {
        let mut t = Instant::now();
        let mut record = |name: &'static str| {
            sync(device);
            let ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
            let e = parts.entry(format!("{name}_ms")).or_insert(json!(0.0));
            *e = json!(e.as_f64().unwrap_or(0.0) + ms);
            t = Instant::now();
        };
        for it in total..total + steps {
            run.step_with_phases(&global, local.as_ref(), it % total, &mut record)?;
        }
    }
    if !main {
        return Ok(None);
    }
    Ok(Some(json!({
        "what": "train_step",
        "device": format!("{device:?}"),
        "precision": format!("{:?}", run.precision()),
        "batch_size": batch,
        "world_size": world,
        "threads": threads,
        "steps": steps,
        "images_per_s": (steps * batch * world) as f64 / secs,
        "step_ms": secs * 1e3 / steps as f64,
        "final_loss": loss,
        "breakdown": parts,
    })))
}
