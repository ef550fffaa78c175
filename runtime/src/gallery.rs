//! The `.dgal` gallery: labelled, L2-normalised embeddings of one model.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! offset  size          field
//! 0       4             magic "DGAL"
//! 4       4             u32 format version (2; version 1 files are read too)
//! 8       8             u64 length H of the JSON header
//! 16      H             JSON header {"fingerprint", "model", "dim", "rows", "classes"
//!                       [, "unlabelled": true]}
//! ..      4 * rows      u32 label per row (index into "classes")
//! ..      4 * rows*dim  f32 embeddings, row-major, each row of unit L2 norm
//! ..      8             u64 length P of the paths (version 2 only; 0: none stored)
//! ..      P             JSON array of each row's image path (version 2 only)
//! end-4   4             u32 CRC-32 (IEEE) of every byte before it
//! ```
//!
//! The paths are what `dino-run search` and the server's `/v1/search` answer with; they are
//! only text (never opened by the server).
//!
//! An unlabelled gallery (indexed from a folder without class folders) has
//! `"unlabelled": true` and the one pseudo-class [`UNLABELLED_CLASS`] that every row has: it
//! answers `search`, and k-NN classification against it is refused. Labelled galleries
//! leave the key out, so their files are those of earlier versions.
//!
//! The fingerprint is the model's `dino_rs.fingerprint`: a gallery is only used with the
//! weights that produced it.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use dino_core::{EvalTransform, knn};
use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;

pub const MAGIC: &[u8; 4] = b"DGAL";
pub const VERSION: u32 = 2;
/// The first format: no paths section.
const VERSION_1: u32 = 1;
/// The class of every row of an unlabelled gallery.
pub const UNLABELLED_CLASS: &str = "unlabelled";
/// Upper bound on the JSON header, so a damaged length cannot allocate gigabytes.
const MAX_HEADER: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GalleryHeader {
    pub fingerprint: String,
    /// File name of the model that built the gallery (informative).
    pub model: String,
    pub dim: usize,
    pub rows: usize,
    pub classes: Vec<String>,
    /// Rows without classes: `classes` is `[UNLABELLED_CLASS]`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlabelled: bool,
    /// The model's eval transform when the gallery was built: the same weights exported
    /// at another input size embed differently, so a model must match it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalTransform>,
}

