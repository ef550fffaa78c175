//! Finding the teacher backbone in whatever the user passed as `--checkpoint`.
//!
//! The same reader as every `--pretrained_weights` (`dino_import::read_pretrained`): a
//! dino-rs backbone or training checkpoint (its teacher), or official weights (`.pth`, or
//! safetensors with the official keys) imported on the fly. Anything else is refused with
//! a message that says what the file looks like and what to do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dino_core::st::RawTensor;
use dino_core::{EvalTransform, VitConfig};

use crate::error::ExportError;

pub struct Backbone {
    pub path: PathBuf,
    pub vit: VitConfig,
    pub eval: Option<EvalTransform>,
    /// Official key names, no prefix, checked against `vit`.
    pub tensors: BTreeMap<String, RawTensor>,
}

pub fn load_backbone(path: &Path) -> Result<Backbone, ExportError> {
    let p = dino_import::read_pretrained(path, None)?;
    Ok(Backbone {
        path: p.path,
        vit: p.vit,
        eval: p.eval,
        tensors: p.tensors,
    })
}
