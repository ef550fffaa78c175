//! Shared plumbing for the cross-crate tests in `tests/`: where the workspace, the data,
//! the built binaries and the reference Python are. Numeric comparison is
//! `dino_core::testing::assert_close`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// `../shared/data` beside the repository: the real images used by tests and benchmarks.
pub fn data_dir() -> PathBuf {
    root().join("../shared/data")
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

/// The Python of the project's venv (`$PYTHON`, set by the Makefile), else `python3`.
pub fn python() -> Command {
    Command::new(std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into()))
}

/// Runs a reference script from `tests/python/` and panics with its output on failure.
pub fn run_python(script: &str, args: &[&str]) -> Output {
    let path = root().join("tests/python").join(script);
    let out = python()
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python for {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The shared libraries a binary names as dynamic dependencies (`readelf -d` NEEDED).
pub fn dynamic_deps(exe: &Path) -> Vec<String> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(exe)
        .output()
        .expect("readelf (binutils) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<String> = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1))
        .map(|l| l.trim_end_matches(']').to_string())
        .collect();
    assert!(
        !needed.is_empty(),
        "readelf found no NEEDED entries:\n{text}"
    );
    needed
}

/// A tiny model and crop setup that trains in seconds on 2 CPU cores (`dino-train` options).
pub const TINY_CONFIG: &str = r#"
arch = "custom"
patch_size = 4
embed_dim = 32
depth = 1
num_heads = 2
img_size = 32
out_dim = 256
head_hidden_dim = 64
head_bottleneck_dim = 32
global_crop_size = 32
local_crop_size = 16
local_crops_number = 2
batch_size = 16
epochs = 2
warmup_epochs = 1
num_workers = 2
log_freq = 1
mean = [0.4914, 0.4822, 0.4465]
std = [0.2470, 0.2435, 0.2616]
"#;

/// Writes [`TINY_CONFIG`] followed by `extra` TOML lines to `dir/tiny.toml`.
pub fn write_tiny_config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(&p, format!("{TINY_CONFIG}{extra}")).expect("write tiny.toml");
    p
}

/// The first `per_class` images (sorted by name) of each class of the CIFAR-10 subset's
/// `split` (`train` or `test`), copied into the fresh ImageFolder `dir/<split>`.
pub fn cifar_subset(dir: &Path, split: &str, per_class: usize) -> PathBuf {
    let sorted = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        v.sort();
        v
    };
    let dst = dir.join(split);
    for class in sorted(&data_dir().join("cifar10-mini").join(split)) {
        let out = dst.join(class.file_name().expect("class folder name"));
        std::fs::create_dir_all(&out).expect("create class folder");
        for f in sorted(&class).into_iter().take(per_class) {
            std::fs::copy(&f, out.join(f.file_name().expect("file name"))).expect("copy image");
        }
    }
    dst
}

/// Runs `cmd` and returns its stdout; on failure panics naming `what`, with both outputs.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    String::from_utf8_lossy(&output_ok(cmd, what).stdout).into_owned()
}

/// [`run_ok`] keeping the whole `Output` (for byte-exact stdout).
pub fn output_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `dino-train train --quiet --config <config> --data_path <data> --output_dir <out> <extra>`.
pub fn dino_train(config: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(bin("dino-train"))
        .args(["train", "--quiet", "--config"])
        .arg(config)
        .arg("--data_path")
        .arg(data)
        .arg("--output_dir")
        .arg(out)
        .args(extra)
        .output()
        .expect("run dino-train")
}
