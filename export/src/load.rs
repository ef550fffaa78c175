//! Finding the teacher backbone in whatever the user passed as `--checkpoint`.
//!
//! dino-rs safetensors files say what they are (`dino_rs.kind`): a backbone file holds
//! unprefixed official keys, a training checkpoint holds `teacher.backbone.*` among
//! others. PyTorch `.pth` files are imported on the fly by `dino-import`. Anything else is
//! refused with a message that says what the file looks like and what to do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dino_core::st::{self, RawTensor, StFile};
use dino_core::weights::{backbone_shapes, check_shapes};
use dino_core::{EvalTransform, VitConfig};
use dino_import::format::unknown_format;
use dino_import::{Format, ImportOptions, read_foreign};

use crate::error::ExportError;

pub struct Backbone {
    pub path: PathBuf,
    pub vit: VitConfig,
    pub eval: Option<EvalTransform>,
    /// Official key names, no prefix, checked against `vit`.
    pub tensors: BTreeMap<String, RawTensor>,
}

pub fn load_backbone(path: &Path) -> Result<Backbone, ExportError> {
    let format = Format::detect(path)?;
    if matches!(format, Format::Pth | Format::LegacyPth) {
        let imp = read_foreign(path, &ImportOptions::default())?;
        return Ok(Backbone {
            path: imp.path,
            vit: imp.vit,
            eval: None,
            tensors: imp.tensors,
        });
    }
    if format != Format::Safetensors {
        return Err(unknown_format(path).into());
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
        // A file imported `--with-head` holds the head beside the backbone.
        st::KIND_BACKBONE => dino_import::head::split_head(f.tensors.clone()).1,
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
    Ok(Backbone {
        path: path.to_path_buf(),
        vit,
        eval,
        tensors,
    })
}
