//! The features `dino-train knn` votes on, and their files (`--dump_features`,
//! `--load_features`), so that a backbone is run once and the vote repeated at will.
//!
//! dino-rs writes one safetensors file, `<dir>/knn_features.safetensors` ([`FILE_NAME`]):
//!
//! | tensor           | dtype | shape      |                                        |
//! |------------------|-------|------------|----------------------------------------|
//! | `train_features` | F32   | `[n, dim]` | L2-normalised CLS features             |
//! | `train_labels`   | I64   | `[n]`      | class index of each train row          |
//! | `test_features`  | F32   | `[m, dim]` |                                        |
//! | `test_labels`    | I64   | `[m]`      |                                        |
//!
//! with metadata `dino_rs.format`, `dino_rs.kind = "knn_features"`, `dino_rs.classes` (JSON
//! list of class names), `dino_rs.skipped` (unreadable images left out) and, when known,
//! `dino_rs.eval` (the eval transform). `--load_features` also reads the four files of the
//! official `eval_knn.py --dump_features` (`trainfeat.pth`, `testfeat.pth`,
//! `trainlabels.pth`, `testlabels.pth`), without Python.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use dino_core::EvalTransform;
use dino_core::knn::{KnnHits, knn_hits};
use dino_core::st::{self, Dtype, RawTensor, StFile};
use dino_import::pth::{PthFile, pickle::Value};

use crate::error::{Result, TrainError};

/// The dino-rs feature file inside a `--dump_features` folder.
pub const FILE_NAME: &str = "knn_features.safetensors";
const KIND: &str = "knn_features";
const META_CLASSES: &str = "dino_rs.classes";
const META_SKIPPED: &str = "dino_rs.skipped";
/// The files of the official dump, in the order train/test features, train/test labels.
const OFFICIAL: [&str; 4] = [
    "trainfeat.pth",
    "testfeat.pth",
    "trainlabels.pth",
    "testlabels.pth",
];

/// L2-normalised train (gallery) and test (query) rows with their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct KnnFeatures {
    pub dim: usize,
    /// Class names; empty for official dumps, which keep none.
    pub classes: Vec<String>,
    pub train: Vec<f32>,
    pub train_labels: Vec<usize>,
    pub test: Vec<f32>,
    pub test_labels: Vec<usize>,
    /// Unreadable images left out when the features were extracted.
    pub skipped: usize,
    /// The eval transform the features were extracted with, when known.
    pub eval: Option<EvalTransform>,
}

impl KnnFeatures {
    /// The class count: the names, or (official dumps) the largest label plus one.
    pub fn num_classes(&self) -> usize {
        let max = self.train_labels.iter().chain(&self.test_labels).max();
        self.classes.len().max(max.map_or(0, |m| m + 1))
    }

    /// Top-1/top-5 hits of each `k`, from one search of the max(k) nearest train rows.
    pub fn hits(&self, ks: &[usize], temperature: f64) -> Result<Vec<KnnHits>> {
        Ok(knn_hits(
            &self.train,
            &self.train_labels,
            self.dim,
            self.num_classes(),
            &self.test,
            &self.test_labels,
            ks,
            temperature as f32,
        )?)
    }

    /// Writes `<dir>/knn_features.safetensors` atomically (creating `dir`).
    pub fn dump(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let path = dir.join(FILE_NAME);
        let rows = |v: &[f32]| vec![v.len() / self.dim, self.dim];
        let labels = |l: &[usize]| {
            let v: Vec<i64> = l.iter().map(|&x| x as i64).collect();
            RawTensor::from_i64(vec![v.len()], &v)
        };
        let tensors = BTreeMap::from([
            (
                "train_features".to_string(),
                RawTensor::from_f32(rows(&self.train), &self.train),
            ),
            ("train_labels".to_string(), labels(&self.train_labels)),
            (
                "test_features".to_string(),
                RawTensor::from_f32(rows(&self.test), &self.test),
            ),
            ("test_labels".to_string(), labels(&self.test_labels)),
        ]);
        let mut meta = HashMap::from([
            (st::META_FORMAT.to_string(), st::FORMAT_V1.to_string()),
            (st::META_KIND.to_string(), KIND.to_string()),
            (META_CLASSES.to_string(), to_json(&self.classes)),
            (META_SKIPPED.to_string(), self.skipped.to_string()),
        ]);
        if let Some(e) = &self.eval {
            meta.insert(st::META_EVAL.to_string(), to_json(e));
        }
        st::write_atomic(&path, &tensors, meta)?;
        Ok(path)
    }

    /// Reads a folder written by [`KnnFeatures::dump`], or the official dump's `.pth` files.
    pub fn load(dir: &Path) -> Result<Self> {
        let ours = dir.join(FILE_NAME);
        if ours.is_file() {
            return read_dino_rs(&ours);
        }
        if dir.join(OFFICIAL[0]).is_file() {
            return read_official(dir);
        }
        Err(TrainError::run(
            dir,
            format!(
                "no k-NN features: expected {FILE_NAME} (dino-train knn --dump_features) or {} \
                 (eval_knn.py --dump_features)",
                OFFICIAL.join(", ")
            ),
        ))
    }

