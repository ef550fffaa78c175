//! Command-line parsing: arguments become validated configs; `main` only dispatches.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand};

use dino_train::config::{
    ALIASES, KnnConfig, OFFICIAL_FLAGS, OptionInfo, TrainConfig, ValueKind, flag_text, option,
    options, unsupported_arch,
};
use dino_train::device::DeviceSpec;
use dino_train::linear::{self, CheckpointKey};

const EXAMPLES: &str = "\
Examples:
  dino-train train --config configs/cifar-tiny.toml
  dino-train train --config configs/cifar-tiny.toml --epochs 2 --output_dir runs/try
  dino-train train --config configs/cifar-tiny.toml --output_dir runs/try --resume
  dino-train train --arch vit_small --patch_size 16 --data_path /data/imagenet/train
  dino-train train --arch vit_small --global_crops_scale 0.14 1 --use_fp16 false \\
      --norm_last_layer False --data_path /data/imagenet/train
  dino-train train --config configs/cifar-tiny.toml --pretrained_weights teacher.safetensors
  dino-train train --arch vit_small --init_from checkpoint.pth --data_path /data/imagenet/train
  dino-train knn --checkpoint runs/try/teacher.safetensors \\
      --train ../shared/data/cifar10-mini/train --val ../shared/data/cifar10-mini/test --native
  dino-train knn --load_features feats/ --nb_knn 10 20 100 200
  dino-train attention --checkpoint runs/try/teacher.safetensors --image photo.jpg --out attn/
  dino-train attention --checkpoint runs/try/checkpoint.safetensors --image photos/ \\
      --img-size 480 --threshold 0.6 --out attn/
  dino-train plot --run runs/try
  dino-train import dino_deitsmall16_pretrain.pth --arch vit_small --patch-size 16 \\
      --to teacher.safetensors";

const ATTENTION_EXAMPLES: &str = "\
Examples:
  dino-train attention --checkpoint runs/try/teacher.safetensors --image photo.jpg --out attn/
  dino-train attention --checkpoint runs/try/checkpoint.safetensors --image photos/ \\
      --img-size 480 --threshold 0.6 --device cuda --out attn/";

#[derive(Debug, Parser)]
#[command(
    name = "dino-train",
    version,
    about = "DINO self-supervised training of Vision Transformers (Caron et al., 2021) on libtorch, CPU or CUDA",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train student and teacher by self-distillation.
    ///
    /// Options use the official main_dino.py names; a TOML file given with --config sets
    /// any of them, and flags override the file.
    Train(TrainArgs),
    /// Weighted k-NN accuracy of a teacher on labelled ImageFolders (eval_knn.py): several
    /// k from one feature extraction; features can be dumped and voted on again.
    Knn(KnnArgs),
    /// Speed of the training step on synthetic crops already on the device (one JSON line).
    Bench(BenchArgs),
    /// Convert official DINO PyTorch weights (.pth, or safetensors with official keys) to a
    /// teacher.safetensors usable by `knn`, `attention` and dino-export (as
    /// `dino-export import`). The architecture is read from the tensor shapes.
    Import(dino_import::ImportRequest),
    /// Last-block CLS attention of each head over an image (visualize_attention.py).
    ///
    /// Writes into <out>/<image stem>/: img.png (the crop the model saw), attn-head{j}.png
    /// and attn-mean.png (heatmaps over the crop), mask-head{j}.png and mask-mean.png (the
    /// patches holding --threshold of the attention mass kept) and attention.npy (per-head
    /// maps before upsampling, each summing to 1).
    #[command(after_help = ATTENTION_EXAMPLES)]
    Attention(AttentionArgs),
    /// PNG charts of a run's metrics.jsonl (loss, lr, weight decay, teacher momentum and
    /// temperature per step, k-NN top-1 per evaluation) into <run>/plots/.
    #[command(after_help = "Example:\n  dino-train plot --run runs/cifar-tiny")]
    Plot(PlotArgs),
    /// Linear probe of a frozen backbone (eval_linear.py): a linear classifier on the CLS
    /// tokens of the last blocks, top-1/top-5 on the val folder.
    ///
    /// Writes <output_dir>/linear.safetensors (the best evaluated epoch's weights, read by
    /// dino-export --linear-head) and <output_dir>/linear_log.jsonl (one line per epoch).
    #[command(after_help = LINEAR_EXAMPLES)]
    Linear(LinearArgs),
}

