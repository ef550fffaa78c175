//! Build script shared by the crates that link libtorch.
//!
//! libtorch comes from the pinned PyPI torch wheel, so its folder is only known at build
//! time. This gives every binary and test of the crate an rpath to it (no LD_LIBRARY_PATH
//! needed) and force-links `libtorch_cuda.so` when the wheel has it: the linker's
//! `--as-needed` would otherwise drop it, since no symbol is referenced directly, and CUDA
//! would silently be unavailable.
//!
//! `dist/build.rs` also compiles a C++ shim, so it uses this file as a module: hence `pub`.
use std::path::PathBuf;

pub fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=DINO_RS_TORCH_LIB");
    let Some(lib) = torch_lib() else {
        println!("cargo:warning=libtorch folder not found: binaries will need LD_LIBRARY_PATH");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

pub fn torch_lib() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DINO_RS_TORCH_LIB") {
        return Some(PathBuf::from(p));
    }
    if let Ok(p) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(p).join("lib"));
    }
    // LIBTORCH_USE_PYTORCH=1: ask the python on PATH, as torch-sys does.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?;
    let p = PathBuf::from(s.trim());
    p.exists().then_some(p)
}