    /// Checks that rows and labels agree and that features are finite.
    fn checked(self, path: &Path) -> Result<Self> {
        let bad = |why: String| Err(TrainError::run(path, why));
        if self.dim == 0 {
            return bad("features of dimension 0".into());
        }
        for (what, f, l) in [
            ("train", &self.train, &self.train_labels),
            ("test", &self.test, &self.test_labels),
        ] {
            if f.len() != l.len() * self.dim || l.is_empty() {
                return bad(format!(
                    "{what}: {} feature values are not {} rows of dimension {}",
                    f.len(),
                    l.len(),
                    self.dim
                ));
            }
            if f.iter().any(|v| !v.is_finite()) {
                return bad(format!("{what} features hold NaN or infinite values"));
            }
        }
        if !self.classes.is_empty() && self.num_classes() > self.classes.len() {
            return bad(format!(
                "a label is not below the number of classes {}",
                self.classes.len()
            ));
        }
        Ok(self)
    }
}

/// A metadata value (class names, eval transform) as JSON text.
fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

/// A tensor of `f`, with an error naming the file and the key when it is missing.
fn take<'a>(f: &'a StFile, key: &str) -> Result<&'a RawTensor> {
    f.tensors
        .get(key)
        .ok_or_else(|| TrainError::run(&f.path, format!("no tensor `{key}`")))
}

/// Integer labels of a 1-D tensor (int64 or int32), refusing negative ones.
fn labels_of(t: &RawTensor, path: &Path, key: &str) -> Result<Vec<usize>> {
    let bad = |why: String| TrainError::run(path, format!("`{key}`: {why}"));
    let values: Vec<i64> = match t.dtype {
        Dtype::I64 => t
            .data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        Dtype::I32 => t
            .data
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64)
            .collect(),
        d => return Err(bad(format!("labels of dtype {d:?}, expected int64"))),
    };
    if t.shape.len() != 1 {
        return Err(bad(format!("shape {:?}, expected [n]", t.shape)));
    }
    values
        .into_iter()
        .map(|v| usize::try_from(v).map_err(|_| bad(format!("negative label {v}"))))
        .collect()
}

/// Rows of a 2-D float tensor, with their dimension.
fn rows_of(t: &RawTensor, path: &Path, key: &str) -> Result<(Vec<f32>, usize)> {
    match t.shape.as_slice() {
        [_, d] => Ok((t.to_f32(path, key)?, *d)),
        s => Err(TrainError::run(
            path,
            format!("`{key}`: shape {s:?}, expected [n, dim]"),
        )),
    }
}

fn read_dino_rs(path: &Path) -> Result<KnnFeatures> {
    let f = StFile::read(path)?;
    f.check_format()?;
    let kind = f.meta(st::META_KIND)?;
    if kind != KIND {
        return Err(TrainError::run(
            path,
            format!("a dino-rs `{kind}` file, not k-NN features"),
        ));
    }
    let (train, dim) = rows_of(take(&f, "train_features")?, path, "train_features")?;
    let (test, test_dim) = rows_of(take(&f, "test_features")?, path, "test_features")?;
    if dim != test_dim {
        return Err(TrainError::run(
            path,
            format!("train features of dimension {dim}, test features of {test_dim}"),
        ));
    }
    let skipped = f
        .meta(META_SKIPPED)?
        .parse()
        .map_err(|e| TrainError::run(path, format!("`{META_SKIPPED}`: {e}")))?;
    KnnFeatures {
        dim,
        classes: f.meta_json(META_CLASSES)?,
        train,
        train_labels: labels_of(take(&f, "train_labels")?, path, "train_labels")?,
        test,
        test_labels: labels_of(take(&f, "test_labels")?, path, "test_labels")?,
        skipped,
        eval: f
            .metadata
            .contains_key(st::META_EVAL)
            .then(|| f.meta_json(st::META_EVAL))
            .transpose()?,
    }
    .checked(path)
}

/// The single tensor a `torch.save(tensor, path)` file holds.
fn pth_tensor(path: &Path) -> Result<RawTensor> {
    let err = |e: dino_import::ImportError| TrainError::Invalid(e.to_string());
    let mut f = PthFile::open(path).map_err(err)?;
    let Value::Tensor(t) = f.root.clone() else {
        return Err(TrainError::run(
            path,
            "holds no single tensor (expected torch.save(tensor))",
        ));
    };
    f.tensor("tensor", &t).map_err(err)
}

fn read_official(dir: &Path) -> Result<KnnFeatures> {
    let [trf, tef, trl, tel] = OFFICIAL.map(|n| dir.join(n));
    let (train, dim) = rows_of(&pth_tensor(&trf)?, &trf, "tensor")?;
    let (test, test_dim) = rows_of(&pth_tensor(&tef)?, &tef, "tensor")?;
    if dim != test_dim {
        return Err(TrainError::run(
            &tef,
            format!("features of dimension {test_dim}, the train features have {dim}"),
        ));
    }
    KnnFeatures {
        dim,
        classes: Vec::new(),
        train,
        train_labels: labels_of(&pth_tensor(&trl)?, &trl, "tensor")?,
        test,
        test_labels: labels_of(&pth_tensor(&tel)?, &tel, "tensor")?,
        skipped: 0,
        eval: None,
    }
    .checked(dir)
}
