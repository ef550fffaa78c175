//! Reading PyTorch `.pth` files (the zip format `torch.save` has written since 1.6)
//! without Python or libtorch: `<archive>/data.pkl` is run by a small pickle VM and each
//! tensor's bytes are read from `<archive>/data/<key>`. Nothing in the file is executed,
//! so an untrusted checkpoint is as safe to read as a safetensors file.

pub mod opcodes;
pub mod pickle;
pub mod value;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use dino_core::st::RawTensor;
use safetensors::tensor::Dtype;

use crate::error::ImportError;
use pickle::{TensorRef, Value};

/// An opened `.pth` archive: the unpickled object and lazy access to tensor bytes.
pub struct PthFile {
    pub path: PathBuf,
    pub root: Value,
    archive: zip::ZipArchive<std::fs::File>,
    prefix: String,
    storages: HashMap<String, Vec<u8>>,
}

impl PthFile {
    pub fn open(path: &Path) -> Result<Self, ImportError> {
        let err = |why: String| ImportError::pth(path, why);
        let entry_err = |entry: &str, why: String| ImportError::Entry {
            path: path.to_path_buf(),
            entry: entry.to_string(),
            why,
        };
        let file = std::fs::File::open(path).map_err(|e| dino_core::CoreError::io(path, e))?;
        let mut archive =
            zip::ZipArchive::new(file).map_err(|e| err(format!("not a zip archive: {e}")))?;
        let pkl = archive
            .file_names()
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
            .map(str::to_string)
            .ok_or_else(|| err("no data.pkl inside: not a torch.save file".into()))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Ok(mut f) = archive.by_name(&format!("{prefix}byteorder")) {
            let mut s = String::new();
            f.read_to_string(&mut s).map_err(|e| err(e.to_string()))?;
            if s.trim() != "little" {
                return Err(err(format!("byte order `{}` is not supported", s.trim())));
            }
        }
        let data = read_entry(&mut archive, &pkl).map_err(|e| entry_err(&pkl, e))?;
        let root = pickle::load(&data).map_err(|e| entry_err(&pkl, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            root,
            archive,
            prefix,
            storages: HashMap::new(),
        })
    }

    /// Copies a tensor's elements out of its storage into a contiguous little-endian buffer.
    pub fn tensor(&mut self, name: &str, t: &TensorRef) -> Result<RawTensor, ImportError> {
        let err = |why: String| ImportError::Tensor {
            path: self.path.clone(),
            key: name.to_string(),
            why,
        };
        let (dtype, size) = storage_dtype(&t.storage.kind)
            .ok_or_else(|| err(format!("unsupported storage type {}", t.storage.kind)))?;
        if !self.storages.contains_key(&t.storage.key) {
            let entry = format!("{}data/{}", self.prefix, t.storage.key);
            let bytes =
                read_entry(&mut self.archive, &entry).map_err(|e| err(format!("{entry}: {e}")))?;
            self.storages.insert(t.storage.key.clone(), bytes);
        }
        let storage = &self.storages[&t.storage.key];
        let numel = view_extent(t, size, storage.len()).ok_or_else(|| {
            err(format!(
                "view (offset {}, shape {:?}, stride {:?}) does not fit its storage of {} bytes",
                t.offset,
                t.shape,
                t.stride,
                storage.len()
            ))
        })?;
        let mut data = Vec::with_capacity(numel * size);
        if is_contiguous(&t.shape, &t.stride) {
            data.extend_from_slice(&storage[t.offset * size..(t.offset + numel) * size]);
        } else {
            let mut idx = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                let e = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
                data.extend_from_slice(&storage[e * size..(e + 1) * size]);
                for ax in (0..idx.len()).rev() {
                    idx[ax] += 1;
                    if idx[ax] < t.shape[ax] {
                        break;
                    }
                    idx[ax] = 0;
                }
            }
        }
        Ok(RawTensor {
            dtype,
            shape: t.shape.clone(),
            data,
        })
    }
}

impl PthFile {
    /// Every tensor of the top-level entry `key` (nested dicts joined by dots, e.g.
    /// `module.head.mlp.0.weight` of `student`, `center` of `dino_loss`), read out.
    pub fn entry_tensors(&mut self, key: &str) -> Result<BTreeMap<String, RawTensor>, ImportError> {
        let value = dict_entry(&self.root, key).ok_or_else(|| ImportError::NoEntry {
            path: self.path.clone(),
            key: key.to_string(),
            found: dict_keys(&self.root),
        })?;
        let refs = tensors_in(&value);
        if refs.is_empty() {
            return Err(ImportError::NoTensors {
                path: self.path.clone(),
                entry: Some(key.to_string()),
            });
        }
        refs.iter()
            .map(|(name, r)| Ok((name.clone(), self.tensor(&format!("{key}.{name}"), r)?)))
            .collect()
    }
}

/// The element count of view `t` over a storage of `bytes` bytes of `size`-byte elements,
/// or `None` when the view reaches past the storage, its arithmetic overflows, or it has
/// more elements than the storage (stride-0 views, which no checkpoint holds, would
/// otherwise turn a few bytes into terabytes).
fn view_extent(t: &TensorRef, size: usize, bytes: usize) -> Option<usize> {
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))?;
    if numel == 0 {
        return Some(0);
    }
    // Largest element index touched.
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&n, &s)| {
            acc.checked_add((n - 1).checked_mul(s)?)
        })?;
    let end = last.checked_add(1)?.checked_mul(size)?;
    let fits = end <= bytes && numel.checked_mul(size)? <= bytes;
    fits.then_some(numel)
}

