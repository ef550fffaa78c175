//! The training loop of the probe (`eval_linear.py`'s `train` / `validate_network`) and
//! the `--evaluate` mode.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use dino_core::image_io::ImageFolder;
use dino_core::linear::{LinearHead, LinearHeadConfig};
use dino_models::VisionTransformer;
use serde_json::json;
use tch::Tensor;

use super::features::{self, FeatureRecipe, FeatureSet, TrainAugment};
use super::probe::{Accuracy, LinearProbe, accuracy, scaled_lr};
use super::{Backbone, LOG_FILE, LinearConfig, PROBE_FILE, Protocol, load_backbone};
use crate::data::SampleRng;
use crate::error::{Result, TrainError};

/// What a training run reached.
#[derive(Clone, Debug)]
pub struct LinearSummary {
    /// The best evaluation (highest top-1), whose weights were written.
    pub best: Accuracy,
    pub best_epoch: usize,
    pub recipe: FeatureRecipe,
    pub train_images: usize,
    pub skipped: usize,
    pub probe: PathBuf,
}

/// Trains the probe for `cfg.epochs`, evaluating every `val_freq` epochs and at the end;
/// the best evaluated epoch's weights are written to `output_dir/linear.safetensors`.
pub fn train_probe(cfg: &LinearConfig) -> Result<LinearSummary> {
    cfg.check()?;
    std::fs::create_dir_all(&cfg.output_dir).map_err(|e| TrainError::io(&cfg.output_dir, e))?;
    let bb = load_backbone(&cfg.pretrained_weights, cfg.checkpoint_key, cfg.device)?;
    let model = &bb.loaded.model;
    let recipe = cfg.recipe(&model.cfg)?;
    let (train_folder, val_folder) = (ImageFolder::scan(&cfg.train)?, ImageFolder::scan(&cfg.val)?);
    same_classes(&train_folder, &val_folder)?;
    let classes = train_folder.classes.clone();
    let feats = |f: &ImageFolder| {
        features::folder_features(
            model,
            f,
            &bb.eval,
            recipe,
            cfg.batch_size,
            cfg.device,
            cfg.quiet,
        )
    };
    // The backbone is frozen and the eval transform deterministic: the val features are
    // the same every epoch.
    let val = feats(&val_folder)?;
    let cached = match cfg.protocol {
        Protocol::CachedFeatures => Some(feats(&train_folder)?),
        Protocol::Augmented => None,
    };
    tch::manual_seed(cfg.seed as i64);
    let lr = scaled_lr(cfg.lr, cfg.batch_size, 1);
    let feat_dim = recipe.feat_dim(model.cfg.embed_dim);
    let mut probe = LinearProbe::new(feat_dim, classes.len(), lr, cfg.epochs, cfg.device)?;
    let head_config = LinearHeadConfig {
        classes,
        embed_dim: model.cfg.embed_dim,
        n_last_blocks: recipe.n_last_blocks,
        avgpool_patchtokens: recipe.avgpool_patchtokens,
        backbone_fingerprint: bb.fingerprint.clone(),
    };
    let aug = TrainAugment::new(bb.eval.crop_size, bb.eval.mean, bb.eval.std, cfg.seed);
    let source = match &cached {
        Some(set) => Source::Cached(set),
        None => Source::Images {
            folder: &train_folder,
            model,
            aug: &aug,
            recipe,
        },
    };
    let out = cfg.output_dir.join(PROBE_FILE);
    let fit = fit(&mut probe, &source, &val, &head_config, &out, cfg)?;
    Ok(LinearSummary {
        best: fit.best,
        best_epoch: fit.best_epoch,
        recipe,
        train_images: match &cached {
            Some(set) => set.len(),
            None => train_folder.samples.len() - fit.skipped,
        },
        skipped: fit.skipped + val.skipped + cached.as_ref().map_or(0, |c| c.skipped),
        probe: out,
    })
}

