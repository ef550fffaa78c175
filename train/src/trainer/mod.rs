//! The DINO training loop: the paper's Algorithm 1 (official `train_dino` /
//! `train_one_epoch`), with checkpointing, logging and evaluation as named phases beside it.
//!
//! ```text
//! for x in loader:                        run_epoch
//!     x1, x2, locals = augment(x)         the loader (CPU) + Feed (device photometric stage)
//!     t = gt(x1, x2); s = gs(all crops)   DinoStep::step: forwards, loss H(t - C, s)
//!     loss.backward(); clip; update(gs)   DinoStep::step: backward, clip, AdamW
//!     gt = l*gt + (1-l)*gs                DinoStep::step: teacher EMA
//!     C = m*C + (1-m)*mean(t)             DinoStep::step: centre update (in the loss)
//!     every log_freq steps                log_step: loss, schedules, teacher entropy
//! at every epoch end                      end_of_epoch: checkpoint, k-NN
//! after the last epoch                    finish: teacher backbone, plots
//! ```

mod feed;
mod output;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, Checkpoint};
use crate::config::TrainConfig;
use crate::data::{ImageDataset, Loader, LoaderConfig, Shard, Verify};
use crate::dist::Dist;
use crate::error::{Result, TrainError};
use crate::loss::max_entropy;
use crate::metrics::{self, EpochRow, KnnRow, MetricsLog, Row, StepRow};
use crate::step::{DinoStep, StepOut};
use feed::Feed;
pub use output::{CHECKPOINT, CONFIG, RunDir, TEACHER, save_teacher_backbone};

/// What a finished (or stopped) run reports.
#[derive(Debug)]
pub struct Summary {
    pub epochs_run: usize,
    pub epoch_losses: Vec<f64>,
    pub teacher_path: std::path::PathBuf,
    pub skipped_files: usize,
    /// All `epochs` are done (else stopped by `stop_after` or `time_limit`).
    pub finished: bool,
    /// Stopped early by `time_limit` (the teacher backbone is written all the same).
    pub time_limited: bool,
    /// The teacher backbone was written (at the end, at the time limit, or with
    /// `stop_after` 0 before any step).
    pub teacher_written: bool,
    /// This process wrote the files (rank 0 of a multi-process run, or the only process).
    pub wrote_files: bool,
}

/// How one invocation runs (not part of the training recipe).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from `output_dir/checkpoint.safetensors`.
    pub resume: bool,
    pub quiet: bool,
    /// Stop after this many epochs of this invocation.
    pub stop_after: Option<usize>,
    /// Stop after the epoch that brings this invocation's training time (the in-training
    /// k-NN evaluations excluded) to this budget; the teacher backbone is written.
    pub time_limit: Option<std::time::Duration>,
}

/// Trains as `cfg` says. The teacher backbone is written when the last epoch is done.
pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<Summary> {
    Trainer::new(cfg, opts)?.fit()
}

/// Where training stands: epochs and optimisation steps completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub epoch: usize,
    pub step: usize,
}

/// A training run: data, networks and their state, output folder.
pub struct Trainer {
    cfg: TrainConfig,
    /// k-NN evaluation is off because a k-NN folder has no class folders.
    knn_unlabelled: bool,
    opts: RunOptions,
    device: Device,
    loader: Loader,
    feed: Feed,
    step: DinoStep,
    at: Position,
    dir: RunDir,
    /// Rank 0's (the only one that writes files).
    log: Option<MetricsLog>,
    summary: Summary,
    dist: Option<Rc<Dist>>,
    /// Time spent in the k-NN evaluations during training (not counted by `time_limit`).
    knn_time: Duration,
}

/// Sums of one epoch, read back once at its end.
struct EpochTotals {
    loss: Tensor,
    steps: usize,
    started: Instant,
    /// Images since the last log line, and when that window began.
    window: (usize, Instant),
}

/// The training images (every file verified; rank 0 reports what was skipped) and the note
/// for an in-training k-NN that cannot run on unlabelled folders.
fn open_data(cfg: &TrainConfig, main: bool) -> Result<(Arc<ImageDataset>, Option<String>)> {
    let dataset = Arc::new(ImageDataset::open(&cfg.run.data_path, Verify::Full)?);
    let knn_note = crate::knn_eval::unlabelled_note(cfg)?;
    if main {
        for s in dataset.skipped() {
            eprintln!("warning: skipping {}: {}", s.path.display(), s.reason);
        }
        eprintln!(
            "data: {}: {}",
            cfg.run.data_path.display(),
            dataset.describe()
        );
        if let Some(note) = &knn_note {
            eprintln!("note: {note}");
        }
    }
    Ok((dataset, knn_note))
}