/// Most an archive entry may inflate per compressed byte (deflate's limit is about 1032;
/// `torch.save` stores entries uncompressed anyway).
const MAX_INFLATION: u64 = 1100;

/// The bytes of one archive entry; the error says why, the caller says which entry.
/// The size the archive declares is checked against what its compressed bytes can hold
/// before any memory is reserved, and reading stops at it.
fn read_entry(archive: &mut zip::ZipArchive<std::fs::File>, name: &str) -> Result<Vec<u8>, String> {
    let f = archive.by_name(name).map_err(|e| e.to_string())?;
    let (size, packed) = (f.size(), f.compressed_size());
    let limit = packed.saturating_mul(MAX_INFLATION).max(packed);
    if size > limit {
        return Err(format!(
            "declares {size} bytes, more than its {packed} stored bytes can hold"
        ));
    }
    let len = usize::try_from(size).map_err(|_| format!("declares {size} bytes"))?;
    let mut v = Vec::with_capacity(len);
    f.take(size.saturating_add(1))
        .read_to_end(&mut v)
        .map_err(|e| e.to_string())?;
    if v.len() != len {
        return Err(format!("holds {} bytes, declares {size}", v.len()));
    }
    Ok(v)
}

fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expect = 1;
    for (&n, &s) in shape.iter().zip(stride).rev() {
        if n != 1 && s != expect {
            return false;
        }
        expect *= n;
    }
    true
}

fn storage_dtype(kind: &str) -> Option<(Dtype, usize)> {
    Some(match kind {
        "FloatStorage" => (Dtype::F32, 4),
        "DoubleStorage" => (Dtype::F64, 8),
        "HalfStorage" => (Dtype::F16, 2),
        "BFloat16Storage" => (Dtype::BF16, 2),
        "LongStorage" => (Dtype::I64, 8),
        "IntStorage" => (Dtype::I32, 4),
        "ShortStorage" => (Dtype::I16, 2),
        "CharStorage" => (Dtype::I8, 1),
        "ByteStorage" => (Dtype::U8, 1),
        "BoolStorage" => (Dtype::BOOL, 1),
        _ => return None,
    })
}

/// Every tensor reachable through (nested) dicts from `v`, keyed by dotted path. A dict
/// reached twice (pickle's memo lets one object appear in many places) is walked once,
/// so the walk is linear in the file even for a crafted web of shared dicts.
pub fn tensors_in(v: &Value) -> BTreeMap<String, TensorRef> {
    let mut out = BTreeMap::new();
    collect(v, "", &mut out, &mut HashSet::new());
    out
}

fn collect(
    v: &Value,
    prefix: &str,
    out: &mut BTreeMap<String, TensorRef>,
    seen: &mut HashSet<*const ()>,
) {
    match v {
        Value::Tensor(t) => {
            out.insert(prefix.to_string(), (**t).clone());
        }
        Value::Dict(d) => {
            if !seen.insert(Rc::as_ptr(d) as *const ()) {
                return;
            }
            for (k, v) in d.borrow().iter() {
                if let Some(k) = k.as_str() {
                    let key = if prefix.is_empty() {
                        k.to_string()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    collect(v, &key, out, seen);
                }
            }
        }
        _ => {}
    }
}

/// The entry `key` of a top-level dict, if the file holds a dict with it.
pub fn dict_entry(v: &Value, key: &str) -> Option<Value> {
    match v {
        Value::Dict(d) => d
            .borrow()
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v.clone()),
        _ => None,
    }
}

/// The string keys of a top-level dict (for error messages).
pub fn dict_keys(v: &Value) -> Vec<String> {
    match v {
        Value::Dict(d) => d
            .borrow()
            .iter()
            .filter_map(|(k, _)| k.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(offset: usize, shape: &[usize], stride: &[usize]) -> TensorRef {
        TensorRef {
            storage: pickle::StorageRef {
                key: "0".into(),
                kind: "FloatStorage".into(),
            },
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn views_must_fit_their_storage_without_overflow() {
        assert_eq!(view_extent(&view(2, &[2, 3], &[3, 1]), 4, 32), Some(6));
        assert_eq!(view_extent(&view(3, &[2, 3], &[3, 1]), 4, 32), None);
        assert_eq!(view_extent(&view(0, &[0, 7], &[7, 1]), 4, 0), Some(0));
        // Stride 0: a few bytes cannot become terabytes.
        assert_eq!(view_extent(&view(0, &[1 << 40], &[0]), 4, 4), None);
        // Index arithmetic that wraps usize.
        assert_eq!(view_extent(&view(usize::MAX, &[2], &[1]), 4, 64), None);
        assert_eq!(view_extent(&view(0, &[3], &[usize::MAX / 2]), 4, 64), None);
        assert_eq!(
            view_extent(&view(0, &[1 << 33, 1 << 33], &[1, 1]), 1, 64),
            None
        );
    }

    #[test]
    fn contiguity_ignores_unit_dims() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[1, 1, 4], &[9, 7, 1]));
        assert!(!is_contiguous(&[3, 2], &[1, 3]));
    }
}
