//! `dino-train attention` driven as a user would, on the real photos (RGB, grayscale and
//! RGBA files), with seeded random checkpoints made here. The per-head maps it writes
//! (`attention.npy`, before upsampling) are compared with an explicit
//! softmax(QK^T/sqrt(d)) of the last block computed by PyTorch/timm
//! (`tests/python/vit_parity.py forward`) on the very crop the command saved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use dino_core::VitConfig;
use dino_core::config::{IMAGENET_MEAN, IMAGENET_STD};
use dino_core::image_io::load_rgb;
use dino_core::preprocess::normalize_into;
use dino_core::st::{RawTensor, StFile, write_atomic};
use dino_core::testing::assert_close;
use dino_models::VisionTransformer;
use dino_models::io::save_backbone;
use dino_tests::{bin, data_dir, run_python, scratch};
use tch::{Device, nn};

const PHOTOS: [&str; 7] = [
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "horse",
    "motorcycle_left",
    "rocket",
];

/// A seeded random backbone of `arch`/`patch`, saved as a dino-rs backbone file.
fn checkpoint(dir: &Path, arch: &str, patch: usize) -> PathBuf {
    tch::manual_seed(11);
    let cfg = VitConfig::preset(arch, patch).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let _vit = VisionTransformer::new(&vs.root(), &cfg);
    let path = dir.join(format!("{arch}-{patch}.safetensors"));
    save_backbone(&path, &vs, &cfg, None).unwrap();
    path
}

fn attention(args: &[&str]) -> std::process::Output {
    let out = Command::new(bin("dino-train"))
        .arg("attention")
        .args(args)
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `(shape, values)` of a little-endian f32 `.npy`.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"));
    let tuple = header.split('(').nth(1).unwrap().split(')').next().unwrap();
    let shape = tuple
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().parse().unwrap())
        .collect();
    let values = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, values)
}

/// Checks one image's folder; returns the per-head maps `[heads, rows * cols]`.
fn check_folder(dir: &Path, heads: usize, patch: u32) -> Vec<f32> {
    let crop = load_rgb(&dir.join("img.png")).unwrap();
    let (w, h) = crop.dimensions();
    let mut names: Vec<String> = vec!["attn-mean.png".into(), "mask-mean.png".into()];
    for j in 0..heads {
        names.push(format!("attn-head{j}.png"));
        names.push(format!("mask-head{j}.png"));
    }
    for n in &names {
        let img = load_rgb(&dir.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(img.dimensions(), (w, h), "{}", dir.join(n).display());
    }
    assert!(w % patch == 0 && h % patch == 0, "crop {w}x{h}");
    let (shape, v) = read_npy(&dir.join("attention.npy"));
    assert_eq!(
        shape,
        vec![heads, (h / patch) as usize, (w / patch) as usize]
    );
    let n = v.len() / heads;
    for (j, head) in v.chunks_exact(n).enumerate() {
        assert!(
            head.iter().all(|&a| a >= 0.0),
            "head {j} has negative values"
        );
        let sum: f32 = head.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "head {j} sums to {sum}");
    }
    v
}

/// The explicit-softmax reference of the crop the command saved: `attn[0, :, 0, 1:]`,
/// renormalised over the patches.
fn reference(dir: &Path, weights: &Path) -> Vec<f32> {
    let crop = load_rgb(&dir.join("img.png")).unwrap();
    let (w, h) = crop.dimensions();
    let mut chw = vec![0f32; 3 * (w * h) as usize];
    normalize_into(&crop, &IMAGENET_MEAN, &IMAGENET_STD, &mut chw);
    let input = dir.join("input.safetensors");
    let out = dir.join("ref.safetensors");
    let mut m = BTreeMap::new();
    m.insert(
        "image".to_string(),
        RawTensor::from_f32(vec![1, 3, h as usize, w as usize], &chw),
    );
    write_atomic(&input, &m, Default::default()).unwrap();
    run_python(
        "tests/python/vit_parity.py",
        &[
            "forward",
            "--weights",
            s(weights),
            "--input",
            s(&input),
            "--out",
            s(&out),
        ],
    );
    let f = StFile::read(&out).unwrap();
    let attn = f.tensors["attn"].to_f32(&out, "attn").unwrap();
    let shape = &f.tensors["attn"].shape;
    let (heads, t) = (shape[1], shape[2]);
    (0..heads)
        .flat_map(|j| {
            let row = &attn[j * t * t + 1..j * t * t + t];
            let sum: f32 = row.iter().sum();
            row.iter().map(move |a| a / sum).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn photos_folder_writes_every_map_and_matches_explicit_softmax() {
    let dir = scratch("attention-photos");
    let weights = checkpoint(&dir, "vit_tiny", 16);
    let out = dir.join("out");
    // 72 is no multiple of 16: sides are cropped (e.g. chelsea 451x300 -> 108x72 -> 96x64)
    // and the 14x14 position embeddings interpolated to non-square grids.
    let o = attention(&[
        "--checkpoint",
        s(&weights),
        "--image",
        s(&data_dir().join("photos")),
        "--img-size",
        "72",
        "--device",
        "cpu",
        "--out",
        s(&out),
        "--quiet",
    ]);
    assert!(o.status.success());
    for name in PHOTOS {
        check_folder(&out.join(name), 3, 16);
    }
    let chelsea = out.join("chelsea");
    assert_eq!(
        load_rgb(&chelsea.join("img.png")).unwrap().dimensions(),
        (96, 64)
    );
    for name in ["chelsea", "camera", "horse"] {
        let d = out.join(name);
        let ours = check_folder(&d, 3, 16);
        assert_close(&ours, &reference(&d, &weights), 1e-5, 1e-4);
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn patch_8_single_image_and_threshold() {
    let dir = scratch("attention-p8");
    let weights = checkpoint(&dir, "vit_tiny", 8);
    let out = dir.join("out");
    let o = attention(&[
        "--checkpoint",
        s(&weights),
        "--image",
        s(&data_dir().join("photos/rocket.jpg")),
        "--img-size",
        "60",
        "--threshold",
        "0.9",
        "--device",
        "cpu",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success());
    let d = out.join("rocket");
    // 640x427 -> 89x60 -> 88x56.
    assert_eq!(load_rgb(&d.join("img.png")).unwrap().dimensions(), (88, 56));
    let ours = check_folder(&d, 3, 8);
    assert_close(&ours, &reference(&d, &weights), 1e-5, 1e-4);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = scratch("attention-errors");
    let weights = checkpoint(&dir, "vit_tiny", 16);
    let photos = data_dir().join("photos");
    let o = attention(&[
        "--checkpoint",
        s(&weights),
        "--image",
        s(&photos),
        "--threshold",
        "1.5",
        "--out",
        s(&dir),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--threshold"));
    let o = attention(&[
        "--checkpoint",
        s(&weights),
        "--image",
        s(&dir.join("missing.png")),
        "--out",
        s(&dir),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.png"));
    let o = attention(&[
        "--checkpoint",
        s(&dir.join("none.safetensors")),
        "--image",
        s(&photos),
        "--out",
        s(&dir),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("none.safetensors"));
    std::fs::remove_dir_all(dir).ok();
}
