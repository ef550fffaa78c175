//! Safetensors files that describe themselves: tensors plus dino-rs metadata.
//!
//! Every file dino-rs writes goes through [`write_atomic`], so a crash or a full disk never
//! leaves a half-written checkpoint where a good one stood.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use safetensors::tensor::Dtype;
use safetensors::tensor::TensorView;

use crate::config::{EvalTransform, HeadConfig, VitConfig};
use crate::error::CoreError;

/// Metadata keys. `format` identifies dino-rs files; the configs are JSON.
pub const META_FORMAT: &str = "dino_rs.format";
pub const META_KIND: &str = "dino_rs.kind";
pub const META_VIT: &str = "dino_rs.vit";
pub const META_HEAD: &str = "dino_rs.head";
pub const META_EVAL: &str = "dino_rs.eval";
pub const META_VERSION: &str = "dino_rs.version";
pub const FORMAT_V1: &str = "dino-rs/1";
/// XXH3-128 of every tensor (see [`content_digest`]): safetensors has no checksum, and a
/// flipped weight byte must not export, resume or embed silently.
pub const META_CONTENT_DIGEST: &str = "dino_rs.content_xxh3";

/// What a file holds, which decides the key prefixes inside it.
pub const KIND_BACKBONE: &str = "backbone";
pub const KIND_CHECKPOINT: &str = "training_checkpoint";

/// Key prefixes inside a training checkpoint (`teacher.backbone.cls_token`, ...).
pub const PREFIX_TEACHER_BACKBONE: &str = "teacher.backbone.";
pub const PREFIX_TEACHER_HEAD: &str = "teacher.head.";
pub const PREFIX_STUDENT_BACKBONE: &str = "student.backbone.";
pub const PREFIX_STUDENT_HEAD: &str = "student.head.";

