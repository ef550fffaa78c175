//! The option table: every training option's key, type, official default and help, each
//! written once, here. Sections become the sub-configs of [`super::TrainConfig`]; their
//! order and the order within them is the order of `--print-config` and `--help`.

use std::path::PathBuf;

use dino_import::DEFAULT_CHECKPOINT_KEY;

use dino_core::config::{HEAD_BOTTLENECK_DIM, HEAD_HIDDEN_DIM, IMAGENET_MEAN, IMAGENET_STD};

use super::value::{OptionInfo, OptionType};
use crate::data::PhotometricSpec;
use crate::device::{DeviceSpec, PrecisionSpec};
use crate::optim::OptimizerKind;

/// Declares one section of options: the struct (one field per option, named by its key,
/// documented by its help), its `Default` (the official values) and its rows of the option
/// table. Keys missing from a file take their default.
macro_rules! options_section {
    (
        $(#[doc = $doc:literal])*
        $name:ident($heading:literal) {
            $( $(#[doc = $help:literal])+ $key:ident: $ty:ty = $default:expr, )+
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct $name {
            $( $(#[doc = $help])+ pub $key: $ty, )+
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $key: $default, )+ }
            }
        }

        impl $name {
            /// This section's rows of the option table, in file order.
            pub const OPTIONS: &'static [OptionInfo] = &[$(
                OptionInfo {
                    key: stringify!($key),
                    doc: concat!($($help),+),
                    heading: $heading,
                    kind: <$ty as OptionType>::KIND,
                },
            )+];
        }
    };
}

/// The backbone architecture (`--arch`): an official preset, or widths of one's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Arch {
    /// (main_dino.py's deit_tiny is the same network)
    #[value(alias = "deit_tiny")]
    VitTiny,
    #[value(alias = "deit_small")]
    VitSmall,
    VitBase,
    /// embed_dim, depth and num_heads as given
    Custom,
}

options_section! {
    /// The networks: the ViT backbone and the DINO projection head.
    ModelConfig("Model") {
        /// backbone architecture
        arch: Arch = Arch::VitSmall,
        /// patch size in pixels (4, 8, 16, ...)
        patch_size: usize = 16,
        /// token width (custom arch, or override a preset)
        embed_dim: Option<usize> = None,
        /// number of blocks (custom arch, or override a preset)
        depth: Option<usize> = None,
        /// attention heads (custom arch, or override a preset)
        num_heads: Option<usize> = None,
        /// size the position embedding is learned at [default: global_crop_size]
        img_size: Option<usize> = None,
        /// prototypes of the DINO head
        out_dim: usize = 65536,
        /// freeze the weight norm of the head's last layer at 1
        norm_last_layer: bool = true,
        /// BatchNorm in the head MLP
        use_bn_in_head: bool = false,
        /// hidden width of the head MLP
        head_hidden_dim: usize = HEAD_HIDDEN_DIM,
        /// bottleneck width of the head
        head_bottleneck_dim: usize = HEAD_BOTTLENECK_DIM,
        /// stochastic depth rate (student only)
        drop_path_rate: f64 = 0.1,
    }
}

options_section! {
    /// Where the weights start: fresh (the official training), a pretrained backbone, or a
    /// whole DINO training state to continue from.
    InitConfig("Starting weights") {
        /// start the student backbone (and so the teacher) from these weights: a dino-rs
        /// teacher.safetensors or checkpoint, or an official .pth; the head starts fresh
        pretrained_weights: Option<PathBuf> = None,
        /// the network of pretrained_weights to take: teacher or student (for a .pth, any
        /// top-level entry)
        checkpoint_key: String = DEFAULT_CHECKPOINT_KEY.to_string(),
        /// continue DINO pretraining from a training checkpoint (official checkpoint.pth or
        /// dino-rs checkpoint.safetensors): student, teacher, heads and centre; fresh
        /// optimizer, epoch 0
        init_from: Option<PathBuf> = None,
    }
}

options_section! {
    /// The teacher and the loss: the teacher's EMA momentum and temperature schedule, the
    /// student temperature and the centring (official `DINOLoss` arguments).
    TeacherConfig("Teacher and loss") {
        /// base EMA momentum of the teacher, cosine-scheduled to 1
        momentum_teacher: f64 = 0.996,
        /// teacher temperature at the start of its warmup
        warmup_teacher_temp: f64 = 0.04,
        /// teacher temperature after warmup
        teacher_temp: f64 = 0.04,
        /// epochs of linear teacher-temperature warmup
        warmup_teacher_temp_epochs: usize = 0,
        /// student temperature
        student_temp: f64 = 0.1,
        /// EMA momentum of the teacher centre
        center_momentum: f64 = 0.9,
    }
}