impl Trainer {
    /// Prepares the output folder, the data, fresh networks and, with `resume`, the state of
    /// the last checkpoint.
    pub fn new(cfg: &TrainConfig, opts: &RunOptions) -> Result<Self> {
        let (dist, device) = Dist::from_env(cfg)?;
        let main = dist.as_ref().is_none_or(|d| d.is_main());
        let dir = RunDir::prepare(&cfg.run.output_dir, opts.resume)?;
        if opts.resume && !dir.checkpoint().exists() {
            return Err(TrainError::run(
                dir.checkpoint(),
                "--resume: there is no checkpoint to continue from (start without --resume)",
            ));
        }
        let (dataset, knn_note) = open_data(cfg, main)?;
        let shard = dist.as_ref().map_or(Shard::default(), |d| Shard {
            rank: d.rank(),
            world: d.world_size(),
        });
        let feed = Feed::new(cfg, device);
        let loader = Loader::new(
            dataset,
            cfg.augment.clone(),
            LoaderConfig {
                batch_size: cfg.optim.batch_size,
                num_workers: cfg.run.num_workers,
                prefetch: 3,
                seed: cfg.run.seed,
                shuffle: true,
                drop_last: true,
                photometric: feed.photometric(),
                shard,
            },
        )?;
        tch::manual_seed(checkpoint::seed_for_epoch(cfg.run.seed, usize::MAX));
        let niter = loader.batches_per_epoch();
        let mut step = DinoStep::with_dist(cfg, niter, device, dist.clone())?;
        let at = initial_state(&mut step, cfg, opts, &dir, main)?;
        let log = if main {
            dir.write_config(cfg)?;
            Some(MetricsLog::append(dir.path())?)
        } else {
            None
        };
        let mut opts = opts.clone();
        // One progress display: rank 0's.
        opts.quiet |= !main;
        let summary = Summary {
            epochs_run: 0,
            epoch_losses: Vec::new(),
            teacher_path: dir.teacher(),
            skipped_files: 0,
            finished: false,
            time_limited: false,
            teacher_written: false,
            wrote_files: main,
        };
        Ok(Self {
            cfg: cfg.clone(),
            knn_unlabelled: knn_note.is_some(),
            opts,
            device,
            loader,
            feed,
            step,
            at,
            dir,
            log,
            summary,
            dist,
            knn_time: Duration::ZERO,
        })
    }

    /// Whether this process writes the files (rank 0, or the only process).
    fn is_main(&self) -> bool {
        self.dist.as_ref().is_none_or(|d| d.is_main())
    }

    fn write(&mut self, row: Row) -> Result<()> {
        match &mut self.log {
            Some(log) => log.write(&row),
            None => Ok(()),
        }
    }

    /// Runs the remaining epochs (or `stop_after` of them, or those that fit in `time_limit`).
    pub fn fit(mut self) -> Result<Summary> {
        let end = self.opts.stop_after.map_or(self.cfg.optim.epochs, |n| {
            (self.at.epoch + n).min(self.cfg.optim.epochs)
        });
        let started = Instant::now();
        let mut time_limited = false;
        for epoch in self.at.epoch..end {
            let bar = progress_bar(
                self.loader.batches_per_epoch(),
                epoch,
                &self.cfg,
                &self.opts,
            );
            let totals = self.run_epoch(epoch, &bar).inspect_err(|_| bar.abandon())?;
            bar.finish_and_clear();
            self.end_of_epoch(epoch, totals)?;
            if epoch + 1 < end && self.out_of_time(started.elapsed())? {
                time_limited = true;
                break;
            }
        }
        let finished = !time_limited && end == self.cfg.optim.epochs;
        self.summary.time_limited = time_limited;
        // `--stop-after 0` runs no step: the teacher as it starts (a random initialisation,
        // or the resumed one) is written, the baseline of a k-NN evaluation.
        let at_start = self.opts.stop_after == Some(0);
        self.finish(finished || time_limited || at_start)
    }

