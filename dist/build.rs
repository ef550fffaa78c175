//! Compiles `csrc/c10d_shim.cpp` against the torch wheel's own headers, as torch-sys
//! builds its wrapper, and links it to the wheel's libtorch (rpath as the other crates).
//!
//! gloo's headers, which `ProcessGroupGloo.hpp` includes but the wheel does not ship, come
//! from Debian's `libgloo-dev` (declarations only: the code that runs is libtorch's).
//! `ProcessGroupNCCL` is compiled in, and `cfg(dino_dist_nccl)` set, only when the wheel
//! has `libtorch_cuda.so` and the NCCL and CUDA runtime headers are found.
use std::env;
use std::path::{Path, PathBuf};

#[path = "../scripts/torch_rpath.rs"]
mod torch_rpath;

/// Headers ProcessGroupNCCL.hpp needs beyond torch's: NCCL's, CUDA runtime's, and the
/// two that the CUDA runtime wheels split out (nvidia-cuda-crt, nvidia-cuda-cccl).
const CUDA_HEADERS: [&str; 4] = [
    "nccl.h",
    "cuda_runtime_api.h",
    "crt/host_config.h",
    "nv/target",
];

fn main() {
    for var in [
        "DINO_GLOO_INCLUDE",
        "DINO_CUDA_INCLUDE",
        "DINO_DIST_NCCL",
        "CUDA_HOME",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=csrc/c10d_shim.cpp");
    println!("cargo:rerun-if-changed=csrc/c10d_shim.h");
    println!("cargo::rustc-check-cfg=cfg(dino_dist_nccl)");
    if env::var_os("DOCS_RS").is_some() {
        return;
    }
    torch_rpath::main();
    let Some(lib) = torch_rpath::torch_lib() else {
        panic!(
            "libtorch not found: set LIBTORCH_USE_PYTORCH=1 with the venv's python first on PATH, or LIBTORCH"
        );
    };
    let gloo = gloo_include();
    let torch_root = lib.parent().expect("libtorch lib folder has a parent");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .std("c++17")
        .include(torch_root.join("include"))
        .include(torch_root.join("include/torch/csrc/api/include"))
        .include(&gloo)
        .define("USE_C10D_GLOO", None)
        .define("GLOG_USE_GLOG_EXPORT", None)
        .file("csrc/c10d_shim.cpp");
    let cuda_dirs = match env::var("DINO_DIST_NCCL").as_deref() {
        Ok("0") => None,
        Ok("1") => Some(
            cuda_includes(&lib).unwrap_or_else(|missing| panic!("DINO_DIST_NCCL=1: {missing}")),
        ),
        _ => cuda_includes(&lib).ok(),
    };
    if let Some(dirs) = &cuda_dirs {
        build.includes(dirs).define("USE_C10D_NCCL", None);
        println!("cargo::rustc-cfg=dino_dist_nccl");
    }
    build.compile("dino_c10d_shim");
    // After the static shim, so that --as-needed keeps the libraries it references.
    println!("cargo:rustc-link-search=native={}", lib.display());
    if cuda_dirs.is_some() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    for name in ["torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={name}");
    }
}

/// The folder holding `gloo/`: `DINO_GLOO_INCLUDE`, else Debian's `/usr/include`.
fn gloo_include() -> PathBuf {
    let dir = env::var_os("DINO_GLOO_INCLUDE")
        .map_or_else(|| PathBuf::from("/usr/include"), PathBuf::from);
    if !dir.join("gloo/config.h").exists() {
        panic!(
            "gloo headers not found ({}/gloo/config.h): install Debian's libgloo-dev \
             (scripts/sysdeps.sh does, as root), or set DINO_GLOO_INCLUDE to the folder holding gloo/",
            dir.display()
        );
    }
    dir
}

/// Include folders that together hold every header of `CUDA_HEADERS`, or what is missing.
/// `DINO_DIST_NCCL=0` leaves NCCL out, `=1` makes a missing piece a build error; unset,
/// NCCL is compiled in whenever it can be.
fn cuda_includes(lib: &Path) -> Result<Vec<PathBuf>, String> {
    if !lib.join("libtorch_cuda.so").exists() {
        return Err(format!(
            "{} has no libtorch_cuda.so (a CPU-only libtorch)",
            lib.display()
        ));
    }
    let mut candidates: Vec<PathBuf> = env::var_os("DINO_CUDA_INCLUDE")
        .map(|v| env::split_paths(&v).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("include"));
    }
    candidates.push("/usr/local/cuda/include".into());
    // The nvidia-* wheels torch depends on, beside torch in site-packages.
    if let Some(nvidia) = lib
        .parent()
        .and_then(Path::parent)
        .map(|sp| sp.join("nvidia"))
    {
        for entry in std::fs::read_dir(&nvidia).into_iter().flatten().flatten() {
            candidates.push(entry.path().join("include"));
            candidates.push(entry.path().join("include/cccl"));
        }
    }
    candidates.push("/usr/include".into());
    let mut dirs = Vec::new();
    for header in CUDA_HEADERS {
        let Some(dir) = candidates.iter().find(|d| d.join(header).exists()) else {
            return Err(format!(
                "{header} not found for ProcessGroupNCCL: point CUDA_HOME at a CUDA toolkit, \
                 or DINO_CUDA_INCLUDE at the folders holding NCCL's and CUDA's headers"
            ));
        };
        if !dirs.contains(dir) {
            dirs.push(dir.clone());
        }
    }
    Ok(dirs)
}
