//! Training configuration: the official `main_dino.py` options, from a TOML file and
//! command-line flags of the same names (`--momentum_teacher 0.996`).
//!
//! Precedence: built-in defaults (the official ones), then the TOML file, then flags.
//! Unknown keys are errors in both places. The flags are generated from [`OPTIONS`], so a
//! key, its help and its parser live in one place.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use dino_core::config::{IMAGENET_MEAN, IMAGENET_STD};
use dino_core::{EvalTransform, HeadConfig, VitConfig};
use serde::{Deserialize, Serialize};

/// Every training option. Field names are the official flag names where one exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    // Model.
    pub arch: String,
    pub patch_size: usize,
    /// Width/depth/heads for `arch = "custom"` (or to override a preset).
    pub embed_dim: Option<usize>,
    pub depth: Option<usize>,
    pub num_heads: Option<usize>,
    /// Size the position embedding is learned at (defaults to `global_crop_size`).
    pub img_size: Option<usize>,
    pub out_dim: usize,
    pub norm_last_layer: bool,
    pub use_bn_in_head: bool,
    pub head_hidden_dim: usize,
    pub head_bottleneck_dim: usize,
    pub drop_path_rate: f64,
    // Teacher and loss.
    pub momentum_teacher: f64,
    pub warmup_teacher_temp: f64,
    pub teacher_temp: f64,
    pub warmup_teacher_temp_epochs: usize,
    pub student_temp: f64,
    pub center_momentum: f64,
    // Optimisation.
    pub precision: String,
    pub optimizer: String,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_epochs: usize,
    pub weight_decay: f64,
    pub weight_decay_end: f64,
    pub clip_grad: f64,
    pub freeze_last_layer: usize,
    pub batch_size: usize,
    pub epochs: usize,
    // Multi-crop.
    pub global_crops_scale: [f64; 2],
    pub local_crops_number: usize,
    pub local_crops_scale: [f64; 2],
    pub global_crop_size: usize,
    pub local_crop_size: usize,
    // Photometric strength (the paper's values by default; small images want less blur).
    pub global_blur_prob: [f64; 2],
    pub local_blur_prob: f64,
    pub blur_sigma: [f64; 2],
    pub solarization_prob: [f64; 2],
    pub mean: [f32; 3],
    pub std: [f32; 3],
    // Run.
    pub data_path: PathBuf,
    pub output_dir: PathBuf,
    pub saveckp_freq: usize,
    pub seed: u64,
    pub num_workers: usize,
    pub device: String,
    /// Where jitter/grayscale/blur/solarize/normalisation run: `auto` (the training device
    /// on CUDA, the data workers on CPU), `cpu` or `device`.
    pub photometric: String,
    /// Steps between metric read-backs (a host sync on CUDA).
    pub log_freq: usize,
    // k-NN evaluation during training (off when `knn_freq` is 0).
    pub knn_freq: usize,
    pub knn_train: Option<PathBuf>,
    pub knn_val: Option<PathBuf>,
    pub knn_k: usize,
    pub knn_temperature: f64,
    /// Shorter side before the centre crop at evaluation (default: crop * 256 / 224).
    pub knn_resize: Option<usize>,
    /// Centre-crop size at evaluation (default: `global_crop_size`).
    pub knn_crop: Option<usize>,
}

impl Default for TrainConfig {
    /// The official `main_dino.py` defaults (ViT-S/16, ImageNet normalisation).
    fn default() -> Self {
        Self {
            arch: "vit_small".into(),
            patch_size: 16,
            embed_dim: None,
            depth: None,
            num_heads: None,
            img_size: None,
            out_dim: 65536,
            norm_last_layer: true,
            use_bn_in_head: false,
            head_hidden_dim: 2048,
            head_bottleneck_dim: 256,
            drop_path_rate: 0.1,
            momentum_teacher: 0.996,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.04,
            warmup_teacher_temp_epochs: 0,
            student_temp: 0.1,
            center_momentum: 0.9,
            precision: "auto".into(),
            optimizer: "adamw".into(),
            lr: 0.0005,
            min_lr: 1e-6,
            warmup_epochs: 10,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            clip_grad: 3.0,
            freeze_last_layer: 1,
            batch_size: 64,
            epochs: 100,
            global_crops_scale: [0.4, 1.0],
            local_crops_number: 8,
            local_crops_scale: [0.05, 0.4],
            global_crop_size: 224,
            local_crop_size: 96,
            global_blur_prob: [1.0, 0.1],
            local_blur_prob: 0.5,
            blur_sigma: [0.1, 2.0],
            solarization_prob: [0.0, 0.2],
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            data_path: PathBuf::new(),
            output_dir: PathBuf::from("."),
            saveckp_freq: 20,
            seed: 0,
            num_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            device: "auto".into(),
            photometric: "auto".into(),
            log_freq: 10,
            knn_freq: 0,
            knn_train: None,
            knn_val: None,
            knn_k: 20,
            knn_temperature: 0.07,
            knn_resize: None,
            knn_crop: None,
        }
    }
}

