//! A whole DINO training state, for `dino-train train --init_from`: student and teacher
//! with their heads, and the loss centre, from an official `checkpoint.pth` (the dict
//! `main_dino.py` saves: `student`/`teacher` state dicts of the `MultiCropWrapper`, the
//! student's under DDP's `module.`, and `dino_loss` holding `center`) or from a dino-rs
//! `checkpoint.safetensors`. The optimizer state and the epoch are not read: a run started
//! this way is a new run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dino_core::st::{self, RawTensor, StFile};
use dino_core::{HeadConfig, VitConfig};

use crate::error::ImportError;
use crate::foreign::as_f32;
use crate::format::{Format, unknown_format};
use crate::pth::PthFile;

/// The networks and the centre of a training checkpoint.
#[derive(Debug)]
pub struct TrainingState {
    pub path: PathBuf,
    /// The student as a `MultiCropWrapper` state dict: `backbone.*` and `head.*` keys.
    pub student: BTreeMap<String, RawTensor>,
    /// The teacher, keyed as the student.
    pub teacher: BTreeMap<String, RawTensor>,
    /// The loss centre, `[1, out_dim]`.
    pub center: RawTensor,
    /// The architecture a dino-rs checkpoint records (official files record none).
    pub vit: Option<VitConfig>,
    pub head: Option<HeadConfig>,
}

/// Reads the training state of `path` (official `.pth` or dino-rs checkpoint).
pub fn read_training_state(path: &Path) -> Result<TrainingState, ImportError> {
    match Format::detect(path)? {
        Format::Pth => read_pth(path),
        Format::LegacyPth => Err(ImportError::pth(
            path,
            "legacy (pre-1.6) torch.save format; re-save it with `torch.save(torch.load(f), f)` in any recent PyTorch",
        )),
        Format::Safetensors => read_dino_rs(path),
        Format::Unknown => Err(unknown_format(path)),
    }
}

fn read_pth(path: &Path) -> Result<TrainingState, ImportError> {
    let mut f = PthFile::open(path)?;
    let mut net = |key: &str| -> Result<BTreeMap<String, RawTensor>, ImportError> {
        f.entry_tensors(key)?
            .into_iter()
            .map(|(name, t)| {
                // DDP's `module.` (the student always, the teacher with BatchNorm).
                let mut k = name.as_str();
                while let Some(rest) = k.strip_prefix("module.") {
                    k = rest;
                }
                Ok((k.to_string(), as_f32(path, &format!("{key}.{name}"), t)?))
            })
            .collect()
    };
    let student = net("student")?;
    let teacher = net("teacher")?;
    let center = net("dino_loss")?
        .remove("center")
        .ok_or_else(|| ImportError::weights(path, "entry `dino_loss` has no `center` tensor"))?;
    Ok(TrainingState {
        path: path.to_path_buf(),
        student,
        teacher,
        center,
        vit: None,
        head: None,
    })
}

fn read_dino_rs(path: &Path) -> Result<TrainingState, ImportError> {
    let f = StFile::read(path)?;
    f.check_format()?;
    let kind = f.meta(st::META_KIND)?;
    if kind != st::KIND_CHECKPOINT {
        return Err(ImportError::weights(
            path,
            format!(
                "holds a `{kind}`, not a training checkpoint (a backbone starts training with --pretrained_weights)"
            ),
        ));
    }
    let center = f
        .tensors
        .get("center")
        .cloned()
        .ok_or_else(|| ImportError::weights(path, "no `center` tensor"))?;
    Ok(TrainingState {
        path: path.to_path_buf(),
        student: f.with_prefix("student."),
        teacher: f.with_prefix("teacher."),
        center,
        vit: Some(f.vit_config()?),
        head: f.head_config()?,
    })
}
