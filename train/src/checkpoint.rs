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

use anyhow::{Context, Result, bail, ensure};
use dino_core::st::{self, RawTensor, StFile};
use dino_models::io::{from_raw, named_raw, to_raw};
use tch::Tensor;

use crate::config::TrainConfig;
use crate::loss::DinoLoss;
use crate::model::DinoNet;
use crate::optim::Optimizer;

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

/// What a run has at the end of an epoch.
pub struct TrainState<'a> {
    pub config: &'a TrainConfig,
    pub student: &'a DinoNet,
    pub teacher: &'a DinoNet,
    pub optimizer: &'a Optimizer,
    pub loss: &'a DinoLoss,
    /// Epochs completed.
    pub epoch: usize,
    /// Optimisation steps completed.
    pub step: usize,
}

pub fn save(path: &Path, s: &TrainState) -> Result<()> {
    let mut tensors: BTreeMap<String, RawTensor> = named_raw(&s.student.vs, "student.");
    tensors.extend(named_raw(&s.teacher.vs, "teacher."));
    for (k, t) in s.optimizer.state_tensors() {
        tensors.insert(format!("{PREFIX_OPTIM}{k}"), to_raw(&t));
    }
    tensors.insert(KEY_CENTER.into(), to_raw(s.loss.center()));
    let vit = s.config.vit()?;
    let mut meta = st::backbone_metadata(
        &vit,
        Some(&s.config.head()),
        Some(&s.config.eval_transform()),
        st::KIND_CHECKPOINT,
    );
    meta.insert(META_TRAIN.into(), s.config.to_toml());
    meta.insert(META_EPOCH.into(), s.epoch.to_string());
    meta.insert(META_STEP.into(), s.step.to_string());
    meta.insert(META_RNG.into(), RNG_NOTE.into());
    st::write_atomic(path, &tensors, meta)
        .with_context(|| format!("cannot write checkpoint {}", path.display()))
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
        let kind = file.meta(st::META_KIND)?;
        if kind != st::KIND_CHECKPOINT {
            bail!(
                "{}: holds a `{kind}`, not a training checkpoint",
                path.display()
            );
        }
        let config: TrainConfig = toml::from_str(file.meta(META_TRAIN)?)
            .with_context(|| format!("{}: bad `{META_TRAIN}` metadata", path.display()))?;
        let num = |key: &str| -> Result<usize> {
            file.meta(key)?
                .parse()
                .with_context(|| format!("{}: bad `{key}` metadata", path.display()))
        };
        let (epoch, step) = (num(META_EPOCH)?, num(META_STEP)?);
        Ok(Self {
            file,
            config,
            epoch,
            step,
        })
    }

    /// Copies every saved tensor into the run's student, teacher, optimizer and loss.
    pub fn restore(
        &self,
        student: &DinoNet,
        teacher: &DinoNet,
        optimizer: &mut Optimizer,
        loss: &mut DinoLoss,
    ) -> Result<()> {
        let path = &self.file.path;
        for (prefix, net) in [("student.", student), ("teacher.", teacher)] {
            let saved = self.file.with_prefix(prefix);
            let expected: Vec<(String, Vec<usize>)> = net
                .vs
                .variables()
                .iter()
                .map(|(k, t)| (k.clone(), t.size().iter().map(|&d| d as usize).collect()))
                .collect();
            dino_models::io::load_checked(&net.vs, &saved, &expected, path)
                .with_context(|| format!("restoring the {}", prefix.trim_end_matches('.')))?;
        }
        let state: Vec<(String, Tensor)> = self
            .file
            .with_prefix(PREFIX_OPTIM)
            .iter()
            .map(|(k, v)| Ok((k.clone(), from_raw(v, path, k)?)))
            .collect::<Result<_>>()?;
        ensure!(!state.is_empty(), "{}: no optimizer state", path.display());
        optimizer
            .load_state(&state)
            .with_context(|| format!("{}: optimizer state", path.display()))?;
        let center = self
            .file
            .tensors
            .get(KEY_CENTER)
            .with_context(|| format!("{}: no `{KEY_CENTER}` tensor", path.display()))?;
        loss.set_center(&from_raw(center, path, KEY_CENTER)?)?;
        Ok(())
    }
}