#[derive(Debug, clap::Args)]
pub struct AttentionArgs {
    /// A teacher.safetensors or training checkpoint (its teacher is used).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// An image, or a folder of images (every jpg/jpeg/png/webp/bmp in it).
    #[arg(long)]
    pub image: PathBuf,
    /// Shorter side of the resized image; sides are then cropped to patch multiples, the
    /// longer to at most 4 times the shorter.
    #[arg(long, default_value_t = 480)]
    pub img_size: usize,
    /// Share of the attention mass the masks keep.
    #[arg(long, default_value_t = 0.6)]
    pub threshold: f32,
    /// Output folder (one sub-folder per image).
    #[arg(long)]
    pub out: PathBuf,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    #[arg(long, short)]
    pub quiet: bool,
}

const LINEAR_EXAMPLES: &str = "\
Examples:
  dino-train linear --pretrained_weights dino_deitsmall16_pretrain.pth \\
      --data_path /data/imagenet --output_dir runs/linear
  dino-train linear --pretrained_weights demo/teacher.safetensors --cached_features \\
      --train ../shared/data/cifar10-mini/train --val ../shared/data/cifar10-mini/test \\
      --epochs 10 --output_dir runs/linear-demo
  dino-train linear --evaluate --pretrained_weights demo/teacher.safetensors \\
      --val ../shared/data/cifar10-mini/test --output_dir runs/linear-demo";

#[derive(Debug, clap::Args)]
pub struct LinearArgs {
    /// The backbone: a dino-rs teacher.safetensors or training checkpoint, an official
    /// .pth, or safetensors with the official keys.
    #[arg(long = "pretrained_weights", value_name = "FILE")]
    pub pretrained_weights: PathBuf,
    /// Network of a training checkpoint to evaluate.
    #[arg(long = "checkpoint_key", value_enum, default_value_t = CheckpointKey::default())]
    pub checkpoint_key: CheckpointKey,
    /// Folder holding the train/ and val/ ImageFolders (as the official script).
    #[arg(long = "data_path", value_name = "DIR")]
    pub data_path: Option<PathBuf>,
    /// Training ImageFolder [default: <data_path>/train].
    #[arg(long, value_name = "DIR")]
    pub train: Option<PathBuf>,
    /// Validation ImageFolder [default: <data_path>/val].
    #[arg(long, value_name = "DIR")]
    pub val: Option<PathBuf>,
    /// Where linear.safetensors and linear_log.jsonl go.
    #[arg(long = "output_dir", value_name = "DIR", default_value = ".")]
    pub output_dir: PathBuf,
    /// Concatenate the CLS tokens of the last N blocks [default: 1 for vit_base, else 4,
    /// as the official README].
    #[arg(long = "n_last_blocks", value_name = "N")]
    pub n_last_blocks: Option<usize>,
    /// Interleave the mean of the last block's patch tokens with the CLS token (needs
    /// --n_last_blocks 1) [default: true for vit_base, else false].
    #[arg(long = "avgpool_patchtokens", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub avgpool_patchtokens: Option<bool>,
    /// Epochs of training (the cosine schedule's length).
    #[arg(long, default_value_t = linear::DEFAULT_EPOCHS)]
    pub epochs: usize,
    /// Learning rate for a batch of 256, scaled linearly with the batch size; cosine
    /// annealed to 0 over the epochs.
    #[arg(long, default_value_t = linear::DEFAULT_LR)]
    pub lr: f64,
    /// Images per SGD step (one process).
    #[arg(long = "batch_size_per_gpu", value_name = "N", default_value_t = linear::DEFAULT_BATCH_SIZE)]
    pub batch_size_per_gpu: usize,
    /// Evaluate every N epochs (and after the last).
    #[arg(long = "val_freq", value_name = "N", default_value_t = linear::DEFAULT_VAL_FREQ)]
    pub val_freq: usize,
    /// Train on features of the un-augmented images computed once: much faster, but not
    /// the official protocol (which draws RandomResizedCrop + flip crops every epoch).
    #[arg(long = "cached_features")]
    pub cached_features: bool,
    /// Evaluate a saved probe (--linear_weights) on the val folder and exit; the feature
    /// recipe is the probe's.
    #[arg(long)]
    pub evaluate: bool,
    /// The probe --evaluate reads [default: <output_dir>/linear.safetensors].
    #[arg(long = "linear_weights", value_name = "FILE", requires = "evaluate")]
    pub linear_weights: Option<PathBuf>,
    /// Seeds the classifier's initialisation, the epoch shuffles and the crops.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// A training output_dir holding metrics.jsonl.
    #[arg(long)]
    pub run: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// Untimed steps first (allocator and kernel warm-up).
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Then as many steps again, synchronising after each part of the step, and print the
    /// milliseconds of each part (forward with the loss, backward, update).
    #[arg(long)]
    pub breakdown: bool,
}

