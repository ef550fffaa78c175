//! Shared fixtures of the `algo_*` and `step_fidelity` tests: run a reference script of
//! `train/tests/python/` (`dino_reference.py` for one case) into a temporary folder and read
//! back its inputs and expected outputs. Comparisons go through
//! `dino_core::testing::assert_close`.

#![allow(dead_code)]

pub mod small;

use std::ffi::OsStr;

use dino_core::st::StFile;
use dino_core::testing::assert_close;
use dino_tests::run_python;
use safetensors::Dtype;
use serde_json::Value;
use tch::{Kind, Tensor};

/// One reference case: the tensors the script wrote and its `config` metadata.
pub struct Reference {
    _dir: tempfile::TempDir,
    pub st: StFile,
    pub config: Value,
}

/// Runs `dino_reference.py CASE OUT [args]` and reads `OUT/CASE.safetensors`.
pub fn reference(case: &str, args: &[&str]) -> Reference {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut all: Vec<&OsStr> = vec![OsStr::new(case), dir.path().as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    run_python("train/tests/python/dino_reference.py", &all);
    Reference::open(dir, &format!("{case}.safetensors"))
}

impl Reference {
    /// Reads `dir/file` (a script's output); `dir` lives as long as the reference. The
    /// `config` metadata is `null` when the file has none.
    pub fn open(dir: tempfile::TempDir, file: &str) -> Self {
        let st = StFile::read(&dir.path().join(file)).expect("reference output");
        let config = st.meta("config").map_or(Value::Null, |c| {
            serde_json::from_str(c).expect("config JSON")
        });
        Self {
            _dir: dir,
            st,
            config,
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.st.tensors.contains_key(key)
    }

    /// A stored tensor with its own dtype and shape, on CPU.
    pub fn tensor(&self, key: &str) -> Tensor {
        let raw = self
            .st
            .tensors
            .get(key)
            .unwrap_or_else(|| panic!("reference has no `{key}`"));
        let kind = match raw.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F64 => Kind::Double,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::I64 => Kind::Int64,
            other => panic!("`{key}`: unexpected dtype {other:?}"),
        };
        let shape: Vec<i64> = raw.shape.iter().map(|&d| d as i64).collect();
        Tensor::from_data_size(&raw.data, &shape, kind)
    }

    pub fn f32s(&self, key: &str) -> Vec<f32> {
        values(&self.tensor(key))
    }

    pub fn f64s(&self, key: &str) -> Vec<f64> {
        Vec::<f64>::try_from(self.tensor(key).to_kind(Kind::Double).flatten(0, -1))
            .expect("f64 values")
    }

    pub fn usize(&self, key: &str) -> usize {
        self.config[key]
            .as_u64()
            .unwrap_or_else(|| panic!("config `{key}`")) as usize
    }

    pub fn f64(&self, key: &str) -> f64 {
        self.config[key]
            .as_f64()
            .unwrap_or_else(|| panic!("config `{key}`"))
    }

    pub fn f64_list(&self, key: &str) -> Vec<f64> {
        self.config[key]
            .as_array()
            .unwrap_or_else(|| panic!("config `{key}`"))
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect()
    }

    pub fn str_list(&self, key: &str) -> Vec<String> {
        self.config[key]
            .as_array()
            .unwrap_or_else(|| panic!("config `{key}`"))
            .iter()
            .map(|v| v.as_str().expect("string").to_string())
            .collect()
    }
}

/// All values of a tensor, widened to f32, in row-major order.
pub fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().to_kind(Kind::Float).flatten(0, -1)).expect("f32 values")
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    dino_core::testing::max_abs_diff(a, b)
}

/// The `numpy.allclose` rule in f64: `|a - e| <= atol + rtol * |e|`. The f64 residuals,
/// scaled by the tolerance, go through `assert_close` (which is f32), so a failure reports
/// the element and how many tolerances away it is.
#[track_caller]
pub fn assert_close_f64(actual: &[f64], expected: &[f64], atol: f64, rtol: f64) {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let scaled: Vec<f32> = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| ((a - e).abs() / (atol + rtol * e.abs())) as f32)
        .collect();
    assert_close(&scaled, &vec![0.0; scaled.len()], 1.0, 0.0);
}

/// Largest `|a - e| / max(|e|, tiny)` in f64, for reporting.
pub fn max_rel_f64(actual: &[f64], expected: &[f64]) -> f64 {
    actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs() / e.abs().max(1e-300))
        .fold(0.0, f64::max)
}

/// The reference's parameters `{prefix}.{name}` as leaf tensors; all require a gradient but
/// the head's `weight_g` (frozen, as with `norm_last_layer`).
pub fn params_from(r: &Reference, names: &[String], prefix: &str) -> Vec<(String, Tensor)> {
    names
        .iter()
        .map(|n| {
            let p = r.tensor(&format!("{prefix}.{n}"));
            (n.clone(), p.set_requires_grad(!n.ends_with("weight_g")))
        })
        .collect()
}

/// Gives each parameter the gradient `{grad_prefix}.{name}` where the reference has one, by
/// backpropagating `sum(p * g)` (whose gradient is exactly `g`) after zeroing the old ones.
/// Parameters without such a key get no gradient.
pub fn backprop_grads(params: &[(String, Tensor)], r: &Reference, grad_prefix: &str) {
    let mut total: Option<Tensor> = None;
    for (n, p) in params {
        let mut p = p.shallow_clone();
        p.zero_grad();
        let key = format!("{grad_prefix}.{n}");
        if r.has(&key) {
            let term = (&p * r.tensor(&key)).sum(Kind::Float);
            total = Some(match total {
                None => term,
                Some(t) => t + term,
            });
        }
    }
    total.expect("some gradients").backward();
}
