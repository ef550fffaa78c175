//! The DINO training loop (the official `train_dino` / `train_one_epoch`).
//!
//! Per step: the teacher sees the 2 global crops, the student all crops (one backbone
//! forward per resolution); DINO loss with centring and sharpening; backward;
//! per-parameter clipping; last-layer gradients cancelled in the first epochs; optimizer
//! step with the scheduled lr / wd; teacher EMA with the scheduled momentum.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, Checkpoint, TrainState};
use crate::config::TrainConfig;
use crate::data::{
    DevicePhotometric, ImageDataset, Loader, LoaderConfig, MultiCropBatch, Photometric, Verify,
};
use crate::device::select_device;
use crate::loss::max_entropy;
use crate::metrics::{self, EpochRow, MetricsLog, Row, StepRow};
use crate::model::DinoNet;
use crate::step::{DinoStep, StepOut};

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const TEACHER: &str = "teacher.safetensors";
pub const CONFIG: &str = "config.toml";

/// What a finished (or stopped) run reports.
#[derive(Debug)]
pub struct Summary {
    pub epochs_run: usize,
    pub epoch_losses: Vec<f64>,
    pub teacher_path: PathBuf,
    pub skipped_files: usize,
    /// All `epochs` are done (else stopped by `stop_after`).
    pub finished: bool,
}

/// How one invocation runs (not part of the training recipe).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from `output_dir/checkpoint.safetensors`.
    pub resume: bool,
    pub quiet: bool,
    /// Stop after this many epochs of this invocation.
    pub stop_after: Option<usize>,
}

