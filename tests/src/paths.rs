//! Where things are: the workspace, the shared data, the built binaries, scratch folders.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The real images used by tests and benchmarks: `$DINO_SHARED_DATA` when set (a test
/// binary carried to another machine), else `../shared/data` beside the repository.
pub fn data_dir() -> PathBuf {
    std::env::var_os("DINO_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"))
}

/// The real photos (RGB, grayscale, RGBA; PNG and JPEG), sorted by name.
pub fn photos() -> Vec<PathBuf> {
    sorted_files(&data_dir().join("photos"))
}

/// The entries of `dir`, sorted by name; panics naming `dir` when it cannot be read.
pub fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    v.sort();
    v
}

/// A built binary of the workspace (the Makefile builds them before `cargo test`).
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let p = target.join(profile).join(name);
    assert!(
        p.exists(),
        "{} is not built: run `make test` (or cargo build --release --workspace first)",
        p.display()
    );
    p
}

/// A fresh, empty scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dino-rs-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch folder");
    d
}

/// A path as a command-line argument (test paths are UTF-8).
pub fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}