options_section! {
    /// The optimisation: arithmetic, optimizer, learning-rate and weight-decay schedules,
    /// gradient handling and the length of the run.
    OptimConfig("Optimisation") {
        /// arithmetic of the forward passes
        precision: PrecisionSpec = PrecisionSpec::Auto,
        /// optimizer of the student
        optimizer: OptimizerKind = OptimizerKind::AdamW,
        /// peak learning rate at batch 256 (scaled linearly by batch_size/256)
        lr: f64 = 0.0005,
        /// final learning rate of the cosine schedule
        min_lr: f64 = 1e-6,
        /// epochs of linear learning-rate warmup
        warmup_epochs: usize = 10,
        /// initial weight decay
        weight_decay: f64 = 0.04,
        /// final weight decay (cosine schedule)
        weight_decay_end: f64 = 0.4,
        /// per-parameter gradient norm clip (0 = off)
        clip_grad: f64 = 3.0,
        /// epochs during which the head's last layer is not updated
        freeze_last_layer: usize = 1,
        /// images per step
        batch_size: usize = 64,
        /// training epochs
        epochs: usize = 100,
    }
}

options_section! {
    /// The multi-crop augmentation (official `DataAugmentationDINO`): crop geometry,
    /// photometric strength (the paper's values by default; small images want less blur)
    /// and normalisation.
    AugmentConfig("Multi-crop augmentation") {
        /// area range of the 2 global crops
        global_crops_scale: [f64; 2] = [0.4, 1.0],
        /// number of local crops (0 = none)
        local_crops_number: usize = 8,
        /// area range of the local crops
        local_crops_scale: [f64; 2] = [0.05, 0.4],
        /// side of the global crops in pixels
        global_crop_size: usize = 224,
        /// side of the local crops in pixels
        local_crop_size: usize = 96,
        /// Gaussian blur probability of global views 1 and 2 (0,0 for 32x32 images)
        global_blur_prob: [f64; 2] = [1.0, 0.1],
        /// Gaussian blur probability of each local view
        local_blur_prob: f64 = 0.5,
        /// range of the blur's sigma in pixels of the crop
        blur_sigma: [f64; 2] = [0.1, 2.0],
        /// solarization probability of global views 1 and 2
        solarization_prob: [f64; 2] = [0.0, 0.2],
        /// normalisation mean per channel
        mean: [f32; 3] = IMAGENET_MEAN,
        /// normalisation std per channel
        std: [f32; 3] = IMAGENET_STD,
    }
}

options_section! {
    /// The run: data, output, seed, workers and where the work happens.
    RunConfig("Run") {
        /// ImageFolder of training images (<root>/<class>/<image>)
        data_path: PathBuf = PathBuf::new(),
        /// where checkpoints, config and logs are written
        output_dir: PathBuf = PathBuf::from("."),
        /// also keep checkpoint<epoch>.safetensors every this many epochs
        saveckp_freq: usize = 20,
        /// seed of every random choice (data order, crops, init, drop-path)
        seed: u64 = 0,
        /// data-loading threads
        num_workers: usize = std::thread::available_parallelism().map_or(2, |n| n.get()),
        /// auto | cpu | cuda | cuda:N (auto: CUDA when present)
        device: DeviceSpec = DeviceSpec::Auto,
        /// where colour jitter, grayscale, blur, solarize and normalisation run
        photometric: PhotometricSpec = PhotometricSpec::Auto,
        /// steps between metric read-backs (a host sync on CUDA) and log lines
        log_freq: usize = 10,
        /// seconds a collective of a multi-process run waits for the other ranks before failing
        dist_timeout: u64 = 600,
    }
}

options_section! {
    /// The k-NN evaluation during training (off when `knn_freq` is 0).
    KnnConfig("k-NN evaluation during training") {
        /// run k-NN evaluation every this many epochs (0 = off)
        knn_freq: usize = 0,
        /// ImageFolder of labelled k-NN reference images
        knn_train: Option<PathBuf> = None,
        /// ImageFolder of labelled k-NN query images
        knn_val: Option<PathBuf> = None,
        /// neighbours of the k-NN vote
        knn_k: usize = 20,
        /// temperature of the k-NN vote weights
        knn_temperature: f64 = 0.07,
        /// k-NN eval: shorter side before the centre crop [default: crop*256/224]
        knn_resize: Option<usize> = None,
        /// k-NN eval: centre-crop size [default: global_crop_size]
        knn_crop: Option<usize> = None,
    }
}

/// Every section's rows, in file order: the source of the flags and of `--help`.
pub(super) const SECTIONS: [&[OptionInfo]; 7] = [
    ModelConfig::OPTIONS,
    InitConfig::OPTIONS,
    TeacherConfig::OPTIONS,
    OptimConfig::OPTIONS,
    AugmentConfig::OPTIONS,
    RunConfig::OPTIONS,
    KnnConfig::OPTIONS,
];
