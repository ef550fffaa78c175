//! The output folder of a run: where each file goes, the refusal to overwrite another run,
//! and the files written once (config, teacher backbone, charts).

use std::path::{Path, PathBuf};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::model::DinoNet;

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const TEACHER: &str = "teacher.safetensors";
pub const CONFIG: &str = "config.toml";

/// A run's `output_dir`.
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates the folder. A folder that already holds a checkpoint is another run's, and
    /// is only continued with `resume`.
    pub fn prepare(path: &Path, resume: bool) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| TrainError::io(path, e))?;
        let dir = Self {
            path: path.to_path_buf(),
        };
        if dir.checkpoint().exists() && !resume {
            return Err(TrainError::run(
                dir.checkpoint(),
                "already exists: pass --resume to continue that run, or choose another output_dir",
            ));
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.path.join(CHECKPOINT)
    }

    pub fn numbered_checkpoint(&self, epoch: usize) -> PathBuf {
        self.path.join(format!("checkpoint{epoch:04}.safetensors"))
    }

    pub fn teacher(&self) -> PathBuf {
        self.path.join(TEACHER)
    }

    /// The resolved configuration, next to the checkpoints.
    pub fn write_config(&self, cfg: &TrainConfig) -> Result<()> {
        let path = self.path.join(CONFIG);
        std::fs::write(&path, cfg.to_toml()).map_err(|e| TrainError::io(path, e))
    }

    /// Charts of the finished run; a failure is a warning, never an error that loses the run.
    pub fn plot_curves(&self, quiet: bool) {
        match crate::plot::plot_run(&self.path) {
            Ok(r) => {
                if !quiet {
                    for w in &r.warnings {
                        eprintln!("warning: {w}");
                    }
                    let plots = self.path.join(crate::plot::PLOT_DIR);
                    eprintln!("training curves written to {}", plots.display());
                }
            }
            Err(e) => eprintln!("warning: cannot plot the training curves: {e}"),
        }
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
    dino_core::st::write_atomic(path, &tensors, meta)?;
    Ok(())
}
