//! `dino-train` driven on a tiny configuration and a few CIFAR-10 images.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::paths::{bin, data_dir, sorted_files};

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
    let dst = dir.join(split);
    for class in sorted_files(&data_dir().join("cifar10-mini").join(split)) {
        let out = dst.join(class.file_name().expect("class folder name"));
        std::fs::create_dir_all(&out).expect("create class folder");
        for f in sorted_files(&class).into_iter().take(per_class) {
            std::fs::copy(&f, out.join(f.file_name().expect("file name"))).expect("copy image");
        }
    }
    dst
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
