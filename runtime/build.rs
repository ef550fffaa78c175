//! Bakes the path of the Python venv's ONNX Runtime into `dino-run` as its last fallback.
//!
//! The Makefile puts the venv's python first on PATH and exports `DINO_RS_VENV`; the
//! library is the one of the pinned `onnxruntime` wheel. Nothing is linked at build time.
//! `DINO_RS_BAKE_ORT=0` bakes nothing (the runtime-only tarball of `make runtime-dist`,
//! whose binaries find the library next to themselves and carry no build machine path).
use std::path::PathBuf;
use std::process::Command;

const LIB: &str = "libonnxruntime.so.1.31.1";

fn main() {
    println!("cargo:rerun-if-env-changed=DINO_RS_VENV");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=DINO_RS_BAKE_ORT");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("DINO_RS_BAKE_ORT").is_some_and(|v| v == "0") {
        return;
    }
    let python = std::env::var_os("DINO_RS_VENV")
        .map(|v| PathBuf::from(v).join("bin").join("python3"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"));
    let found = Command::new(&python)
        .args([
            "-c",
            "import os, onnxruntime; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()).join(LIB))
        .filter(|p| p.is_file());
    match found {
        Some(p) => println!("cargo:rustc-env=DINO_RS_BAKED_ORT_LIB={}", p.display()),
        None => println!(
            "cargo:warning=onnxruntime wheel not found through {}: dino-run will need --ort-lib or ORT_DYLIB_PATH",
            python.display()
        ),
    }
}
