//! The runtime-only tarball of `make runtime-dist` (`scripts/runtime_dist.sh`, with the
//! tested build's binaries unless `DINO_RUNTIME_TARBALL` names a tarball) on a clean root:
//! unpacked into a chroot that holds only the files `ldd` lists for dino-run, dino-export and
//! libonnxruntime (no Python, no venv, no torch, not even /proc), where it exports the shipped
//! teacher, indexes a few CIFAR-10 images, classifies and embeds one; the model and the
//! embedding equal the normal build's (dino-run with the venv's library). Needs root and
//! `chroot`; skipped with a message otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use dino_core::testing::assert_close;
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

/// The tarball to test and its folder name: `DINO_RUNTIME_TARBALL` (what
/// `make runtime-dist` wrote), else one made in `dir` from the tested build's binaries.
fn tarball(dir: &Path) -> (PathBuf, String) {
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
    (tarball, name)
}

/// The clean root: the tarball unpacked under /opt (checked for its files), the libraries
/// `ldd` names and the loader; returns the unpacked folder.
fn clean_root(croot: &Path, tarball: &Path, name: &str) -> PathBuf {
    let opt = croot.join("opt");
    std::fs::create_dir_all(&opt).unwrap();
    let mut tar = Command::new("tar");
    tar.arg("-xzf").arg(tarball).arg("-C").arg(&opt);
    output_ok(&mut tar, "tar -xzf");
    let dist = opt.join(name);
    for f in [
        "dino-run",
        "dino-export",
        "libonnxruntime.so.1.31.1",
        "README.txt",
        "licenses/dino-rs-LICENSE.txt",
        "licenses/onnxruntime-LICENSE.txt",
    ] {
        assert!(dist.join(f).is_file(), "the tarball lacks {f}");
    }
    let needed = ldd_files(&[
        dist.join("dino-run"),
        dist.join("dino-export"),
        dist.join("libonnxruntime.so.1.31.1"),
    ]);
    for lib in &needed {
        let to = inside(croot, lib);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    }
    eprintln!("{} libraries from ldd: {needed:?}", needed.len());
    dist
}

/// The shipped teacher, 4 training images of each of [`CLASSES`] and one test image (a
/// ship), under `work`.
fn stage_data(work: &Path) {
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
}

/// No Python, no venv, no torch anywhere in the root.
fn assert_no_python(croot: &Path) {
    assert!(!croot.join("usr/bin/python3").exists());
    assert!(!croot.join("usr/bin/python").exists());
    let files = all_files(croot);
    for f in &files {
        let n = f.file_name().unwrap().to_string_lossy().to_lowercase();
        assert!(
            !n.contains("torch") && !n.contains("python"),
            "{} in the chroot",
            f.display()
        );
    }
    eprintln!("chroot: {} files", files.len());
}

/// The classes of a `classify --json` answer, best first.
fn top_classes(out: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(out).unwrap_or_else(|e| panic!("classify: not JSON ({e}): {out}"));
    let top = v[0]["top"]
        .as_array()
        .expect("classify answers a `top` list");
    assert_eq!(top.len(), CLASSES.len(), "{out}");
    top.iter()
        .map(|t| t["class"].as_str().unwrap().to_string())
        .collect()
}

const EMBED: [&str; 6] = ["--threads", "2", "embed", "--raw", "--json", "--model"];
const CLASSIFY: [&str; 5] = ["--threads", "2", "classify", "--json", "--model"];

/// Runs the unpacked tools inside the clean root, with an empty environment.
struct Chroot {
    chroot: PathBuf,
    croot: PathBuf,
    bin_in: String,
}

impl Chroot {
    fn run(&self, tool: &str, args: &[&str]) -> String {
        let mut c = Command::new(&self.chroot);
        c.env_clear()
            .env("HOME", "/work")
            .arg(&self.croot)
            .arg(format!("{}/{tool}", self.bin_in))
            .args(args);
        run_ok(&mut c, &format!("{tool} {args:?} in the chroot"))
    }

    /// Export, index, classify and embed: the top classes and the embedding.
    fn export_index_classify_embed(&self) -> (Vec<String>, Vec<f32>) {
        let out = self.run(
            "dino-export",
            &[
                "--checkpoint",
                "/work/teacher.safetensors",
                "--to",
                "/work/model.onnx",
            ],
        );
        eprintln!("{out}");
        let model = ["/work/model.onnx"];
        let index = [
            "--threads",
            "2",
            "index",
            "--model",
            model[0],
            "--images",
            "/work/images",
        ];
        self.run(
            "dino-run",
            &[&index[..], &["--out", "/work/gallery.dgal"]].concat(),
        );
        let query = ["--gallery", "/work/gallery.dgal", "/work/query.jpg"];
        let top = top_classes(&self.run("dino-run", &[&CLASSIFY[..], &model, &query].concat()));
        let embed = self.run(
            "dino-run",
            &[&EMBED[..], &model, &["/work/query.jpg"]].concat(),
        );
        let v: serde_json::Value = serde_json::from_str(&embed).expect("embed JSON");
        (top, floats(&v[0]["embedding"]))
    }
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
    let (tarball, name) = tarball(&dir);
    let croot = dir.join("root");
    clean_root(&croot, &tarball, &name);
    let work = croot.join("work");
    stage_data(&work);
    assert_no_python(&croot);
    let jail = Chroot {
        chroot,
        croot: croot.clone(),
        bin_in: format!("/opt/{name}"),
    };
    let (chroot_top, chroot_embed) = jail.export_index_classify_embed();
    assert!(work.join("gallery.dgal").is_file());

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
    let (model, query) = (work.join("model.onnx"), work.join("query.jpg"));
    let mut cmd = dino_run(&dir);
    cmd.args(EMBED).arg(&model).arg(&query);
    let host_embed = floats(&json(&output_ok(&mut cmd, "dino-run embed"))[0]["embedding"]);
    assert!(!host_embed.is_empty() && host_embed.iter().any(|x| *x != 0.0));
    // Same library version, same model, same pixels: equal within float noise.
    assert_close(&chroot_embed, &host_embed, 1e-6, 0.0);

    let mut cmd = dino_run(&dir);
    cmd.args(CLASSIFY)
        .arg(&model)
        .arg("--gallery")
        .arg(work.join("gallery.dgal"))
        .arg(&query);
    assert_eq!(
        chroot_top,
        top_classes(&run_ok(&mut cmd, "dino-run classify"))
    );
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
    let mut cmd = Command::new(&exe);
    cmd.env_remove("ORT_DYLIB_PATH")
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .args(["embed", "--model"])
        .arg(root().join("demo/teacher.safetensors"))
        .arg(root().join("demo/data/photos/chelsea.png"));
    // A child forked by the test running beside this one may hold the copy's write handle
    // until its exec closes it ("text file busy"): retry for up to 10 s.
    let mut tries = 0;
    let o = loop {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            r => break r.expect("run the copy of dino-run"),
        }
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("{}: cannot load ONNX Runtime", fake.display())),
        "dino-run did not try the library beside it first:\n{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
