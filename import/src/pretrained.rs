//! `--pretrained_weights FILE --checkpoint_key KEY`, as the official `eval_knn.py`,
//! `eval_linear.py` and `utils.load_pretrained_weights` take them: one reader for every
//! file a user may hold, so that all subcommands accept the same ones.
//!
//! - a dino-rs backbone file (`teacher.safetensors`): the key must be absent or `teacher`;
//! - a dino-rs training checkpoint: the `teacher` (default) or `student` backbone;
//! - an official `.pth` (a backbone state dict, or a training `checkpoint.pth` whose
//!   `teacher`/`student` entry is taken) or a safetensors file with the official keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dino_core::st::{self, RawTensor, StFile};
use dino_core::weights::{backbone_shapes, check_shapes};
use dino_core::{EvalTransform, VitConfig};

use crate::error::ImportError;
use crate::foreign::{ImportOptions, read_foreign};
use crate::format::{Format, unknown_format};

/// The official default of `--checkpoint_key`.
pub const DEFAULT_CHECKPOINT_KEY: &str = "teacher";

/// A backbone read from any supported weight file.
#[derive(Debug)]
pub struct Pretrained {
    pub path: PathBuf,
    pub vit: VitConfig,
    /// Official key names (`cls_token`, `blocks.0.attn.qkv.weight`, ...).
    pub tensors: BTreeMap<String, RawTensor>,
    /// The eval transform a dino-rs file records; official files have none.
    pub eval: Option<EvalTransform>,
    /// Where in the file the weights were (`teacher`, `student`), if not the whole file.
    pub entry: Option<String>,
}

/// Reads the backbone of `path`; `key` picks the network of a training checkpoint
/// (`teacher` when absent, as the official scripts default).
pub fn read_pretrained(path: &Path, key: Option<&str>) -> Result<Pretrained, ImportError> {
    read_pretrained_with(path, key, None)
}

/// [`read_pretrained`], an official file of a width no preset has taking `num_heads`.
pub fn read_pretrained_with(
    path: &Path,
    key: Option<&str>,
    num_heads: Option<usize>,
) -> Result<Pretrained, ImportError> {
    let format = Format::detect(path)?;
    if format == Format::Safetensors {
        // Read (and its digest checked) once; a dino-rs file says so in its header.
        let f = StFile::read(path)?;
        if f.metadata.contains_key(st::META_FORMAT) {
            return read_dino_rs(f, key);
        }
    }
    match format {
        Format::Safetensors | Format::Pth | Format::LegacyPth => {
            let opts = ImportOptions {
                key: key.map(str::to_string),
                num_heads,
                ..ImportOptions::default()
            };
            let f = read_foreign(path, &opts)?;
            Ok(Pretrained {
                path: f.path,
                vit: f.vit,
                tensors: f.tensors,
                eval: None,
                entry: f.entry,
            })
        }
        Format::Unknown => Err(unknown_format(path)),
    }
}

fn read_dino_rs(f: StFile, key: Option<&str>) -> Result<Pretrained, ImportError> {
    let path = f.path.as_path();
    f.check_format()?;
    let kind = f.meta(st::META_KIND)?;
    let bad_key = |k: &str, have: &str| ImportError::NoEntry {
        path: path.to_path_buf(),
        key: k.to_string(),
        found: vec![have.to_string()],
    };
    let (entry, tensors) = match (kind, key) {
        // A backbone imported `--with-head` keeps the head beside it: not backbone weights.
        (st::KIND_BACKBONE, None | Some(DEFAULT_CHECKPOINT_KEY)) => {
            (None, crate::head::split_head(f.tensors.clone()).1)
        }
        (st::KIND_BACKBONE, Some(k)) => return Err(bad_key(k, "a teacher backbone only")),
        (st::KIND_CHECKPOINT, None | Some("teacher")) => {
            (Some("teacher"), f.with_prefix(st::PREFIX_TEACHER_BACKBONE))
        }
        (st::KIND_CHECKPOINT, Some("student")) => {
            (Some("student"), f.with_prefix(st::PREFIX_STUDENT_BACKBONE))
        }
        (st::KIND_CHECKPOINT, Some(k)) => return Err(bad_key(k, "teacher, student")),
        (other, _) => {
            return Err(ImportError::weights(
                path,
                format!("a `{other}` file holds no backbone"),
            ));
        }
    };
    let vit = f.vit_config()?;
    let found = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();
    check_shapes(path, &backbone_shapes(&vit), &found)?;
    Ok(Pretrained {
        path: path.to_path_buf(),
        vit,
        tensors,
        eval: f.eval_transform()?,
        entry: entry.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino_core::HeadConfig;
    use dino_core::weights::head_shapes;

    fn zeros(shapes: Vec<(String, Vec<usize>)>, prefix: &str) -> BTreeMap<String, RawTensor> {
        shapes
            .into_iter()
            .map(|(k, s)| {
                let n = s.iter().product();
                (
                    format!("{prefix}{k}"),
                    RawTensor::from_f32(s, &vec![0.0; n]),
                )
            })
            .collect()
    }

    #[test]
    fn a_backbone_file_with_a_head_reads_as_its_backbone() {
        let vit = VitConfig::new("custom", 4, 8, 1, 2);
        let head = HeadConfig::new(8, 16);
        let mut tensors = zeros(backbone_shapes(&vit), "");
        tensors.extend(zeros(head_shapes(&head), "head."));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("with-head.safetensors");
        let meta = st::backbone_metadata(&vit, Some(&head), None, st::KIND_BACKBONE);
        st::write_atomic(&path, &tensors, meta).unwrap();
        let p = read_pretrained(&path, None).unwrap();
        assert_eq!(p.tensors.len(), backbone_shapes(&vit).len());
        assert!(p.tensors.keys().all(|k| !k.starts_with("head.")));
    }
}
