//! Command-line parsing: arguments become validated configs; `main` only dispatches.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand};

use dino_train::config::{
    ALIASES, KnnConfig, OFFICIAL_FLAGS, OptionInfo, TrainConfig, ValueKind, flag_text, option,
    options, unsupported_arch,
};
use dino_train::device::DeviceSpec;

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
    /// Weighted k-NN accuracy of a teacher on labelled ImageFolders (eval_knn.py).
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
}

#[derive(Debug, clap::Args)]
pub struct AttentionArgs {
    /// A teacher.safetensors or training checkpoint (its teacher is used).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// An image, or a folder of images (every jpg/jpeg/png/webp/bmp in it).
    #[arg(long)]
    pub image: PathBuf,
    /// Shorter side of the resized image; sides are then cropped to patch multiples.
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

#[derive(Debug)]
pub struct TrainArgs {
    pub config: Option<PathBuf>,
    pub resume: bool,
    pub quiet: bool,
    pub dry_run: bool,
    /// Stop after this many epochs of this invocation (the schedules still span `epochs`).
    pub stop_after: Option<usize>,
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
                    .help("stop after this many epochs of this invocation, keeping the schedules of the full run (time-boxed jobs; continue with --resume)"),
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
pub struct KnnArgs {
    /// A teacher.safetensors or training checkpoint (its teacher is used).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Labelled reference images (ImageFolder).
    #[arg(long)]
    pub train: PathBuf,
    /// Labelled query images (ImageFolder).
    #[arg(long)]
    pub val: PathBuf,
    /// Neighbours voting.
    #[arg(long, default_value_t = KnnConfig::default().knn_k)]
    pub k: usize,
    /// Temperature of the vote weights exp(sim / T).
    #[arg(long, default_value_t = KnnConfig::default().knn_temperature)]
    pub temperature: f64,
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
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, short)]
    pub quiet: bool,
}
