//! The runtime-only tarball of `make runtime-dist` (`scripts/runtime_dist.sh`, with the
//! tested build's binaries unless `DINO_RUNTIME_TARBALL` names a tarball) on a clean root:
//! unpacked into a chroot that holds only the files `ldd` lists for dino-run, dino-export and
//! libonnxruntime (no Python, no venv, no torch, not even /proc), where it exports the shipped
//! teacher, indexes a few CIFAR-10 images, classifies and embeds one; the model and the
//! embedding equal the normal build's (dino-run with the venv's library). Needs root and
//! `chroot`; skipped with a message otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use dino_tests::runtime::{dino_run, floats, json};
use dino_tests::{bin, data_dir, output_ok, root, run_ok, s, scratch, sorted_files};

const CLASSES: [&str; 3] = ["airplane", "cat", "ship"];

/// The `chroot` binary when running as root, else why the test cannot run.
fn chroot_or_skip() -> Result<PathBuf, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("id -u: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not running as root".into());
    }
    ["/usr/sbin/chroot", "/usr/bin/chroot", "/sbin/chroot"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| "no chroot binary in /usr/sbin, /usr/bin or /sbin".into())
}

/// The absolute paths `ldd` lists for `files` (libraries and the dynamic loader).
fn ldd_files(files: &[PathBuf]) -> Vec<PathBuf> {
    let text = run_ok(Command::new("ldd").args(files), "ldd");
    let mut libs: Vec<PathBuf> = text
        .lines()
        .filter(|l| !l.trim_end().ends_with(':'))
        .flat_map(|l| l.split_whitespace())
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    libs.sort();
    libs.dedup();
    assert!(
        libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
        "ldd listed no libc:\n{text}"
    );
    libs
}

/// Every file under `dir` (recursively).
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("directory entry").path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The path `p` of the host inside the chroot at `croot`.
fn inside(croot: &Path, p: &Path) -> PathBuf {
    croot.join(p.strip_prefix("/").expect("absolute path"))
}