/// An owned tensor in one of the dtypes dino-rs writes.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Little-endian bytes, as stored.
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            dtype: Dtype::F32,
            shape,
            data,
        }
    }

    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            dtype: Dtype::I64,
            shape,
            data,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Values widened to f32 (f16/bf16/f32/f64 are accepted).
    pub fn to_f32(&self, path: &Path, key: &str) -> Result<Vec<f32>, CoreError> {
        let chunks = |n: usize| self.data.chunks_exact(n);
        Ok(match self.dtype {
            Dtype::F32 => chunks(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F64 => chunks(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            Dtype::F16 => chunks(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Dtype::BF16 => chunks(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            other => {
                return Err(CoreError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    key: key.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        })
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: renormalise.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// A whole safetensors file in memory, with its metadata.
#[derive(Debug)]
pub struct StFile {
    pub path: PathBuf,
    pub metadata: HashMap<String, String>,
    pub tensors: BTreeMap<String, RawTensor>,
}

impl StFile {
    pub fn read(path: &Path) -> Result<Self, CoreError> {
        let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
        let not_st = |why: String| CoreError::NotSafetensors {
            path: path.to_path_buf(),
            why,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| not_st(format!("{e:?}")))?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| not_st(format!("{e:?}")))?;
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(k, v)| {
                let t = RawTensor {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                };
                (k, t)
            })
            .collect();
        let file = Self {
            path: path.to_path_buf(),
            metadata: meta.metadata().clone().unwrap_or_default(),
            tensors,
        };
        file.verify()?;
        Ok(file)
    }

    /// Recomputes the content digest a dino-rs file records (files without one, such as
    /// foreign safetensors, have nothing to check).
    fn verify(&self) -> Result<(), CoreError> {
        let Some(recorded) = self.metadata.get(META_CONTENT_DIGEST) else {
            return Ok(());
        };
        let actual = content_digest(&self.metadata, &self.tensors);
        if *recorded != actual {
            return Err(CoreError::Format {
                path: self.path.clone(),
                why: format!(
                    "the file is damaged: its content digests to {actual}, it was written with \
                     {recorded}"
                ),
            });
        }
        Ok(())
    }

    /// A required metadata string.
    pub fn meta(&self, key: &str) -> Result<&str, CoreError> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| CoreError::MissingMetadata {
                path: self.path.clone(),
                key: key.to_string(),
            })
    }

    /// A required metadata entry parsed from JSON.
    pub fn meta_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T, CoreError> {
        serde_json::from_str(self.meta(key)?).map_err(|e| CoreError::BadMetadata {
            path: self.path.clone(),
            key: key.to_string(),
            why: e.to_string(),
        })
    }

    /// Checks that this is a dino-rs file of a known format version.
    pub fn check_format(&self) -> Result<(), CoreError> {
        let f = self.meta(META_FORMAT)?;
        if f != FORMAT_V1 {
            return Err(CoreError::BadMetadata {
                path: self.path.clone(),
                key: META_FORMAT.into(),
                why: format!("format `{f}` is not `{FORMAT_V1}` (written by a newer dino-rs?)"),
            });
        }
        Ok(())
    }

    pub fn vit_config(&self) -> Result<VitConfig, CoreError> {
        let cfg: VitConfig = self.meta_json(META_VIT)?;
        cfg.validate().map_err(|e| CoreError::BadMetadata {
            path: self.path.clone(),
            key: META_VIT.into(),
            why: e.to_string(),
        })?;
        Ok(cfg)
    }

    pub fn head_config(&self) -> Result<Option<HeadConfig>, CoreError> {
        if self.metadata.contains_key(META_HEAD) {
            self.meta_json(META_HEAD).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn eval_transform(&self) -> Result<Option<EvalTransform>, CoreError> {
        if self.metadata.contains_key(META_EVAL) {
            self.meta_json(META_EVAL).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The tensors under `prefix` (e.g. `teacher.backbone.`), with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> BTreeMap<String, RawTensor> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
            .collect()
    }
}

/// The metadata every dino-rs backbone file carries.
pub fn backbone_metadata(
    vit: &VitConfig,
    head: Option<&HeadConfig>,
    eval: Option<&EvalTransform>,
    kind: &str,
) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert(META_FORMAT.into(), FORMAT_V1.into());
    m.insert(META_KIND.into(), kind.into());
    m.insert(META_VERSION.into(), env!("CARGO_PKG_VERSION").into());
    m.insert(META_VIT.into(), json(vit));
    if let Some(h) = head {
        m.insert(META_HEAD.into(), json(h));
    }
    if let Some(e) = eval {
        m.insert(META_EVAL.into(), json(e));
    }
    m
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("configs serialise to JSON")
}

/// XXH3-128 over the metadata (but the digest itself) in key order, each key and value
/// followed by a zero byte, then the tensors in name order: each name, a zero byte, its
/// dtype, its shape and its data length as u64 little-endian, its data.
pub fn content_digest(
    metadata: &HashMap<String, String>,
    tensors: &BTreeMap<String, RawTensor>,
) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let meta: BTreeMap<_, _> = metadata
        .iter()
        .filter(|(k, _)| k.as_str() != META_CONTENT_DIGEST)
        .collect();
    for (k, v) in meta {
        for part in [k, v] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
    }
    for (name, t) in tensors {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(format!("{:?}", t.dtype).as_bytes());
        for d in &t.shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(&(t.data.len() as u64).to_le_bytes());
        h.update(&t.data);
    }
    format!("{:032x}", h.digest128())
}

/// Writes `tensors` with `metadata` to `path` atomically: a temporary file in the same
/// folder, fsync, then rename over the destination. The content digest is (re)computed
/// here, whatever `metadata` holds.
pub fn write_atomic(
    path: &Path,
    tensors: &BTreeMap<String, RawTensor>,
    mut metadata: HashMap<String, String>,
) -> Result<(), CoreError> {
    let digest = content_digest(&metadata, tensors);
    metadata.insert(META_CONTENT_DIGEST.into(), digest);
    let views = tensors
        .iter()
        .map(|(k, t)| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (k.clone(), v))
                .map_err(|e| CoreError::Format {
                    path: path.to_path_buf(),
                    why: format!("tensor `{k}`: {e:?}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| CoreError::Format {
        path: path.to_path_buf(),
        why: format!("{e:?}"),
    })?;
    write_bytes_atomic(path, &bytes)
}

/// Refuses to write `output` when it is the file `input` (the same path, a link to it, or
/// another name of it): the atomic rename would replace the input the user still has.
pub fn ensure_distinct(input: &Path, output: &Path) -> Result<(), CoreError> {
    let same = match (std::fs::metadata(input), std::fs::metadata(output)) {
        (Ok(a), Ok(b)) => same_file(&a, &b),
        _ => false,
    };
    if same {
        return Err(CoreError::Format {
            path: output.to_path_buf(),
            why: format!(
                "is the input file {}; writing it would replace the input: choose another output",
                input.display()
            ),
        });
    }
    Ok(())
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    false
}

/// Atomic replacement of `path` by `bytes` (temp file, fsync, rename, fsync of the folder
/// so that the rename itself survives a power cut).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), CoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| CoreError::Format {
            path: path.to_path_buf(),
            why: "destination has no file name".into(),
        })?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(CoreError::io(path, e));
    }
    Ok(())
}

/// Makes a rename in `dir` durable. Folders cannot be opened for syncing on every
/// platform; there the rename is as durable as the OS makes it.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn round_trip_keeps_tensors_and_metadata() {
        let dir = std::env::temp_dir().join(format!("dino-core-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.safetensors");
        let vit = VitConfig::preset("vit_tiny", 16).unwrap();
        let mut t = BTreeMap::new();
        t.insert(
            "a".to_string(),
            RawTensor::from_f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]),
        );
        write_atomic(
            &path,
            &t,
            backbone_metadata(&vit, None, None, KIND_BACKBONE),
        )
        .unwrap();
        let f = StFile::read(&path).unwrap();
        f.check_format().unwrap();
        assert_eq!(f.vit_config().unwrap(), vit);
        assert_eq!(
            f.tensors["a"].to_f32(&path, "a").unwrap(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
        assert!(f.head_config().unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_output_that_is_the_input_is_refused() {
        let dir = std::env::temp_dir().join(format!("dino-distinct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.bin");
        std::fs::write(&a, b"x").unwrap();
        let e = ensure_distinct(&a, &dir.join("./a.bin"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("replace the input"), "{e}");
        #[cfg(unix)]
        {
            let link = dir.join("link.bin");
            std::os::unix::fs::symlink(&a, &link).unwrap();
            assert!(ensure_distinct(&a, &link).is_err());
        }
        assert!(ensure_distinct(&a, &dir.join("b.bin")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flipped_tensor_bytes_are_found() {
        let dir = std::env::temp_dir().join(format!("dino-st-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let mut t = BTreeMap::new();
        t.insert(
            "a".to_string(),
            RawTensor::from_f32(vec![4], &[1.0, 2.0, 3.0, 4.0]),
        );
        let vit = VitConfig::preset("vit_tiny", 16).unwrap();
        write_atomic(
            &path,
            &t,
            backbone_metadata(&vit, None, None, KIND_BACKBONE),
        )
        .unwrap();
        assert_eq!(StFile::read(&path).unwrap().tensors, t);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 0x01; // inside the data of `a`
        std::fs::write(&path, &bytes).unwrap();
        let e = StFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("damaged") && e.contains("w.safetensors"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("dino-core-bad-{}", std::process::id()));
        std::fs::write(&path, b"not a tensor file").unwrap();
        let err = StFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
        std::fs::remove_file(path).unwrap();
    }
}