/// Trains as `cfg` says. The teacher backbone is written when the last epoch is done.
pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<Summary> {
    let (resume, quiet) = (opts.resume, opts.quiet);
    let out = &cfg.run.output_dir;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let ckpt_path = out.join(CHECKPOINT);
    if ckpt_path.exists() && !resume {
        bail!(
            "{} already exists: pass --resume to continue that run, or choose another output_dir",
            ckpt_path.display()
        );
    }
    let device = select_device(cfg.run.device)?;
    let data_path = &cfg.run.data_path;
    let dataset = Arc::new(
        ImageDataset::open(data_path, Verify::Full)
            .with_context(|| format!("cannot load data_path {}", data_path.display()))?,
    );
    for s in dataset.skipped() {
        eprintln!("warning: skipping {}: {}", s.path.display(), s.reason);
    }
    let photometric = cfg.run.photometric.resolve(device);
    // With the photometric stage on the device the workers only decode, crop and resize.
    let device_photo = (photometric == Photometric::Deferred)
        .then(|| DevicePhotometric::new(cfg.augment.mean, cfg.augment.std, device));
    let loader = Loader::new(
        dataset.clone(),
        cfg.augment.clone(),
        LoaderConfig {
            batch_size: cfg.optim.batch_size,
            num_workers: cfg.run.num_workers,
            prefetch: 3,
            seed: cfg.run.seed,
            shuffle: true,
            drop_last: true,
            photometric,
        },
    )?;
    let niter = loader.batches_per_epoch();
    tch::manual_seed(checkpoint::seed_for_epoch(cfg.run.seed, usize::MAX));
    let mut run = DinoStep::new(cfg, niter, device)?;

    let (mut start_epoch, mut step) = (0, 0);
    if resume && ckpt_path.exists() {
        let ck = Checkpoint::read(&ckpt_path)?;
        ensure_compatible(&ck.config, cfg, &ckpt_path)?;
        ck.restore(
            &run.student,
            &run.teacher,
            &mut run.optimizer,
            &mut run.loss,
        )?;
        (start_epoch, step) = (ck.epoch, ck.step);
        eprintln!(
            "resuming {} at epoch {start_epoch}, step {step}",
            ckpt_path.display()
        );
    }
    std::fs::write(out.join(CONFIG), cfg.to_toml())
        .with_context(|| format!("cannot write {}", out.join(CONFIG).display()))?;
    let mut log = MetricsLog::append(out)?;
    let max_ent = max_entropy(cfg.model.out_dim);
    let mut summary = Summary {
        epochs_run: 0,
        epoch_losses: Vec::new(),
        teacher_path: out.join(TEACHER),
        skipped_files: 0,
        finished: false,
    };

    let epochs = cfg.optim.epochs;
    let end_epoch = opts
        .stop_after
        .map_or(epochs, |n| (start_epoch + n).min(epochs));
    for epoch in start_epoch..end_epoch {
        tch::manual_seed(checkpoint::seed_for_epoch(cfg.run.seed, epoch));
        let bar = progress_bar(niter, epoch, epochs, quiet);
        let started = Instant::now();
        let (mut loss_sum, mut seen) = (Tensor::zeros([], (Kind::Float, device)), 0usize);
        let mut window = (Instant::now(), 0usize);
        for (i, batch) in loader.epoch(epoch as u64).enumerate() {
            let batch = batch?;
            let it = epoch * niter + i;
            let (global, local) = match &device_photo {
                Some(dp) => photometric_on_device(&batch, dp)?,
                None => to_device(&batch, device),
            };
            let StepOut {
                loss,
                teacher_out,
                values: v,
            } = run.step(&global, local.as_ref(), it)?;
            loss_sum += &loss;
            seen += 1;
            step += 1;
            window.1 += batch.batch_size;

            if step % cfg.run.log_freq.max(1) == 0 || i + 1 == niter {
                // One host read-back per log_freq steps.
                let value = loss.double_value(&[]);
                if !value.is_finite() {
                    bar.abandon();
                    bail!(
                        "loss is {value} at epoch {epoch}, step {step}: training stopped; the last good checkpoint ({}) is intact",
                        ckpt_path.display()
                    );
                }
                let stats = run.loss.teacher_stats(&teacher_out, epoch)?;
                let row = StepRow {
                    epoch,
                    step,
                    loss: value,
                    lr: v.lr,
                    wd: v.wd,
                    momentum: v.momentum,
                    teacher_temp: v.teacher_temp,
                    teacher_entropy: stats.entropy,
                    teacher_mean_entropy: stats.mean_entropy,
                    images_per_s: window.1 as f64 / window.0.elapsed().as_secs_f64(),
                };
                window = (Instant::now(), 0);
                if let Some(w) = metrics::collapse_warning(&row, max_ent) {
                    metrics::warn_line(&bar, &format!("warning: epoch {epoch} step {step}: {w}"));
                }
                bar.set_message(format!(
                    "loss {:.4} lr {:.2e} wd {:.3} m {:.4} {:.0} img/s",
                    row.loss, row.lr, row.wd, row.momentum, row.images_per_s
                ));
                log.write(&Row::Step(row))?;
            }
            bar.inc(1);
        }
        let mean_loss = loss_sum.double_value(&[]) / seen.max(1) as f64;
        if !mean_loss.is_finite() {
            bar.abandon();
            bail!(
                "mean loss of epoch {epoch} is {mean_loss}: training stopped; the last good checkpoint ({}) is intact",
                ckpt_path.display()
            );
        }
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        let row = EpochRow {
            epoch,
            step,
            loss: mean_loss,
            seconds: secs,
            images_per_s: (seen * cfg.optim.batch_size) as f64 / secs,
            skipped_files: loader.skipped_count(),
        };
        if !quiet {
            eprintln!(
                "epoch {}/{}: loss {:.4}, {:.1} img/s, {:.0}s",
                epoch + 1,
                epochs,
                mean_loss,
                row.images_per_s,
                secs
            );
        }
        log.write(&Row::Epoch(row))?;
        summary.epoch_losses.push(mean_loss);
        summary.epochs_run += 1;

        let state = TrainState {
            config: cfg,
            student: &run.student,
            teacher: &run.teacher,
            optimizer: &run.optimizer,
            loss: &run.loss,
            epoch: epoch + 1,
            step,
        };
        checkpoint::save(&ckpt_path, &state)?;
        let saveckp_freq = cfg.run.saveckp_freq;
        if saveckp_freq > 0 && (epoch + 1) % saveckp_freq == 0 {
            checkpoint::save(
                &out.join(format!("checkpoint{:04}.safetensors", epoch + 1)),
                &state,
            )?;
        }
        let knn_freq = cfg.knn.knn_freq;
        if knn_freq > 0 && ((epoch + 1) % knn_freq == 0 || epoch + 1 == epochs) {
            let r = crate::knn_eval::during_training(cfg, &run.teacher, device, quiet)?;
            if !quiet {
                eprintln!(
                    "k-NN after epoch {}: top-1 {:.2}%, top-5 {:.2}%",
                    epoch + 1,
                    r.top1,
                    r.top5
                );
            }
            log.write(&Row::Knn(metrics::KnnRow {
                epoch,
                step,
                top1: r.top1,
                top5: r.top5,
                k: cfg.knn.knn_k,
            }))?;
        }
    }
    if end_epoch == epochs {
        save_teacher_backbone(&summary.teacher_path, &run.teacher, cfg)?;
    }
    summary.finished = end_epoch == epochs;
    summary.skipped_files = loader.skipped_count();
    drop(log);
    if summary.finished {
        plot_curves(out, quiet);
    }
    Ok(summary)
}

