//! Running the reference Python and the built binaries, panicking with their output when
//! they fail.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use crate::paths::root;

/// The Python of the project's venv (`$PYTHON`, set by the Makefile and `scripts/env.sh`),
/// else `python3`.
pub fn python() -> Command {
    Command::new(std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into()))
}

/// Runs the reference script `script` (a path from the workspace root, e.g.
/// `tests/python/runtime_ref.py`) with `args`; panics with its output on failure. The
/// scripts find `python/dino_ref` from their own location.
pub fn run_python<S: AsRef<OsStr>>(script: &str, args: &[S]) -> Output {
    let mut cmd = python();
    cmd.arg(root().join(script)).args(args);
    output_ok(&mut cmd, script)
}

/// Runs `cmd` and returns its stdout; on failure panics naming `what`, with both outputs.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    String::from_utf8_lossy(&output_ok(cmd, what).stdout).into_owned()
}

/// [`run_ok`] keeping the whole `Output` (for byte-exact stdout).
pub fn output_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({:?}): {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
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