impl GalleryHeader {
    /// Checks that an unlabelled header has exactly the pseudo-class.
    fn check(&self) -> Result<(), String> {
        if self.unlabelled && self.classes != [UNLABELLED_CLASS] {
            return Err(format!(
                "an unlabelled gallery has the one class `{UNLABELLED_CLASS}`, not {:?}",
                self.classes
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct Gallery {
    pub header: GalleryHeader,
    pub labels: Vec<usize>,
    pub features: Vec<f32>,
    /// Each row's image path, when the gallery keeps them (version 2 written by `index`).
    pub paths: Option<Vec<String>>,
}

/// A reader that keeps a running CRC-32 of what passes through.
struct Crc<T> {
    inner: T,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

impl Gallery {
    /// A gallery from embeddings (normalised here) and labels; checks the shapes.
    pub fn new(
        header: GalleryHeader,
        labels: Vec<usize>,
        mut features: Vec<f32>,
    ) -> Result<Self, RuntimeError> {
        header
            .check()
            .map_err(|why| RuntimeError::Core(dino_core::CoreError::InvalidConfig(why)))?;
        knn::Gallery::new(&features, &labels, header.dim, header.classes.len())?;
        knn::l2_normalize_rows(&mut features, header.dim);
        Ok(Self {
            header: GalleryHeader {
                rows: labels.len(),
                ..header
            },
            labels,
            features,
            paths: None,
        })
    }

    /// Keeps each row's image path (one per row).
    pub fn with_paths(mut self, paths: Vec<String>) -> Result<Self, RuntimeError> {
        if paths.len() != self.labels.len() {
            return Err(RuntimeError::Core(dino_core::CoreError::InvalidConfig(
                format!(
                    "gallery: {} paths for {} rows",
                    paths.len(),
                    self.labels.len()
                ),
            )));
        }
        self.paths = Some(paths);
        Ok(self)
    }

    /// The k-NN view of this gallery.
    pub fn knn(&self) -> knn::Gallery<'_> {
        knn::Gallery {
            features: &self.features,
            labels: &self.labels,
            dim: self.header.dim,
            num_classes: self.header.classes.len(),
        }
    }

    /// Refuses an unlabelled gallery where classes are needed (k-NN classification).
    pub fn require_labels(&self) -> Result<(), RuntimeError> {
        if self.header.unlabelled {
            return Err(RuntimeError::UnlabelledGallery);
        }
        Ok(())
    }

    /// Refuses a gallery built with other weights, or with the same weights at another
    /// input size or preprocessing (galleries from before the transform was recorded are
    /// checked by their weights only).
    pub fn check_model(
        &self,
        path: &Path,
        model_fingerprint: &str,
        model_eval: &EvalTransform,
    ) -> Result<(), RuntimeError> {
        if self.header.fingerprint != model_fingerprint {
            return Err(RuntimeError::GalleryMismatch {
                path: path.to_path_buf(),
                gallery: self.header.fingerprint.clone(),
                model: model_fingerprint.to_string(),
            });
        }
        if let Some(e) = &self.header.eval
            && e != model_eval
        {
            return Err(RuntimeError::BadGallery {
                path: path.to_path_buf(),
                why: format!(
                    "built with the model at input {} (resize {}), this model takes {} (resize {}): rebuild it with `dino-run index` and this model",
                    e.crop_size, e.resize_size, model_eval.crop_size, model_eval.resize_size
                ),
            });
        }
        Ok(())
    }

    /// Writes the file atomically (a temporary file renamed over `path`).
    pub fn write(&self, path: &Path) -> Result<(), RuntimeError> {
        let bad = |e: serde_json::Error| RuntimeError::BadGallery {
            path: path.to_path_buf(),
            why: e.to_string(),
        };
        let header = serde_json::to_vec(&self.header).map_err(bad)?;
        let paths = match &self.paths {
            Some(p) => serde_json::to_vec(p).map_err(bad)?,
            None => Vec::new(),
        };
        let mut w = Vec::with_capacity(
            36 + header.len() + paths.len() + 4 * (self.labels.len() + self.features.len()),
        );
        w.extend_from_slice(MAGIC);
        w.extend_from_slice(&VERSION.to_le_bytes());
        w.extend_from_slice(&(header.len() as u64).to_le_bytes());
        w.extend_from_slice(&header);
        w.extend(self.labels.iter().flat_map(|&l| (l as u32).to_le_bytes()));
        w.extend(self.features.iter().flat_map(|v| v.to_le_bytes()));
        w.extend_from_slice(&(paths.len() as u64).to_le_bytes());
        w.extend_from_slice(&paths);
        let crc = crc32fast::hash(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        Ok(dino_core::st::write_bytes_atomic(path, &w)?)
    }

    pub fn read(path: &Path) -> Result<Self, RuntimeError> {
        let bad = |why: String| RuntimeError::BadGallery {
            path: path.to_path_buf(),
            why,
        };
        let file = File::open(path).map_err(|e| RuntimeError::io(path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| RuntimeError::io(path, e))?
            .len();
        let mut r = Crc {
            inner: BufReader::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
        };
        let truncated = |e: std::io::Error| bad(format!("truncated or unreadable ({e})"));
        let (version, hlen) = read_preamble(&mut r, file_len).map_err(bad)?;
        let mut hbytes = vec![0u8; hlen as usize];
        r.read_exact(&mut hbytes).map_err(truncated)?;
        let header: GalleryHeader =
            serde_json::from_slice(&hbytes).map_err(|e| bad(format!("header: {e}")))?;
        header.check().map_err(bad)?;
        let arrays = arrays_end(version, hlen, &header, file_len).map_err(bad)?;
        let mut labels = vec![0u32; header.rows];
        r.read_exact(bytemuck::cast_slice_mut(&mut labels))
            .map_err(truncated)?;
        let mut features = vec![0f32; header.rows * header.dim];
        r.read_exact(bytemuck::cast_slice_mut(&mut features))
            .map_err(truncated)?;
        let paths = if version == VERSION_1 {
            None
        } else {
            read_paths(&mut r, file_len - 4 - arrays - 8, header.rows).map_err(bad)?
        };
        let computed = r.crc.clone().finalize();
        let mut stored = [0u8; 4];
        r.inner.read_exact(&mut stored).map_err(truncated)?;
        if u32::from_le_bytes(stored) != computed {
            return Err(bad("checksum mismatch: the file is corrupt".into()));
        }
        if cfg!(target_endian = "big") {
            labels.iter_mut().for_each(|v| *v = u32::from_le(*v));
            features
                .iter_mut()
                .for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
        }
        let labels: Vec<usize> = labels.into_iter().map(|l| l as usize).collect();
        knn::Gallery::new(&features, &labels, header.dim, header.classes.len())
            .map_err(|e| bad(e.to_string()))?;
        check_rows(&features, header.dim).map_err(bad)?;
        Ok(Self {
            header,
            labels,
            features,
            paths,
        })
    }
}

/// Largest departure from unit length a stored row may have (rows are normalised before
/// writing; f32 rounding leaves about 1e-7).
const UNIT_TOLERANCE: f32 = 1e-3;

/// What a checksum cannot say: the rows are there, finite and of unit length. A NaN row
/// would win every vote, a zero row would never be found.
fn check_rows(features: &[f32], dim: usize) -> Result<(), String> {
    if features.is_empty() {
        return Err("the gallery has no rows".into());
    }
    for (i, row) in features.chunks_exact(dim).enumerate() {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !norm.is_finite() || (norm - 1.0).abs() > UNIT_TOLERANCE {
            return Err(format!(
                "row {i} has length {norm}, not 1 (NaN, infinite or unnormalised values)"
            ));
        }
    }
    Ok(())
}

/// Magic, version and header length: the 16 bytes every version starts with.
fn read_preamble(r: &mut impl Read, file_len: u64) -> Result<(u32, u64), String> {
    let mut fixed = [0u8; 16];
    r.read_exact(&mut fixed)
        .map_err(|e| format!("truncated or unreadable ({e})"))?;
    if &fixed[..4] != MAGIC {
        return Err("wrong magic bytes (not a .dgal file)".into());
    }
    let version = u32::from_le_bytes(fixed[4..8].try_into().expect("4 bytes"));
    if version != VERSION && version != VERSION_1 {
        return Err(format!(
            "format version {version}, this dino-run reads versions {VERSION_1} and {VERSION}"
        ));
    }
    let hlen = u64::from_le_bytes(fixed[8..16].try_into().expect("8 bytes"));
    if hlen > MAX_HEADER || 16 + hlen + 4 > file_len {
        return Err(format!("header length {hlen} does not fit the file"));
    }
    Ok((version, hlen))
}

/// Where the label and feature arrays end, checked against the file's length in checked
/// arithmetic before anything of that size is allocated.
fn arrays_end(
    version: u32,
    hlen: u64,
    header: &GalleryHeader,
    file_len: u64,
) -> Result<u64, String> {
    let rows = header.rows as u64;
    let arrays = 16u64
        .checked_add(hlen)
        .and_then(|v| v.checked_add(rows.checked_mul(4)?))
        .and_then(|v| v.checked_add(rows.checked_mul(header.dim as u64)?.checked_mul(4)?));
    // Version 2 adds the paths section, whose length is checked when read.
    let expected = match version {
        VERSION_1 => arrays.and_then(|v| v.checked_add(4)),
        _ => arrays
            .and_then(|v| v.checked_add(12))
            .filter(|&v| v <= file_len)
            .map(|_| file_len),
    };
    match (arrays, expected) {
        (Some(a), Some(e)) if e == file_len => Ok(a),
        _ => Err(format!(
            "{} rows of dimension {} need {} bytes, the file has {file_len} (truncated?)",
            header.rows,
            header.dim,
            expected.map_or("too many".into(), |v| v.to_string())
        )),
    }
}

/// The version-2 paths section: its length (which must be all that is left before the
/// checksum, `left` bytes) and a JSON array of one path per row (empty: none stored).
fn read_paths(r: &mut impl Read, left: u64, rows: usize) -> Result<Option<Vec<String>>, String> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)
        .map_err(|e| format!("truncated paths section ({e})"))?;
    let len = u64::from_le_bytes(len);
    if len != left {
        return Err(format!(
            "paths section of {len} bytes, the file has {left} left (truncated?)"
        ));
    }
    if len == 0 {
        return Ok(None);
    }
    let mut bytes = vec![0u8; len as usize];
    r.read_exact(&mut bytes)
        .map_err(|e| format!("truncated paths section ({e})"))?;
    let paths: Vec<String> =
        serde_json::from_slice(&bytes).map_err(|e| format!("paths section: {e}"))?;
    if paths.len() != rows {
        return Err(format!("{} paths for {rows} rows", paths.len()));
    }
    Ok(Some(paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Gallery {
        let header = GalleryHeader {
            fingerprint: "abc".into(),
            model: "m.onnx".into(),
            dim: 2,
            rows: 0,
            classes: vec!["cat".into(), "dog".into()],
            unlabelled: false,
            eval: None,
        };
        Gallery::new(header, vec![0, 1, 1], vec![3.0, 4.0, 0.0, 2.0, 1.0, 1.0]).unwrap()
    }

    #[test]
    fn valid_checksums_over_wrong_content_are_refused() {
        let dir = std::env::temp_dir().join(format!("dgal-content-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("g.dgal");
        for (what, value) in [("NaN", f32::NAN), ("unnormalised", 3.0), ("zero", 0.0)] {
            let mut g = sample();
            g.features[2] = value;
            g.features[3] = 0.0;
            g.write(&p).unwrap();
            let e = Gallery::read(&p).err().unwrap().to_string();
            assert!(e.contains("row 1") && e.contains("g.dgal"), "{what}: {e}");
        }
        let empty = Gallery::new(sample().header, vec![], vec![]).unwrap();
        empty.write(&p).unwrap();
        let e = Gallery::read(&p).err().unwrap().to_string();
        assert!(e.contains("no rows"), "{e}");

        // Built at 32 px: a model of the same weights at 64 px is refused.
        let mut g = sample();
        g.header.eval = Some(EvalTransform::standard(32));
        g.write(&p).unwrap();
        let back = Gallery::read(&p).unwrap();
        assert!(
            back.check_model(&p, "abc", &EvalTransform::standard(32))
                .is_ok()
        );
        let e = back
            .check_model(&p, "abc", &EvalTransform::standard(64))
            .unwrap_err()
            .to_string();
        assert!(e.contains("input 32") && e.contains("takes 64"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("dgal-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("g.dgal");
        let g = sample();
        assert_eq!(g.header.rows, 3);
        assert_eq!(&g.features[..2], &[0.6, 0.8]);
        g.write(&p).unwrap();
        let back = Gallery::read(&p).unwrap();
        assert_eq!(back.header, g.header);
        assert_eq!(back.labels, g.labels);
        assert_eq!(back.features, g.features);
        assert!(
            back.check_model(&p, "abc", &EvalTransform::standard(32))
                .is_ok()
        );
        assert!(matches!(
            back.check_model(&p, "xyz", &EvalTransform::standard(32)),
            Err(RuntimeError::GalleryMismatch { .. })
        ));

        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 14] ^= 0x40;
        std::fs::write(&p, &bytes).unwrap();
        let e = Gallery::read(&p).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        std::fs::write(&p, &bytes[..n - 3]).unwrap();
        let e = Gallery::read(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(&p, b"hello world, not a gallery").unwrap();
        let e = Gallery::read(&p).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn paths_round_trip_and_version_1_is_read() {
        let dir = std::env::temp_dir().join(format!("dgal-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("g.dgal");
        let names: Vec<String> = ["a/1.png", "b/2.png", "b/3 é.jpg"].map(String::from).into();
        let g = sample().with_paths(names.clone()).unwrap();
        g.write(&p).unwrap();
        assert_eq!(Gallery::read(&p).unwrap().paths, Some(names));
        // The paths are under the checksum.
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 8] ^= 0x01;
        std::fs::write(&p, &bytes).unwrap();
        let e = Gallery::read(&p).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        assert!(sample().with_paths(vec!["x".into()]).is_err());

        // A version-1 file: no paths section, version 1, its own checksum.
        sample().write(&p).unwrap();
        let v2 = std::fs::read(&p).unwrap();
        let mut v1 = v2[..v2.len() - 12].to_vec();
        v1[4..8].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&p, &v1).unwrap();
        let back = Gallery::read(&p).unwrap();
        assert_eq!(back.paths, None);
        assert_eq!(back.features, sample().features);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unlabelled_galleries_round_trip_and_refuse_classes() {
        let dir = std::env::temp_dir().join(format!("dgal-unlabelled-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("g.dgal");
        let header = GalleryHeader {
            classes: vec![UNLABELLED_CLASS.into()],
            unlabelled: true,
            ..sample().header
        };
        let g = Gallery::new(header.clone(), vec![0, 0], vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        assert!(matches!(
            g.require_labels(),
            Err(RuntimeError::UnlabelledGallery)
        ));
        g.write(&p).unwrap();
        let back = Gallery::read(&p).unwrap();
        assert!(back.header.unlabelled);
        assert!(sample().require_labels().is_ok());
        // Labelled headers are written as before: no `unlabelled` key.
        sample().write(&p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("unlabelled"));
        let two = GalleryHeader {
            classes: vec!["a".into(), "b".into()],
            ..header
        };
        assert!(Gallery::new(two, vec![0, 1], vec![1.0, 0.0, 0.0, 1.0]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