/// `(key, help)` of every option: the source of the command-line flags.
pub const OPTIONS: &[(&str, &str)] = &[
    ("arch", "vit_tiny | vit_small | vit_base | custom"),
    ("patch_size", "patch size in pixels (4, 8, 16, ...)"),
    (
        "embed_dim",
        "token width (custom arch, or override a preset)",
    ),
    (
        "depth",
        "number of blocks (custom arch, or override a preset)",
    ),
    (
        "num_heads",
        "attention heads (custom arch, or override a preset)",
    ),
    (
        "img_size",
        "size the position embedding is learned at [default: global_crop_size]",
    ),
    ("out_dim", "prototypes of the DINO head"),
    (
        "norm_last_layer",
        "freeze the weight norm of the head's last layer at 1",
    ),
    ("use_bn_in_head", "BatchNorm in the head MLP"),
    ("head_hidden_dim", "hidden width of the head MLP"),
    ("head_bottleneck_dim", "bottleneck width of the head"),
    ("drop_path_rate", "stochastic depth rate (student only)"),
    (
        "momentum_teacher",
        "base EMA momentum of the teacher, cosine-scheduled to 1",
    ),
    (
        "warmup_teacher_temp",
        "teacher temperature at the start of its warmup",
    ),
    ("teacher_temp", "teacher temperature after warmup"),
    (
        "warmup_teacher_temp_epochs",
        "epochs of linear teacher-temperature warmup",
    ),
    ("student_temp", "student temperature"),
    ("center_momentum", "EMA momentum of the teacher centre"),
    (
        "precision",
        "auto | bf16 | fp16 | fp32 (auto: bf16 on CUDA, fp32 on CPU)",
    ),
    ("optimizer", "adamw | sgd | lars"),
    (
        "lr",
        "peak learning rate at batch 256 (scaled linearly by batch_size/256)",
    ),
    ("min_lr", "final learning rate of the cosine schedule"),
    ("warmup_epochs", "epochs of linear learning-rate warmup"),
    ("weight_decay", "initial weight decay"),
    ("weight_decay_end", "final weight decay (cosine schedule)"),
    ("clip_grad", "per-parameter gradient norm clip (0 = off)"),
    (
        "freeze_last_layer",
        "epochs during which the head's last layer is not updated",
    ),
    ("batch_size", "images per step"),
    ("epochs", "training epochs"),
    (
        "global_crops_scale",
        "area range of the 2 global crops, e.g. 0.4,1.0",
    ),
    ("local_crops_number", "number of local crops (0 = none)"),
    (
        "local_crops_scale",
        "area range of the local crops, e.g. 0.05,0.4",
    ),
    ("global_crop_size", "side of the global crops in pixels"),
    ("local_crop_size", "side of the local crops in pixels"),
    (
        "global_blur_prob",
        "Gaussian blur probability of global views 1 and 2, e.g. 1.0,0.1 (0,0 for 32x32 images)",
    ),
    (
        "local_blur_prob",
        "Gaussian blur probability of each local view",
    ),
    (
        "blur_sigma",
        "range of the blur's sigma in pixels of the crop, e.g. 0.1,2.0",
    ),
    (
        "solarization_prob",
        "solarization probability of global views 1 and 2, e.g. 0.0,0.2",
    ),
    ("mean", "normalisation mean, e.g. 0.485,0.456,0.406"),
    ("std", "normalisation std, e.g. 0.229,0.224,0.225"),
    (
        "data_path",
        "ImageFolder of training images (<root>/<class>/<image>)",
    ),
    (
        "output_dir",
        "where checkpoints, config and logs are written",
    ),
    (
        "saveckp_freq",
        "also keep checkpoint<epoch>.safetensors every this many epochs",
    ),
    (
        "seed",
        "seed of every random choice (data order, crops, init, drop-path)",
    ),
    ("num_workers", "data-loading threads"),
    (
        "device",
        "auto | cpu | cuda | cuda:N (auto: CUDA when present)",
    ),
    (
        "photometric",
        "auto | cpu | device: where colour jitter, grayscale, blur, solarize and normalisation run (auto: device on CUDA, cpu on CPU)",
    ),
    ("log_freq", "steps between metric read-backs and log lines"),
    (
        "knn_freq",
        "run k-NN evaluation every this many epochs (0 = off)",
    ),
    ("knn_train", "ImageFolder of labelled k-NN reference images"),
    ("knn_val", "ImageFolder of labelled k-NN query images"),
    ("knn_k", "neighbours of the k-NN vote"),
    ("knn_temperature", "temperature of the k-NN vote weights"),
    (
        "knn_resize",
        "k-NN eval: shorter side before the centre crop [default: crop*256/224]",
    ),
    (
        "knn_crop",
        "k-NN eval: centre-crop size [default: global_crop_size]",
    ),
];