/// A positive, finite number of minutes.
fn parse_minutes(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 => Ok(m),
        _ => Err(format!("`{s}` is not a positive number of minutes")),
    }
}

#[derive(Debug)]
pub struct TrainArgs {
    pub config: Option<PathBuf>,
    pub resume: bool,
    pub quiet: bool,
    pub dry_run: bool,
    /// Stop after this many epochs of this invocation (the schedules still span `epochs`).
    pub stop_after: Option<usize>,
    /// Stop after the epoch that brings the training time of this invocation to this many
    /// minutes, writing the checkpoint and the teacher backbone.
    pub time_limit: Option<f64>,
    /// Options given on the command line, as `(official name, text)`.
    pub overrides: Vec<(String, String)>,
    /// Start this many rank processes on this machine (the built-in launcher).
    pub nproc_per_node: Option<usize>,
}

impl Args for TrainArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let cmd = cmd
            .arg(
                clap::Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("TOML file of options (see configs/)"),
            )
            .arg(
                clap::Arg::new("resume")
                    .long("resume")
                    .action(clap::ArgAction::SetTrue)
                    .help("continue from output_dir/checkpoint.safetensors"),
            )
            .arg(
                clap::Arg::new("quiet")
                    .long("quiet")
                    .short('q')
                    .action(clap::ArgAction::SetTrue)
                    .help("no progress bars"),
            )
            .arg(
                clap::Arg::new("stop_after")
                    .long("stop-after")
                    .value_name("EPOCHS")
                    .value_parser(clap::value_parser!(usize))
                    .help("stop after this many epochs of this invocation, keeping the schedules of the full run (time-boxed jobs; continue with --resume); 0 writes the starting teacher backbone (e.g. the random initialisation, for a k-NN baseline) and stops"),
            )
            .arg(
                clap::Arg::new("time_limit")
                    .long("time-limit")
                    .value_name("MINUTES")
                    .value_parser(parse_minutes)
                    .help("stop after the epoch that brings this invocation's training time (in-training k-NN excluded) to MINUTES, then write the checkpoint and the teacher backbone; the schedules keep the full run's length (wall-clock budgets)"),
            )
            .arg(
                clap::Arg::new("nproc_per_node")
                    .long("nproc_per_node")
                    .value_name("N")
                    .value_parser(clap::value_parser!(usize))
                    .help("start N rank processes on this machine (as torchrun --standalone --nproc_per_node N; CPU ranks share the cores)"),
            )
            .arg(
                clap::Arg::new("print_config")
                    .long("print-config")
                    .action(clap::ArgAction::SetTrue)
                    .help("print the resolved configuration and exit"),
            );
        // Read back from the printed form, so that defaults show as a file has them.
        let defaults: toml::Table = TrainConfig::default()
            .to_toml()
            .parse()
            .expect("the printed defaults parse");
        let cmd = options().fold(cmd, |cmd, o| cmd.arg(option_arg(o, defaults.get(o.key))));
        let cmd = OFFICIAL_FLAGS.iter().fold(cmd, |cmd, f| {
            let arg = clap::Arg::new(f.key)
                .long(f.key)
                .value_name(f.value_name)
                .help(f.help)
                .help_heading("main_dino.py flags");
            cmd.arg(match f.sets {
                Some(key) => arg.conflicts_with(key),
                None => arg,
            })
        });
        ALIASES.iter().fold(cmd, |cmd, (alias, key)| {
            cmd.arg(
                clap::Arg::new(*alias)
                    .long(*alias)
                    .value_name("VALUE")
                    .conflicts_with(*key)
                    .help(format!("the same as --{key}"))
                    .help_heading(option(key).map_or("Options", |o| o.heading)),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for TrainArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let keys = options()
            .map(|o| o.key)
            .chain(ALIASES.iter().map(|(a, _)| *a))
            .chain(OFFICIAL_FLAGS.iter().map(|f| f.key));
        // A list option may come as several values (`--global_crops_scale 0.14 1`).
        let overrides = keys
            .filter_map(|key| {
                let texts: Vec<&String> = m.get_many::<String>(key)?.collect();
                let texts: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
                Some((key.to_string(), texts.join(",")))
            })
            .collect();
        Ok(Self {
            config: m.get_one::<PathBuf>("config").cloned(),
            resume: m.get_flag("resume"),
            quiet: m.get_flag("quiet"),
            dry_run: m.get_flag("print_config"),
            stop_after: m.get_one::<usize>("stop_after").copied(),
            time_limit: m.get_one::<f64>("time_limit").copied(),
            overrides,
            nproc_per_node: m.get_one::<usize>("nproc_per_node").copied(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// The flag of one training option: its key, help and default from the option table;
/// an enum option lists its names and refuses others.
fn option_arg(o: &OptionInfo, default: Option<&toml::Value>) -> clap::Arg {
    let help = match default.map(flag_text) {
        Some(d) if !d.is_empty() => format!("{} [default: {d}]", o.help()),
        _ => o.help().to_string(),
    };
    let arg = clap::Arg::new(o.key)
        .long(o.key)
        .value_name(o.kind.value_name())
        .help(help)
        .help_heading(o.heading);
    match o.kind {
        ValueKind::Choice(_, values) => arg.value_parser(ChoiceParser {
            names: PossibleValuesParser::new(values()),
            explain: (o.key == "arch").then_some(unsupported_arch),
        }),
        // The official `nargs='+'`: `--global_crops_scale 0.14 1`.
        ValueKind::List(_) => arg.num_args(1..).allow_negative_numbers(true),
        _ => arg,
    }
}

const KNN_EXAMPLES: &str = "\
Examples:
  dino-train knn --pretrained_weights runs/try/teacher.safetensors \\
      --data_path ../shared/data/cifar10-mini --native       (folders train/ and val/)
  dino-train knn --pretrained_weights dino_deitsmall16_pretrain_full_checkpoint.pth \\
      --checkpoint_key teacher --train data/train --val data/val --nb_knn 10 20 100 200
  dino-train knn --checkpoint runs/try/checkpoint.safetensors --checkpoint_key student \\
      --train data/train --val data/val --k 20 --json
  dino-train knn --checkpoint runs/try/teacher.safetensors --train data/train --val data/val \\
      --dump_features feats/
  dino-train knn --load_features feats/ --nb_knn 5 50 --temperature 0.1

--dump_features writes <DIR>/knn_features.safetensors (L2-normalised train/test features,
their labels, the class names); --load_features reads it, or the trainfeat.pth,
testfeat.pth, trainlabels.pth and testlabels.pth of the official eval_knn.py.";

/// The official `--nb_knn` default of `eval_knn.py`.
pub const DEFAULT_NB_KNN: [usize; 4] = [10, 20, 100, 200];

/// An enum option's names, with a reason for names refused on purpose (`--arch resnet50`).
#[derive(Clone)]
struct ChoiceParser {
    names: PossibleValuesParser,
    explain: Option<fn(&str) -> Option<String>>,
}

impl TypedValueParser for ChoiceParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        self.names.parse_ref(cmd, arg, value).map_err(|e| {
            let note = value.to_str().zip(self.explain).and_then(|(v, f)| f(v));
            match (note, arg) {
                (Some(note), Some(arg)) => clap::Error::raw(
                    clap::error::ErrorKind::InvalidValue,
                    format!("--{} {}: {note}\n", arg.get_id(), value.to_string_lossy()),
                )
                .with_cmd(cmd),
                _ => e,
            }
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        self.names.possible_values()
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = KNN_EXAMPLES)]
pub struct KnnArgs {
    /// Weights: a dino-rs teacher.safetensors or training checkpoint, an official .pth
    /// (backbone or training checkpoint) or official-key safetensors.
    #[arg(
        long = "pretrained_weights",
        visible_alias = "checkpoint",
        value_name = "FILE",
        required_unless_present = "load_features"
    )]
    pub pretrained_weights: Option<PathBuf>,
    /// The network of a training checkpoint [default: teacher].
    #[arg(long = "checkpoint_key", value_enum, requires = "pretrained_weights")]
    pub checkpoint_key: Option<CheckpointKey>,
    /// A folder holding the train/ and val/ ImageFolders.
    #[arg(
        long = "data_path",
        value_name = "DIR",
        conflicts_with_all = ["train", "val"],
        required_unless_present_any = ["train", "load_features"]
    )]
    pub data_path: Option<PathBuf>,
    /// Labelled reference images (ImageFolder).
    #[arg(long, value_name = "DIR", requires = "val")]
    pub train: Option<PathBuf>,
    /// Labelled query images (ImageFolder).
    #[arg(long, value_name = "DIR", requires = "train")]
    pub val: Option<PathBuf>,
    /// Neighbours voting; several values are evaluated from one search.
    #[arg(
        long = "nb_knn",
        visible_alias = "k",
        value_name = "K",
        num_args = 1..,
        default_values_t = DEFAULT_NB_KNN
    )]
    pub nb_knn: Vec<usize>,
    /// Temperature of the vote weights exp(sim / T).
    #[arg(long, default_value_t = KnnConfig::default().knn_temperature)]
    pub temperature: f64,
    /// Also write the features and labels into this folder.
    #[arg(long = "dump_features", value_name = "DIR")]
    pub dump_features: Option<PathBuf>,
    /// Vote on features written by --dump_features (no model, no images).
    #[arg(
        long = "load_features",
        value_name = "DIR",
        conflicts_with_all = ["pretrained_weights", "data_path", "train", "native", "resize", "crop"]
    )]
    pub load_features: Option<PathBuf>,
    /// Images already have the model's input size (e.g. 32x32 CIFAR for an img_size-32
    /// model): no resize, no crop.
    #[arg(long, conflicts_with_all = ["resize", "crop"])]
    pub native: bool,
    /// Shorter side before the centre crop [default: the checkpoint's eval transform, or crop*256/224].
    #[arg(long)]
    pub resize: Option<usize>,
    /// Centre-crop size [default: the checkpoint's eval transform, or the model's img_size].
    #[arg(long)]
    pub crop: Option<usize>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Print one JSON object per k (one per line).
    #[arg(long)]
    pub json: bool,
    #[arg(long, short)]
    pub quiet: bool,
}