    /// Whether `time_limit` is spent after `elapsed` (the k-NN evaluations not counted).
    /// Rank 0's clock decides for every rank of a multi-process run.
    fn out_of_time(&self, elapsed: Duration) -> Result<bool> {
        let Some(limit) = self.opts.time_limit else {
            return Ok(false);
        };
        let over = elapsed.saturating_sub(self.knn_time) >= limit;
        let Some(dist) = &self.dist else {
            return Ok(over);
        };
        let flag = Tensor::from(f32::from(u8::from(over))).to_device(self.device);
        dist.broadcast(&[&flag])?;
        Ok(flag.double_value(&[]) > 0.5)
    }

    /// One pass over the data: Algorithm 1's loop body per batch, a log line every
    /// `log_freq` steps.
    fn run_epoch(&mut self, epoch: usize, bar: &ProgressBar) -> Result<EpochTotals> {
        tch::manual_seed(checkpoint::seed_for_epoch(self.cfg.run.seed, epoch));
        let niter = self.loader.batches_per_epoch();
        let mut totals = EpochTotals {
            loss: Tensor::zeros([], (Kind::Float, self.device)),
            steps: 0,
            started: Instant::now(),
            window: (0, Instant::now()),
        };
        for (i, batch) in self.loader.epoch(epoch as u64).enumerate() {
            let batch = batch?;
            let (global, local) = self.feed.crops(&batch)?;
            let log_freq = self.cfg.run.log_freq.max(1);
            let observe = (self.at.step + 1).is_multiple_of(log_freq) || i + 1 == niter;
            let out =
                self.step
                    .step_observed(&global, local.as_ref(), epoch * niter + i, observe)?;
            totals.loss += &out.loss;
            totals.steps += 1;
            totals.window.0 += batch.batch_size;
            self.at.step += 1;
            if observe {
                self.log_step(epoch, &out, &mut totals.window, bar)?;
            }
            bar.inc(1);
        }
        Ok(totals)
    }

    /// Reads the step's loss back (one host synchronisation per `log_freq` steps), stops on
    /// a non-finite loss, and logs the schedules and the teacher's entropy.
    fn log_step(
        &mut self,
        epoch: usize,
        out: &StepOut,
        window: &mut (usize, Instant),
        bar: &ProgressBar,
    ) -> Result<()> {
        let loss = self.finite("loss", out.loss.f_double_value(&[])?, epoch)?;
        let stats = out
            .teacher_stats
            .ok_or_else(|| TrainError::Invalid("an observed step has teacher statistics".into()))?;
        let v = &out.values;
        let row = StepRow {
            epoch,
            step: self.at.step,
            loss,
            lr: v.lr,
            wd: v.wd,
            momentum: v.momentum,
            teacher_temp: v.teacher_temp,
            teacher_entropy: stats.entropy,
            teacher_mean_entropy: stats.mean_entropy,
            images_per_s: window.0 as f64 / window.1.elapsed().as_secs_f64(),
        };
        *window = (0, Instant::now());
        if let Some(w) = metrics::collapse_warning(&row, max_entropy(self.cfg.model.out_dim)) {
            let at = format!("epoch {epoch} step {}", self.at.step);
            metrics::warn_line(bar, &format!("warning: {at}: {w}"));
        }
        bar.set_message(format!(
            "loss {:.4} lr {:.2e} wd {:.3} m {:.4} {:.0} img/s",
            row.loss, row.lr, row.wd, row.momentum, row.images_per_s
        ));
        self.write(Row::Step(row))
    }

    /// The epoch's mean loss and speed, the checkpoint(s), then the k-NN evaluation when due.
    fn end_of_epoch(&mut self, epoch: usize, totals: EpochTotals) -> Result<()> {
        let mean = totals.loss.f_double_value(&[])? / totals.steps.max(1) as f64;
        let mean_loss = self.finite("mean loss of the epoch", mean, epoch)?;
        let secs = totals.started.elapsed().as_secs_f64();
        let row = EpochRow {
            epoch,
            step: self.at.step,
            loss: mean_loss,
            seconds: secs,
            images_per_s: (totals.steps * self.cfg.optim.batch_size) as f64 / secs,
            skipped_files: self.loader.skipped_count(),
        };
        if !self.opts.quiet {
            eprintln!(
                "epoch {}/{}: loss {mean_loss:.4}, {:.1} img/s, {secs:.0}s",
                epoch + 1,
                self.cfg.optim.epochs,
                row.images_per_s
            );
        }
        self.write(Row::Epoch(row))?;
        self.summary.epoch_losses.push(mean_loss);
        self.summary.epochs_run += 1;
        self.at.epoch = epoch + 1;
        self.save_checkpoints()?;
        if self.knn_due(epoch) {
            let t = Instant::now();
            self.evaluate_knn(epoch)?;
            self.knn_time += t.elapsed();
        }
        Ok(())
    }