/// Charts of the finished run; a failure is a warning, never an error that loses the run.
fn plot_curves(out: &Path, quiet: bool) {
    match crate::plot::plot_run(out) {
        Ok(r) => {
            if !quiet {
                for w in &r.warnings {
                    eprintln!("warning: {w}");
                }
                eprintln!(
                    "training curves written to {}",
                    out.join(crate::plot::PLOT_DIR).display()
                );
            }
        }
        Err(e) => eprintln!("warning: cannot plot the training curves: {e}"),
    }
}

/// The teacher backbone alone, official keys, with its config: `dino-export`'s input.
pub fn save_teacher_backbone(path: &Path, teacher: &DinoNet, cfg: &TrainConfig) -> Result<()> {
    let tensors = dino_models::io::named_raw(&teacher.vs, "")
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("backbone.").map(|k| (k.to_string(), v)))
        .collect();
    let mut vit = cfg.vit()?;
    vit.drop_path_rate = 0.0;
    let meta = dino_core::st::backbone_metadata(
        &vit,
        None,
        Some(&cfg.eval_transform()),
        dino_core::st::KIND_BACKBONE,
    );
    dino_core::st::write_atomic(path, &tensors, meta)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A resumed run must train the same model on the same data; schedule lengths may differ
/// only through `epochs`.
fn ensure_compatible(saved: &TrainConfig, now: &TrainConfig, path: &Path) -> Result<()> {
    ensure!(
        saved.vit()? == now.vit()? && saved.head() == now.head(),
        "{}: architecture differs from the configuration given now",
        path.display()
    );
    ensure!(
        saved.optim.batch_size == now.optim.batch_size
            && saved.optim.optimizer == now.optim.optimizer,
        "{}: batch_size/optimizer differ from the configuration given now",
        path.display()
    );
    Ok(())
}

/// Uploads the raw `u8` crops (pinned, asynchronous on CUDA) and runs the photometric stage
/// there: `[2b, 3, g, g]` and `[n*b, 3, l, l]` normalised `f32`, as [`to_device`] gives.
fn photometric_on_device(
    b: &MultiCropBatch,
    dp: &DevicePhotometric,
) -> Result<(Tensor, Option<Tensor>)> {
    let raw = b
        .raw
        .as_ref()
        .context("the loader returned no raw crops for the device photometric stage")?;
    let n = b.batch_size as i64;
    let (g, l) = (b.global_size as i64, b.local_size as i64);
    let up = |v: &[u8], shape: [i64; 4]| dp.upload(Tensor::from_slice(v).view(shape));
    let global = dp.apply(&up(&raw.global, [2 * n, 3, g, g])?, &raw.global_params)?;
    let local = if b.n_local > 0 {
        let crops = up(&raw.local, [b.n_local as i64 * n, 3, l, l])?;
        Some(dp.apply(&crops, &raw.local_params)?)
    } else {
        None
    };
    Ok((global, local))
}

/// `[2b, 3, g, g]` and `[n*b, 3, l, l]` on the device.
fn to_device(b: &MultiCropBatch, device: Device) -> (Tensor, Option<Tensor>) {
    let n = b.batch_size as i64;
    let (g, l) = (b.global_size as i64, b.local_size as i64);
    let up = |v: &[f32], shape: [i64; 4]| {
        let t = Tensor::from_slice(v).view(shape);
        if device.is_cuda() {
            // `_pin_memory`: what `pin_memory` does for a fresh tensor, without the
            // deprecation warning libtorch prints when tch passes it the device.
            t.internal_pin_memory(device)
                .to_device_(device, Kind::Float, true, false)
        } else {
            t
        }
    };
    let global = up(&b.global, [2 * n, 3, g, g]);
    let local = (b.n_local > 0).then(|| up(&b.local, [b.n_local as i64 * n, 3, l, l]));
    (global, local)
}

fn progress_bar(len: usize, epoch: usize, epochs: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar
}
