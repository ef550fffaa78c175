//! Helpers of the dino-run end-to-end tests (`runtime_cli.rs`, `runtime_errors.rs`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dino_tests::{bin, data_dir, run_python};

pub fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// A seeded test model written by `tests/python/runtime_fixture.py` into `dir`.
pub fn fixture(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut a = vec![s(&out)];
    a.extend(args.iter().map(|x| x.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    run_python("runtime_fixture.py", &a);
    out
}

/// `dino-run` with its graph cache inside `dir`.
pub fn dino_run(dir: &Path) -> Command {
    let mut c = Command::new(bin("dino-run"));
    c.env("XDG_CACHE_HOME", dir.join("cache"))
        .env_remove("ORT_DYLIB_PATH");
    c
}

pub fn run_ok(cmd: &mut Command) -> Output {
    dino_tests::output_ok(cmd, "dino-run")
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

pub fn photos() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir().join("photos"))
        .expect("../shared/data/photos")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}