    /// `checkpoint.safetensors` every epoch, `checkpoint<NNNN>.safetensors` every
    /// `saveckp_freq` epochs; both written atomically.
    fn save_checkpoints(&self) -> Result<()> {
        if !self.is_main() {
            return Ok(());
        }
        let state = self.step.state();
        checkpoint::save(&self.dir.checkpoint(), &self.cfg, &state, self.at)?;
        let freq = self.cfg.run.saveckp_freq;
        if freq > 0 && self.at.epoch.is_multiple_of(freq) {
            let numbered = self.dir.numbered_checkpoint(self.at.epoch);
            checkpoint::save(&numbered, &self.cfg, &state, self.at)?;
        }
        Ok(())
    }

    fn knn_due(&self, epoch: usize) -> bool {
        let freq = self.cfg.knn.knn_freq;
        freq > 0
            && !self.knn_unlabelled
            && ((epoch + 1).is_multiple_of(freq) || epoch + 1 == self.cfg.optim.epochs)
    }

    fn evaluate_knn(&mut self, epoch: usize) -> Result<()> {
        let teacher = self.step.teacher();
        let dist = self.dist.as_deref();
        let r = crate::knn_eval::during_training(
            &self.cfg,
            teacher,
            self.device,
            self.opts.quiet,
            dist,
        )?;
        if !self.opts.quiet {
            eprintln!(
                "k-NN after epoch {}: top-1 {:.2}%, top-5 {:.2}%",
                epoch + 1,
                r.top1,
                r.top5
            );
        }
        self.write(Row::Knn(KnnRow {
            epoch,
            step: self.at.step,
            top1: r.top1,
            top5: r.top5,
            k: self.cfg.knn.knn_k,
        }))
    }

    /// After the last epoch: the teacher backbone (dino-export's input) and the charts.
    /// `write_teacher`: all epochs are done, `time_limit` stopped the run, or `stop_after`
    /// is 0.
    fn finish(mut self, write_teacher: bool) -> Result<Summary> {
        let main = self.is_main();
        if write_teacher && main {
            save_teacher_backbone(&self.dir.teacher(), self.step.teacher(), &self.cfg)?;
        }
        self.summary.teacher_written = write_teacher;
        self.summary.finished = self.at.epoch == self.cfg.optim.epochs;
        self.summary.skipped_files = self.loader.skipped_count();
        drop(self.log);
        if write_teacher && main && self.summary.epochs_run > 0 {
            self.dir.plot_curves(self.opts.quiet);
        }
        Ok(self.summary)
    }

    /// `value`, or the error that stops training with the last checkpoint intact.
    fn finite(&self, what: &'static str, value: f64, epoch: usize) -> Result<f64> {
        if value.is_finite() {
            return Ok(value);
        }
        if let Some(d) = &self.dist {
            d.report_failure(&format!("{what} is {value} at epoch {epoch}"));
        }
        Err(TrainError::NonFinite {
            what,
            value,
            epoch,
            step: self.at.step,
            checkpoint: self.dir.checkpoint(),
        })
    }
}

fn progress_bar(len: usize, epoch: usize, cfg: &TrainConfig, opts: &RunOptions) -> ProgressBar {
    if opts.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, cfg.optim.epochs));
    bar
}

/// Where a run starts: the last checkpoint with `--resume`, else the starting weights of
/// the config (`pretrained_weights`/`init_from`) if any, else fresh networks at step 0.
fn initial_state(
    step: &mut DinoStep,
    cfg: &TrainConfig,
    opts: &RunOptions,
    dir: &RunDir,
    main: bool,
) -> Result<Position> {
    if opts.resume {
        let ck = Checkpoint::read(&dir.checkpoint())?;
        ck.ensure_compatible(cfg)?;
        step.restore(&ck)?;
        let at = Position {
            epoch: ck.epoch,
            step: ck.step,
        };
        if main {
            eprintln!(
                "resuming {} at epoch {}, step {}",
                dir.checkpoint().display(),
                at.epoch,
                at.step
            );
        }
        return Ok(at);
    }
    if let Some(w) = crate::pretrained::start_weights(cfg)? {
        step.start_from(&w)?;
        if main && !opts.quiet {
            eprintln!("starting from the weights of {}", w.path.display());
        }
    }
    Ok(Position::default())
}
