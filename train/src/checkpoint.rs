//! Training checkpoints: everything `--resume` needs to continue bit-for-bit.
//!
//! One safetensors file holds the student (`student.backbone.*`, `student.head.*`), the
//! teacher (`teacher.*`), the optimizer state (`optimizer.*`), the loss centre (`center`)
//! and, in the metadata, the architecture, the resolved training config, the epoch and the
//! step. Random state needs no bytes: libtorch's generator is reseeded from
//! `(seed, epoch)` at the start of every epoch and the data pipeline keys its streams by
//! `(seed, epoch, sample)`, so a run resumed at an epoch boundary draws what it would
//! have drawn. Files are written atomically, so a crash keeps the last good checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use dino_core::st::{self, RawTensor, StFile};
use dino_models::io::{from_raw, named_raw, to_raw};
use tch::Tensor;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::loss::DinoLoss;
use crate::model::DinoNet;
use crate::optim::Optimizer;
use crate::trainer::Position;

pub const META_TRAIN: &str = "dino_rs.train_config";
pub const META_EPOCH: &str = "dino_rs.epoch";
pub const META_STEP: &str = "dino_rs.step";
pub const META_RNG: &str = "dino_rs.rng";
const RNG_NOTE: &str = "libtorch generator reseeded with seed_for_epoch(seed, epoch) at each epoch start; data streams keyed by (seed, epoch, sample)";
const PREFIX_OPTIM: &str = "optimizer.";
const KEY_CENTER: &str = "center";

/// The libtorch seed of an epoch (drop-path masks, anything else drawn by libtorch).
pub fn seed_for_epoch(seed: u64, epoch: usize) -> i64 {
    (seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64) & (i64::MAX as u64)) as i64
}

/// The training step's part of a checkpoint ([`crate::step::DinoStep::state`]).
pub struct StepState<'a> {
    pub student: &'a DinoNet,
    pub teacher: &'a DinoNet,
    pub optimizer: &'a Optimizer,
    pub loss: &'a DinoLoss,
}

/// Writes `state` at `at` (epochs and steps completed) with `config`, atomically.
pub fn save(path: &Path, config: &TrainConfig, state: &StepState, at: Position) -> Result<()> {
    let mut tensors: BTreeMap<String, RawTensor> = named_raw(&state.student.vs, "student.");
    tensors.extend(named_raw(&state.teacher.vs, "teacher."));
    for (k, t) in state.optimizer.state_tensors() {
        tensors.insert(format!("{PREFIX_OPTIM}{k}"), to_raw(&t));
    }
    tensors.insert(KEY_CENTER.into(), to_raw(state.loss.center()));
    let mut meta = st::backbone_metadata(
        &config.vit()?,
        Some(&config.head()),
        Some(&config.eval_transform()),
        st::KIND_CHECKPOINT,
    );
    meta.insert(META_TRAIN.into(), config.to_toml());
    meta.insert(META_EPOCH.into(), at.epoch.to_string());
    meta.insert(META_STEP.into(), at.step.to_string());
    meta.insert(META_RNG.into(), RNG_NOTE.into());
    st::write_atomic(path, &tensors, meta)?;
    Ok(())
}

/// A checkpoint read back: its config and position.
pub struct Checkpoint {
    pub file: StFile,
    pub config: TrainConfig,
    pub epoch: usize,
    pub step: usize,
}

impl Checkpoint {
    pub fn read(path: &Path) -> Result<Self> {
        let file = StFile::read(path)?;
        file.check_format()?;
        let bad = |why: String| TrainError::run(path, why);
        let kind = file.meta(st::META_KIND)?;
        if kind != st::KIND_CHECKPOINT {
            return Err(bad(format!("holds a `{kind}`, not a training checkpoint")));
        }
        let config: TrainConfig = toml::from_str(file.meta(META_TRAIN)?)
            .map_err(|e| bad(format!("bad `{META_TRAIN}` metadata: {e}")))?;
        let num = |key: &str| -> Result<usize> {
            file.meta(key)?
                .parse()
                .map_err(|e| bad(format!("bad `{key}` metadata: {e}")))
        };
        let (epoch, step) = (num(META_EPOCH)?, num(META_STEP)?);
        Ok(Self {
            file,
            config,
            epoch,
            step,
        })
    }

    /// A resumed run must train the same model on the same data; schedule lengths may
    /// differ only through `epochs`.
    pub fn ensure_compatible(&self, now: &TrainConfig) -> Result<()> {
        let saved = &self.config;
        let path = &self.file.path;
        if saved.vit()? != now.vit()? || saved.head() != now.head() {
            return Err(TrainError::run(
                path,
                "architecture differs from the configuration given now",
            ));
        }
        if saved.optim.batch_size != now.optim.batch_size
            || saved.optim.optimizer != now.optim.optimizer
        {
            return Err(TrainError::run(
                path,
                "batch_size/optimizer differ from the configuration given now",
            ));
        }
        if self.epoch > now.optim.epochs {
            return Err(TrainError::run(
                path,
                format!(
                    "the checkpoint is at epoch {}, past epochs {} (raise --epochs to train on)",
                    self.epoch, now.optim.epochs
                ),
            ));
        }
        Ok(())
    }

    /// Every saved variable of the student and the teacher, names and shapes checked.
    pub fn restore_nets(&self, student: &DinoNet, teacher: &DinoNet) -> Result<()> {
        for (prefix, net) in [("student.", student), ("teacher.", teacher)] {
            let saved = self.file.with_prefix(prefix);
            let expected: Vec<(String, Vec<usize>)> = net
                .vs
                .variables()
                .iter()
                .map(|(k, t)| (k.clone(), t.size().iter().map(|&d| d as usize).collect()))
                .collect();
            dino_models::io::load_checked(&net.vs, &saved, &expected, &self.file.path)?;
        }
        Ok(())
    }

    pub fn restore_optimizer(&self, optimizer: &mut Optimizer) -> Result<()> {
        let path = &self.file.path;
        let state: Vec<(String, Tensor)> = self
            .file
            .with_prefix(PREFIX_OPTIM)
            .iter()
            .map(|(k, v)| Ok((k.clone(), from_raw(v, path, k)?)))
            .collect::<Result<_>>()?;
        if state.is_empty() {
            return Err(TrainError::run(path, "no optimizer state"));
        }
        optimizer
            .load_state(&state)
            .map_err(|e| TrainError::run(path, format!("optimizer state: {e}")))
    }

    pub fn restore_center(&self, loss: &mut DinoLoss) -> Result<()> {
        let path = &self.file.path;
        let center = self
            .file
            .tensors
            .get(KEY_CENTER)
            .ok_or_else(|| TrainError::run(path, format!("no `{KEY_CENTER}` tensor")))?;
        loss.set_center(&from_raw(center, path, KEY_CENTER)?)?;
        Ok(())
    }
}