/// The best evaluation of a run.
struct Fit {
    best: Accuracy,
    best_epoch: usize,
    /// Unreadable training files (of the last epoch).
    skipped: usize,
}

/// The epochs: train, evaluate when due, keep the best weights in `out`, log every epoch.
fn fit(
    probe: &mut LinearProbe,
    source: &Source<'_>,
    val: &FeatureSet,
    head: &LinearHeadConfig,
    out: &Path,
    cfg: &LinearConfig,
) -> Result<Fit> {
    let log_path = cfg.output_dir.join(LOG_FILE);
    let mut log =
        BufWriter::new(File::create(&log_path).map_err(|e| TrainError::io(&log_path, e))?);
    let mut best: Option<Fit> = None;
    for epoch in 0..cfg.epochs {
        let lr = probe.start_epoch(epoch);
        let (loss, skipped) = run_epoch(probe, source, cfg, epoch)?;
        let mut row = json!({"epoch": epoch, "train_loss": loss, "train_lr": lr});
        let last = epoch + 1 == cfg.epochs;
        if epoch % cfg.val_freq == 0 || last {
            let n = head.num_classes();
            let acc = accuracy(
                |x| probe.logits(x),
                &val.feats,
                &val.labels,
                n,
                cfg.batch_size,
            );
            if best.as_ref().is_none_or(|b| acc.top1 > b.best.top1) {
                write_head(probe, head, out)?;
                best = Some(Fit {
                    best: acc,
                    best_epoch: epoch,
                    skipped,
                });
            }
            let best_top1 = best.as_ref().map_or(acc.top1, |b| b.best.top1);
            report_epoch(epoch, cfg.epochs, loss, &acc, best_top1);
            row["test_acc1"] = json!(acc.top1);
            row["test_acc5"] = json!(acc.top5);
            row["test_loss"] = json!(acc.loss);
            row["best_acc1"] = json!(best_top1);
        }
        if let Some(b) = best.as_mut().filter(|_| last) {
            b.skipped = skipped;
        }
        writeln!(log, "{row}")
            .and_then(|_| log.flush())
            .map_err(|e| TrainError::io(&log_path, e))?;
    }
    best.ok_or_else(|| TrainError::Invalid("no epoch was evaluated".into()))
}

fn same_classes(train: &ImageFolder, val: &ImageFolder) -> Result<()> {
    if train.classes == val.classes {
        return Ok(());
    }
    Err(TrainError::run(
        &val.root,
        format!(
            "classes {:?} differ from those of {} ({:?})",
            val.classes,
            train.root.display(),
            train.classes
        ),
    ))
}

fn report_epoch(epoch: usize, epochs: usize, loss: f64, acc: &Accuracy, best: f64) {
    let top5 = acc
        .top5
        .map_or(String::new(), |t| format!("  top-5 {t:.2}%"));
    eprintln!(
        "epoch {}/{epochs}: train loss {loss:.4}  val top-1 {:.2}%{top5}  (best top-1 {best:.2}%)",
        epoch + 1,
        acc.top1
    );
}

fn write_head(probe: &LinearProbe, config: &LinearHeadConfig, path: &Path) -> Result<()> {
    let (weight, bias) = probe.weights()?;
    LinearHead {
        config: config.clone(),
        weight,
        bias,
    }
    .write(path)?;
    Ok(())
}

/// Where an epoch's training batches come from.
enum Source<'a> {
    Cached(&'a FeatureSet),
    Images {
        folder: &'a ImageFolder,
        model: &'a VisionTransformer,
        aug: &'a TrainAugment,
        recipe: FeatureRecipe,
    },
}

