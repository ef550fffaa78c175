//! The `import` subcommand, shared by `dino-export import` and `dino-train import`: the
//! same arguments, the same call to [`crate::import::import`], the same summary line.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::import::{ImportOptions, import};

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A backbone state dict (`dino_deitsmall16_pretrain.pth`) or a training
    /// `checkpoint.pth` (its `teacher` entry is used unless --key says otherwise).
    pub file: PathBuf,
    /// Architecture preset (vit_tiny, vit_small, vit_base); default: from the width.
    #[arg(long)]
    pub arch: Option<String>,
    /// Patch size, checked against the weights.
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// The checkpoint entry holding the weights (e.g. `teacher`, `student`).
    #[arg(long)]
    pub key: Option<String>,
    /// The dino-rs safetensors file to write.
    #[arg(long, value_name = "FILE.safetensors")]
    pub to: PathBuf,
}

/// Imports `a.file` into `a.to`; returns the one-line summary to print.
pub fn run(a: &ImportArgs) -> Result<String> {
    let opts = ImportOptions {
        arch: a.arch.clone(),
        patch_size: a.patch_size,
        key: a.key.clone(),
    };
    let imp = import(&a.file, &a.to, &opts)
        .with_context(|| format!("importing {} to {}", a.file.display(), a.to.display()))?;
    let v = &imp.vit;
    Ok(format!(
        "wrote {}: {}/{} (embed_dim {}, depth {}, heads {}, native {}px), {} tensors{}{}",
        a.to.display(),
        v.arch,
        v.patch_size,
        v.embed_dim,
        v.depth,
        v.num_heads,
        v.img_size,
        imp.tensors.len(),
        imp.entry
            .map(|e| format!(" from entry `{e}`"))
            .unwrap_or_default(),
        if imp.ignored.is_empty() {
            String::new()
        } else {
            format!(", {} head tensors left out", imp.ignored.len())
        }
    ))
}