impl TrainConfig {
    /// Defaults, overlaid by the TOML file (if any), overlaid by `flags` (`key`, text).
    pub fn resolve(file: Option<&Path>, flags: &[(String, String)]) -> Result<Self> {
        let mut table = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            table = text
                .parse::<toml::Table>()
                .with_context(|| format!("{}: not valid TOML", path.display()))?;
        }
        let defaults = toml::Table::try_from(Self::default()).expect("defaults serialise");
        for (key, text) in flags {
            let value = parse_flag(key, text, defaults.get(key))?;
            table.insert(key.clone(), value);
        }
        let where_ = file.map_or("command line".to_string(), |p| p.display().to_string());
        let cfg: Self = toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("invalid configuration ({where_})"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.epochs == 0 {
            bail!("batch_size and epochs must be positive");
        }
        if !["adamw", "sgd", "lars"].contains(&self.optimizer.as_str()) {
            bail!(
                "optimizer `{}`: expected adamw, sgd or lars",
                self.optimizer
            );
        }
        if !["auto", "bf16", "fp16", "fp32"].contains(&self.precision.as_str()) {
            bail!(
                "precision `{}`: expected auto, bf16, fp16 or fp32",
                self.precision
            );
        }
        for (name, s) in [
            ("global_crops_scale", self.global_crops_scale),
            ("local_crops_scale", self.local_crops_scale),
        ] {
            if !(0.0 < s[0] && s[0] <= s[1] && s[1] <= 1.0) {
                bail!("{name} {s:?}: expected 0 < min <= max <= 1");
            }
        }
        for (name, p) in [
            ("global_blur_prob", self.global_blur_prob[0]),
            ("global_blur_prob", self.global_blur_prob[1]),
            ("local_blur_prob", self.local_blur_prob),
            ("solarization_prob", self.solarization_prob[0]),
            ("solarization_prob", self.solarization_prob[1]),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{name}: probability {p} is outside [0, 1]");
            }
        }
        let [lo, hi] = self.blur_sigma;
        if !(0.0 < lo && lo <= hi && hi.is_finite()) {
            bail!("blur_sigma {:?}: expected 0 < min <= max", self.blur_sigma);
        }
        if !["auto", "cpu", "device"].contains(&self.photometric.as_str()) {
            bail!(
                "photometric `{}`: expected auto, cpu or device",
                self.photometric
            );
        }
        if self.knn_freq > 0 && (self.knn_train.is_none() || self.knn_val.is_none()) {
            bail!("knn_freq > 0 needs knn_train and knn_val");
        }
        self.vit()?;
        Ok(())
    }

    /// The backbone architecture this config trains.
    pub fn vit(&self) -> Result<VitConfig> {
        let mut cfg = match self.arch.as_str() {
            "custom" => VitConfig {
                arch: "custom".into(),
                patch_size: self.patch_size,
                img_size: 224,
                in_chans: 3,
                embed_dim: self.embed_dim.context("arch = custom needs embed_dim")?,
                depth: self.depth.context("arch = custom needs depth")?,
                num_heads: self.num_heads.context("arch = custom needs num_heads")?,
                mlp_ratio: 4.0,
                qkv_bias: true,
                drop_path_rate: 0.0,
                layer_norm_eps: 1e-6,
            },
            arch => VitConfig::preset(arch, self.patch_size)?,
        };
        if let Some(d) = self.embed_dim {
            cfg.embed_dim = d;
        }
        if let Some(d) = self.depth {
            cfg.depth = d;
        }
        if let Some(h) = self.num_heads {
            cfg.num_heads = h;
        }
        cfg.img_size = self.img_size.unwrap_or(self.global_crop_size);
        cfg.drop_path_rate = self.drop_path_rate;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn head(&self) -> HeadConfig {
        HeadConfig {
            in_dim: self.vit().map_or(0, |v| v.embed_dim),
            out_dim: self.out_dim,
            use_bn: self.use_bn_in_head,
            norm_last_layer: self.norm_last_layer,
            nlayers: 3,
            hidden_dim: self.head_hidden_dim,
            bottleneck_dim: self.head_bottleneck_dim,
        }
    }

    /// The evaluation transform recorded with the weights (and used by k-NN).
    pub fn eval_transform(&self) -> EvalTransform {
        let crop = self.knn_crop.unwrap_or(self.global_crop_size);
        EvalTransform {
            resize_size: self.knn_resize.unwrap_or(crop * 256 / 224),
            crop_size: crop,
            mean: self.mean,
            std: self.std,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// Parses a flag's text with the type of its default: numbers and booleans as TOML
/// literals, lists as `a,b,c` or `[a, b, c]`, everything else as a string.
fn parse_flag(key: &str, text: &str, default: Option<&toml::Value>) -> Result<toml::Value> {
    if !OPTIONS.iter().any(|(k, _)| *k == key) {
        bail!("unknown option --{key}");
    }
    let literal = |t: &str| -> Result<toml::Value> {
        let doc: toml::Table = format!("v = {t}")
            .parse()
            .with_context(|| format!("--{key} {text}: not a valid value"))?;
        Ok(doc["v"].clone())
    };
    Ok(match default {
        Some(toml::Value::String(_)) | None if text.parse::<f64>().is_err() => {
            toml::Value::String(text.to_string())
        }
        Some(toml::Value::String(_)) => toml::Value::String(text.to_string()),
        Some(toml::Value::Array(_)) => {
            let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
            literal(&format!("[{inner}]"))?
        }
        _ => literal(text)?,
    })
}
