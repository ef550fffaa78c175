//! Fixtures of the `export_*` tests: seeded weights and reference outputs from
//! `tests/python/export_ref.py` (and `linear_ref.py` for linear probes), and the built
//! `dino-export` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::paths::{bin, data_dir, s};
use crate::run::{output_ok, run_python};

/// The export reference script, for [`run_python`].
pub const REF: &str = "tests/python/export_ref.py";

/// Seeded official-key weights with dino-rs metadata, at `img` pixels.
pub fn weights(dir: &Path, arch: &str, patch: usize, img: usize, extra: &[&str]) -> PathBuf {
    let mut w = weights_each(dir, arch, &[patch], img, extra);
    w.remove(0)
}

/// [`weights`] at each of `patches`, from one Python process (its start, torch's import,
/// is most of the time of a small model).
pub fn weights_each(
    dir: &Path,
    arch: &str,
    patches: &[usize],
    img: usize,
    extra: &[&str],
) -> Vec<PathBuf> {
    let name = |p: &str| dir.join(format!("{arch}-p{p}-{img}.safetensors"));
    let ps: Vec<String> = patches.iter().map(|p| p.to_string()).collect();
    let (i, template) = (img.to_string(), s(&name("{patch}")));
    let mut args = vec!["weights", "--arch", arch, "--patch"];
    args.extend(ps.iter().map(String::as_str));
    args.extend(["--img-size", &i, "--seed", "1", "--out", &template]);
    args.extend(extra);
    run_python(REF, &args);
    ps.iter().map(|p| name(p)).collect()
}

/// Runs `dino-export` with `args`; returns the output whatever the exit status.
pub fn dino_export(args: &[&str]) -> Output {
    Command::new(bin("dino-export"))
        .args(args)
        .output()
        .expect("run dino-export")
}

/// Runs `dino-export`, panics with its output unless it succeeds; returns stdout + stderr.
pub fn export_ok(args: &[&str]) -> String {
    let mut cmd = Command::new(bin("dino-export"));
    let o = output_ok(cmd.args(args), &format!("dino-export {args:?}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `dino-export`, expects failure, returns stderr.
pub fn export_err(args: &[&str]) -> String {
    let o = dino_export(args);
    assert!(
        !o.status.success(),
        "dino-export {args:?} should have failed:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Outputs of one `compare` run: reference and ONNX Runtime values by output name.
pub struct Compared {
    dir: PathBuf,
    manifest: serde_json::Value,
}

impl Compared {
    /// The `manifest.json` a reference script wrote into `dir`.
    fn read(dir: PathBuf) -> Self {
        let manifest = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap())
            .expect("manifest");
        Self { dir, manifest }
    }

    pub fn has(&self, name: &str) -> bool {
        self.manifest.get(name).is_some()
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.manifest[name]["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|v| v.as_u64().expect("dim") as usize)
            .collect()
    }

    /// `tag` is `ref`, `ort` or `ort_fp16`.
    pub fn values(&self, name: &str, tag: &str) -> Vec<f32> {
        let file = self.manifest[name][tag]
            .as_str()
            .unwrap_or_else(|| panic!("no {tag} values for {name}"));
        let bytes = std::fs::read(self.dir.join(file)).expect("read values");
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    pub fn batch(&self) -> usize {
        self.manifest["batch"].as_u64().expect("batch") as usize
    }

    /// The class names of a `linear_ref.py` manifest.
    pub fn classes(&self) -> Vec<String> {
        let c = self.manifest["classes"].as_array().expect("classes");
        c.iter()
            .map(|v| v.as_str().expect("name").to_string())
            .collect()
    }
}

/// Runs the PyTorch reference and ONNX Runtime on the photos at `size` pixels.
pub fn compare(
    dir: &Path,
    weights: &Path,
    onnx: &Path,
    fp16: Option<&Path>,
    size: usize,
    tag: &str,
) -> Compared {
    let out = dir.join(format!("cmp-{tag}"));
    let sz = size.to_string();
    let (w, m, o, i) = (s(weights), s(onnx), s(&out), s(&data_dir().join("photos")));
    let mut args = vec![
        "compare",
        "--weights",
        &w,
        "--onnx",
        &m,
        "--images",
        &i,
        "--img-size",
        &sz,
        "--out",
        &o,
    ];
    let f16 = fp16.map(s);
    if let Some(f) = &f16 {
        args.extend(["--onnx-fp16", f]);
    }
    run_python(REF, &args);
    Compared::read(out)
}

/// Runs `tests/python/linear_ref.py compare`: the reference logits of the probe `head`
/// over `weights` and ONNX Runtime's, on the images of `images` at `size` pixels.
pub fn compare_linear(
    dir: &Path,
    (weights, head): (&Path, &Path),
    (onnx, fp16): (&Path, Option<&Path>),
    images: &Path,
    size: usize,
    tag: &str,
) -> Compared {
    let out = dir.join(format!("cmp-linear-{tag}"));
    let sz = size.to_string();
    let (w, h, m, o, i) = (s(weights), s(head), s(onnx), s(&out), s(images));
    let mut args = vec![
        "compare",
        "--weights",
        &w,
        "--head",
        &h,
        "--onnx",
        &m,
        "--images",
        &i,
        "--img-size",
        &sz,
        "--out",
        &o,
    ];
    let f16 = fp16.map(s);
    if let Some(f) = &f16 {
        args.extend(["--onnx-fp16", f]);
    }
    run_python("tests/python/linear_ref.py", &args);
    Compared::read(out)
}