/// One pass over the training set in a seeded random order; returns the mean batch loss
/// (the official `global_avg`) and the number of unreadable files.
fn run_epoch(
    probe: &mut LinearProbe,
    source: &Source<'_>,
    cfg: &LinearConfig,
    epoch: usize,
) -> Result<(f64, usize)> {
    let n = match source {
        Source::Cached(s) => s.len(),
        Source::Images { folder, .. } => folder.samples.len(),
    };
    let mut order: Vec<usize> = (0..n).collect();
    SampleRng::for_sample(cfg.seed, epoch as u64, u64::MAX).shuffle(&mut order);
    let bar = features::bar(n, format!("linear epoch {}", epoch + 1), cfg.quiet);
    let (mut sum, mut steps, mut skipped) = (0.0, 0usize, 0usize);
    for chunk in order.chunks(cfg.batch_size) {
        let batch = match source {
            Source::Cached(s) => {
                bar.inc(chunk.len() as u64);
                let idx: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
                let idx = Tensor::from_slice(&idx).to_device(s.feats.device());
                Some((
                    s.feats.index_select(0, &idx),
                    s.labels.index_select(0, &idx),
                ))
            }
            Source::Images {
                folder,
                model,
                aug,
                recipe,
            } => {
                let samples: Vec<_> = chunk.iter().map(|&i| (i, &folder.samples[i])).collect();
                let loaded = features::load_batch(&samples, aug.size, &bar, |i, img| {
                    aug.render(img, epoch, i)
                })?;
                loaded.map(|(x, y)| {
                    skipped += chunk.len() - y.size()[0] as usize;
                    let f = features::linear_features(model, &x.to_device(cfg.device), *recipe);
                    (f, y.to_device(cfg.device))
                })
            }
        };
        if let Some((x, y)) = batch {
            sum += probe.step(&x, &y)?;
            steps += 1;
            bar.set_message(format!("loss {:.4}", sum / steps as f64));
        }
    }
    bar.finish_and_clear();
    if steps == 0 {
        return Err(TrainError::run(&cfg.train, "no readable image"));
    }
    Ok((sum / steps as f64, skipped))
}

/// `--evaluate`: the saved probe `probe_path` on `cfg.val` over the backbone of
/// `cfg.pretrained_weights`, which must be the one it was trained on.
pub fn evaluate_saved(cfg: &LinearConfig, probe_path: &Path) -> Result<(Accuracy, LinearHead)> {
    super::check_folder(&cfg.val, "validation", "--val")?;
    let head = LinearHead::read(probe_path)?;
    let bb: Backbone = load_backbone(&cfg.pretrained_weights, cfg.checkpoint_key, cfg.device)?;
    let model = &bb.loaded.model;
    let c = &head.config;
    c.validate(Some(&model.cfg))
        .map_err(|why| TrainError::run(probe_path, why))?;
    if c.backbone_fingerprint != bb.fingerprint {
        return Err(TrainError::run(
            probe_path,
            format!(
                "trained on another backbone (fingerprint {}…), not {} ({}…)",
                &c.backbone_fingerprint
                    .get(..12)
                    .unwrap_or(&c.backbone_fingerprint),
                cfg.pretrained_weights.display(),
                &bb.fingerprint[..12]
            ),
        ));
    }
    let recipe = FeatureRecipe {
        n_last_blocks: c.n_last_blocks,
        avgpool_patchtokens: c.avgpool_patchtokens,
    };
    recipe.check(&model.cfg)?;
    let val_folder = ImageFolder::scan(&cfg.val)?;
    if val_folder.classes != c.classes {
        return Err(TrainError::run(
            &cfg.val,
            format!(
                "classes {:?} differ from the probe's {:?}",
                val_folder.classes, c.classes
            ),
        ));
    }
    let val = features::folder_features(
        model,
        &val_folder,
        &bb.eval,
        recipe,
        cfg.batch_size,
        cfg.device,
        cfg.quiet,
    )?;
    let mut probe = LinearProbe::new(
        c.feat_dim(),
        c.num_classes(),
        cfg.lr,
        cfg.epochs,
        cfg.device,
    )?;
    probe.set_weights(&head.weight, &head.bias)?;
    let acc = accuracy(
        |x| probe.logits(x),
        &val.feats,
        &val.labels,
        c.num_classes(),
        cfg.batch_size,
    );
    Ok((acc, head))
}
