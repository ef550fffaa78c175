//! JPEG pixels identical to Pillow's: every tool decodes through `dino_core::image_io`,
//! and its pixels must equal `Image.open(f).convert("RGB")` (the official pipeline's
//! loader, libjpeg-turbo inside Pillow) byte for byte on the shared photos, the CIFAR
//! subset and Imagenette, so that embeddings of JPEG files match the Python pipeline as
//! PNG files do. Compared by SHA-256 of the RGB bytes (`tests/python/pillow_pixels.py`).

use std::path::{Path, PathBuf};

use dino_core::image_io::load_rgb;
use dino_tests::{data_dir, run_python, s, scratch};
use sha2::{Digest, Sha256};

/// Every JPEG below `dir`, sorted, at most `limit`.
fn jpegs(dir: &Path, limit: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| {
                matches!(x.to_string_lossy().to_lowercase().as_str(), "jpg" | "jpeg")
            }) {
                out.push(p);
            }
        }
    }
    out.sort();
    // Spread the sample over all classes.
    let step = out.len().div_ceil(limit).max(1);
    out.into_iter().step_by(step).collect()
}

#[test]
fn decoded_jpeg_pixels_equal_pillows() {
    let data = data_dir();
    let mut files = jpegs(&data.join("photos"), 100);
    files.extend(jpegs(&data.join("cifar10-mini"), 600));
    files.extend(jpegs(&data.join("imagenette-160"), 1200));
    assert!(files.len() > 1000, "only {} JPEGs found", files.len());
    let dir = scratch("jpeg-pillow");
    let manifest = dir.join("pillow.json");
    let mut args = vec![s(&manifest)];
    args.extend(files.iter().map(|f| s(f)));
    run_python("tests/python/pillow_pixels.py", &args);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let mut differ = Vec::new();
    for f in &files {
        let want = &m["files"][s(f)];
        let img = load_rgb(f).unwrap_or_else(|e| panic!("{e}"));
        let digest: String = Sha256::digest(img.as_raw())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let same = want["w"] == img.width()
            && want["h"] == img.height()
            && want["sha256"] == digest.as_str();
        if !same {
            differ.push(f.display().to_string());
        }
    }
    eprintln!(
        "{} JPEGs compared with Pillow, {} differ",
        files.len(),
        differ.len()
    );
    assert!(differ.is_empty(), "pixels differ from Pillow's: {differ:?}");
    std::fs::remove_dir_all(dir).ok();
}
