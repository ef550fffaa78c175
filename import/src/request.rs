//! The `import` subcommand of `dino-export` and `dino-train` as one value: what to read,
//! how, and where to write, plus the summary line both print. With the `clap` feature
//! [`ImportRequest`] is the subcommand's arguments, so the two binaries cannot drift apart.

use std::fmt;
use std::path::PathBuf;

use crate::error::ImportFailed;
use crate::foreign::{ImportOptions, Imported, import};

/// One conversion of a foreign file to a dino-rs backbone file (with `--with-head`, the
/// DINO head too).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ImportRequest {
    /// A backbone state dict (`dino_deitsmall16_pretrain.pth`) or a training
    /// `checkpoint.pth` (its `teacher` entry is used unless --key says otherwise).
    pub file: PathBuf,
    #[cfg_attr(feature = "clap", command(flatten))]
    pub options: ImportOptions,
    /// The dino-rs safetensors file to write.
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE.safetensors"))]
    pub to: PathBuf,
}

impl ImportRequest {
    /// Imports `file` into `to` (written atomically).
    pub fn run(&self) -> Result<ImportReport, ImportFailed> {
        let imported =
            import(&self.file, &self.to, &self.options).map_err(|source| ImportFailed {
                file: self.file.clone(),
                to: self.to.clone(),
                source: Box::new(source),
            })?;
        Ok(ImportReport {
            to: self.to.clone(),
            imported,
        })
    }
}

/// A finished import; `Display` is the one-line summary the binaries print.
pub struct ImportReport {
    pub to: PathBuf,
    pub imported: Imported,
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (imp, v) = (&self.imported, &self.imported.vit);
        write!(
            f,
            "wrote {}: {}/{} (embed_dim {}, depth {}, heads {}, native {}px), {} tensors",
            self.to.display(),
            v.arch,
            v.patch_size,
            v.embed_dim,
            v.depth,
            v.num_heads,
            v.img_size,
            imp.tensors.len(),
        )?;
        if let Some(e) = &imp.entry {
            write!(f, " from entry `{e}`")?;
        }
        if let Some(h) = &imp.head {
            write!(
                f,
                ", with the DINO head (out_dim {}, {} layers{})",
                h.out_dim,
                h.nlayers,
                if h.use_bn { ", BatchNorm" } else { "" }
            )?;
        }
        if !imp.ignored.is_empty() {
            write!(f, ", {} head tensors left out", imp.ignored.len())?;
        }
        Ok(())
    }
}