#[test]
fn runtime_tarball_runs_in_a_chroot_without_python() {
    let chroot = match chroot_or_skip() {
        Ok(c) => c,
        Err(why) => {
            eprintln!(
                "runtime_dist::runtime_tarball_runs_in_a_chroot_without_python skipped: {why}"
            );
            return;
        }
    };
    let dir = scratch("runtime-dist");
    // `DINO_RUNTIME_TARBALL`: the tarball `make runtime-dist` wrote; else one made here
    // from the tested build's binaries.
    let tarball = match std::env::var_os("DINO_RUNTIME_TARBALL") {
        Some(t) => PathBuf::from(t),
        None => {
            let built = bin("dino-run")
                .parent()
                .expect("target folder")
                .to_path_buf();
            let mut script = Command::new(root().join("scripts/runtime_dist.sh"));
            script.args(["--prebuilt", &s(&built), "--out", &s(&dir.join("dist"))]);
            PathBuf::from(run_ok(&mut script, "scripts/runtime_dist.sh").trim())
        }
    };
    assert!(tarball.is_file(), "{} was not written", tarball.display());
    let name = tarball
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".tar.gz")
        .to_string();
    assert!(name.starts_with("dino-rs-runtime-"), "{name}");

    // The clean root: the tarball under /opt, the libraries ldd names, the loader.
    let croot = dir.join("root");
    let opt = croot.join("opt");
    std::fs::create_dir_all(&opt).unwrap();
    let mut tar = Command::new("tar");
    tar.arg("-xzf").arg(&tarball).arg("-C").arg(&opt);
    output_ok(&mut tar, "tar -xzf");
    let dist = opt.join(&name);
    for f in [
        "dino-run",
        "dino-export",
        "libonnxruntime.so.1.31.1",
        "README.txt",
    ] {
        assert!(dist.join(f).is_file(), "the tarball lacks {f}");
    }
    for f in ["dino-rs-LICENSE.txt", "onnxruntime-LICENSE.txt"] {
        assert!(
            dist.join("licenses").join(f).is_file(),
            "the tarball lacks licenses/{f}"
        );
    }
    let needed = ldd_files(&[
        dist.join("dino-run"),
        dist.join("dino-export"),
        dist.join("libonnxruntime.so.1.31.1"),
    ]);
    for lib in &needed {
        let to = inside(&croot, lib);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    }

    // Data: the shipped teacher, 4 training images of 3 classes, one test image.
    let work = croot.join("work");
    let cifar = data_dir().join("cifar10-mini");
    for class in CLASSES {
        let to = work.join("images").join(class);
        std::fs::create_dir_all(&to).unwrap();
        for img in sorted_files(&cifar.join("train").join(class))
            .iter()
            .take(4)
        {
            std::fs::copy(img, to.join(img.file_name().unwrap())).unwrap();
        }
    }
    let query = sorted_files(&cifar.join("test/ship"))[0].clone();
    std::fs::copy(&query, work.join("query.jpg")).unwrap();
    std::fs::copy(
        root().join("demo/teacher.safetensors"),
        work.join("teacher.safetensors"),
    )
    .unwrap();

    // No Python, no venv, no torch: the root holds the tarball, the libraries and the data.
    assert!(!croot.join("usr/bin/python3").exists());
    assert!(!croot.join("usr/bin/python").exists());
    let files = all_files(&croot);
    for f in &files {
        let n = f.file_name().unwrap().to_string_lossy().to_lowercase();
        assert!(
            !n.contains("torch") && !n.contains("python"),
            "{} in the chroot",
            f.display()
        );
    }
    eprintln!(
        "chroot: {} files ({} libraries from ldd: {needed:?})",
        files.len(),
        needed.len()
    );

    let bin_in = format!("/opt/{name}");
    let in_chroot = |args: &[&str], what: &str| {
        let mut c = Command::new(&chroot);
        c.env_clear()
            .env("HOME", "/work")
            .arg(&croot)
            .arg(format!("{bin_in}/{}", args[0]))
            .args(&args[1..]);
        run_ok(&mut c, &format!("{what} in the chroot"))
    };
    let out = in_chroot(
        &[
            "dino-export",
            "--checkpoint",
            "/work/teacher.safetensors",
            "--to",
            "/work/model.onnx",
        ],
        "dino-export",
    );
    eprintln!("{out}");
    in_chroot(
        &[
            "dino-run",
            "--threads",
            "2",
            "index",
            "--model",
            "/work/model.onnx",
            "--images",
            "/work/images",
            "--out",
            "/work/gallery.dgal",
        ],
        "dino-run index",
    );
    assert!(work.join("gallery.dgal").is_file());
    let classify = |out: String| {
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("classify: not JSON ({e}): {out}"));
        let top = v[0]["top"]
            .as_array()
            .expect("classify answers a `top` list");
        assert_eq!(top.len(), CLASSES.len(), "{out}");
        top.iter()
            .map(|t| t["class"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let chroot_top = classify(in_chroot(
        &[
            "dino-run",
            "--threads",
            "2",
            "classify",
            "--model",
            "/work/model.onnx",
            "--gallery",
            "/work/gallery.dgal",
            "--json",
            "/work/query.jpg",
        ],
        "dino-run classify",
    ));
    let embed_args = ["--threads", "2", "embed", "--raw", "--json", "--model"];
    let mut a = vec!["dino-run"];
    a.extend(embed_args);
    a.extend(["/work/model.onnx", "/work/query.jpg"]);
    let chroot_embed: serde_json::Value =
        serde_json::from_str(&in_chroot(&a, "dino-run embed")).expect("embed JSON");

    // The normal build with the venv's ONNX Runtime, on the same files.
    let host_model = dir.join("host.onnx");
    let mut export = Command::new(bin("dino-export"));
    export
        .arg("--checkpoint")
        .arg(root().join("demo/teacher.safetensors"))
        .arg("--to")
        .arg(&host_model);
    output_ok(&mut export, "dino-export");
    assert!(
        std::fs::read(&host_model).unwrap() == std::fs::read(work.join("model.onnx")).unwrap(),
        "the chroot's dino-export wrote another model than target/release/dino-export"
    );
    let mut cmd = dino_run(&dir);
    cmd.args(embed_args)
        .arg(work.join("model.onnx"))
        .arg(work.join("query.jpg"));
    let host_embed = json(&output_ok(&mut cmd, "dino-run embed"));
    let (ours, want) = (
        floats(&chroot_embed[0]["embedding"]),
        floats(&host_embed[0]["embedding"]),
    );
    assert_eq!(ours.len(), want.len());
    assert!(!ours.is_empty() && ours.iter().any(|x| *x != 0.0));
    let worst = ours
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "embedding: {} values, max |chroot - host| = {worst:e}",
        ours.len()
    );
    assert!(worst <= 1e-6, "max abs difference {worst}");

    let mut cmd = dino_run(&dir);
    cmd.args(["--threads", "2", "classify", "--json", "--model"])
        .arg(work.join("model.onnx"))
        .arg("--gallery")
        .arg(work.join("gallery.dgal"))
        .arg(work.join("query.jpg"));
    let host_top = classify(run_ok(&mut cmd, "dino-run classify"));
    assert_eq!(chroot_top, host_top);
    eprintln!("classify: {chroot_top:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The library next to the binary wins over the build-time venv's: a copy of dino-run with a
/// file that is no ONNX Runtime beside it fails on that file, while the venv's library is
/// still in place.
#[test]
fn library_next_to_the_binary_comes_before_the_build_venv() {
    let dir = scratch("runtime-dist-order");
    let exe = dir.join("dino-run");
    std::fs::copy(bin("dino-run"), &exe).unwrap();
    let fake = dir.join("libonnxruntime.so.1.31.1");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let o = Command::new(&exe)
        .env_remove("ORT_DYLIB_PATH")
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .args(["embed", "--model"])
        .arg(root().join("demo/teacher.safetensors"))
        .arg(root().join("demo/data/photos/chelsea.png"))
        .output()
        .expect("run the copy of dino-run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("{}: cannot load ONNX Runtime", fake.display())),
        "dino-run did not try the library beside it first:\n{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
