//! Finding the teacher backbone in whatever the user passed as `--checkpoint`.
//!
//! dino-rs safetensors files say what they are (`dino_rs.kind`): a backbone file holds
//! unprefixed official keys, a training checkpoint holds `teacher.backbone.*` among
//! others. PyTorch `.pth` files are imported on the fly. Anything else is refused with a
//! message that says what the file looks like and what to do.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use dino_core::st::{self, RawTensor, StFile};
use dino_core::weights::{backbone_shapes, check_shapes};
use dino_core::{CoreError, EvalTransform, VitConfig};

use crate::error::ExportError;
use crate::import::{ImportOptions, read_foreign};
use crate::pth;

pub struct Backbone {
    pub path: PathBuf,
    pub vit: VitConfig,
    pub eval: Option<EvalTransform>,
    /// Official key names, no prefix, checked against `vit`.
    pub tensors: BTreeMap<String, RawTensor>,
    /// How the file was read, for the progress line.
    pub source: String,
}

/// The first bytes of a file, to tell formats apart.
pub fn sniff(path: &Path) -> Result<Vec<u8>, ExportError> {
    let mut f = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    let mut head = Vec::with_capacity(16);
    f.by_ref()
        .take(16)
        .read_to_end(&mut head)
        .map_err(|e| CoreError::io(path, e))?;
    Ok(head)
}

/// Safetensors: a little-endian u64 header length, then a JSON object.
pub fn looks_like_safetensors(head: &[u8]) -> bool {
    head.len() > 8 && head[8] == b'{'
}

pub fn unknown_format(path: &Path) -> ExportError {
    ExportError::UnknownFormat {
        path: path.to_path_buf(),
        why: "neither a safetensors file nor a PyTorch .pth archive".into(),
    }
}

pub fn load_backbone(path: &Path) -> Result<Backbone, ExportError> {
    let head = sniff(path)?;
    if pth::is_zip(&head) || pth::is_legacy_torch(&head) {
        let imp = read_foreign(path, &ImportOptions::default())?;
        let source = format!(
            "PyTorch file{}, imported as {}/{}",
            imp.entry
                .as_deref()
                .map(|e| format!(" (entry `{e}`)"))
                .unwrap_or_default(),
            imp.vit.arch,
            imp.vit.patch_size
        );
        return Ok(Backbone {
            path: imp.path,
            vit: imp.vit,
            eval: None,
            tensors: imp.tensors,
            source,
        });
    }
    if !looks_like_safetensors(&head) {
        return Err(unknown_format(path));
    }
    let f = StFile::read(path)?;
    if !f.metadata.contains_key(st::META_FORMAT) {
        return Err(ExportError::ForeignSafetensors {
            path: path.to_path_buf(),
            why: format!("no `{}`", st::META_FORMAT),
        });
    }
    f.check_format()?;
    let vit = f.vit_config()?;
    let eval = f.eval_transform()?;
    let kind = f.meta(st::META_KIND)?;
    let tensors = match kind {
        st::KIND_BACKBONE => f.tensors.clone(),
        st::KIND_CHECKPOINT => f.with_prefix(st::PREFIX_TEACHER_BACKBONE),
        other => {
            return Err(ExportError::Weights {
                path: path.to_path_buf(),
                why: format!(
                    "`{}` is `{other}`, expected `{}` or `{}`",
                    st::META_KIND,
                    st::KIND_BACKBONE,
                    st::KIND_CHECKPOINT
                ),
            });
        }
    };
    let found = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();
    check_shapes(path, &backbone_shapes(&vit), &found)?;
    let source = match kind {
        st::KIND_CHECKPOINT => "training checkpoint, teacher backbone".to_string(),
        _ => "backbone".to_string(),
    };
    Ok(Backbone {
        path: path.to_path_buf(),
        vit,
        eval,
        tensors,
        source,
    })
}
