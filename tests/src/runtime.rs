//! Fixtures of the `dino-run` tests: seeded ONNX models from
//! `tests/python/runtime_fixture.py`, the binary with its own cache, its JSON output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::paths::{bin, s};
use crate::run::run_python;

/// A seeded test model written by `tests/python/runtime_fixture.py` into `dir`.
pub fn fixture(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut a = vec![s(&out)];
    a.extend(args.iter().map(|x| x.to_string()));
    run_python("tests/python/runtime_fixture.py", &a);
    out
}

/// `dino-run` with its graph cache inside `dir`.
pub fn dino_run(dir: &Path) -> Command {
    let mut c = Command::new(bin("dino-run"));
    c.env("XDG_CACHE_HOME", dir.join("cache"))
        .env_remove("ORT_DYLIB_PATH");
    c
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}
