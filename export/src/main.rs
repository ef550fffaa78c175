//! `dino-export`: the command line over `dino_export::export` and `dino_import`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use dino_export::{ExportOptions, Int8Range, Outputs, Precision, export, onnx};
use dino_import::ImportRequest;

const EXAMPLES: &str = "\
Examples:
  dino-export --checkpoint runs/cifar/teacher.safetensors --to model.onnx
  dino-export --checkpoint runs/cifar/checkpoint.safetensors --to model.onnx \\
      --outputs patch_tokens,attention --img-size 64
  dino-export --checkpoint teacher.safetensors --to model-fp16.onnx --precision fp16
  dino-export --checkpoint teacher.safetensors --to model-int8.onnx --precision int8
  dino-export --checkpoint teacher.safetensors --to model-int8.onnx --precision int8 \\
      --int8-range reduced          (for x86 CPUs without VNNI: most AVX2 machines)
  dino-export --checkpoint teacher.safetensors --linear-head linear.safetensors \\
      --to classifier.onnx          (adds `logits`; then: dino-run classify --model classifier.onnx photo.jpg)
  dino-export import dino_deitsmall16_pretrain.pth --arch vit_small --patch-size 16 \\
      --to teacher.safetensors
  dino-export import checkpoint.pth --to teacher.safetensors      (the `teacher` entry)

The model's input is `image`, float32 [batch, 3, S, S] (S = --img-size), already resized,
cropped and normalised as the `dino_rs.eval` metadata says. Its outputs are float32:
`embedding` [batch, D], `patch_tokens` [batch, N, D], `attention` [batch, heads, N],
with N = (S / patch)^2, and with --linear-head `logits` [batch, classes] (the probe's class
names and feature recipe are in the `dino_rs.linear` metadata). With --precision fp16 the weights and arithmetic are float16, and
the input and outputs stay float32 (cast inside the graph). With --precision int8 the Linear
layers of the blocks (qkv, proj, fc1, fc2) have per-output-channel int8 weights and quantise
their input to uint8 at run time (ONNX Runtime fuses each into one int8 kernel); the patch
embedding, norms, attention and a --linear-head stay float32. On x86 CPUs without VNNI
(check /proc/cpuinfo for avx512_vnni or avx_vnni) ONNX Runtime's int8 kernel adds pairs of
products in int16 with saturation; --int8-range reduced (weights ±63) avoids it and is then
the more accurate choice.";

#[derive(Parser)]
#[command(
    name = "dino-export",
    version,
    about = "Export a DINO ViT teacher backbone to a self-describing ONNX model (no libtorch needed).",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// dino-rs safetensors: a backbone (`teacher.safetensors`) or a training checkpoint
    /// (its teacher is exported). A PyTorch `.pth` is imported on the fly.
    #[arg(long, required = true, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Where to write the ONNX model (replaced atomically).
    #[arg(long, required = true, value_name = "FILE.onnx")]
    to: Option<PathBuf>,
    /// Outputs besides `embedding` (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    outputs: Vec<OutputArg>,
    /// ONNX opset (13 to 21; 17 adds LayerNormalization, 20 adds Gelu).
    #[arg(long, default_value_t = onnx::DEFAULT_OPSET)]
    opset: i64,
    /// Input side in pixels (a multiple of the patch size); default: the native size. The
    /// position embedding is interpolated as in training.
    #[arg(long, value_name = "PIXELS")]
    img_size: Option<usize>,
    /// Weight and arithmetic precision; input and outputs are float32 in every case.
    #[arg(long, value_enum, default_value = "fp32")]
    precision: PrecisionArg,
    /// With --precision int8: `full` int8 weights (±127), or `reduced` (±63) for x86 CPUs
    /// without VNNI, where ONNX Runtime's int8 kernel saturates (see below).
    #[arg(long, value_enum, value_name = "RANGE")]
    int8_range: Option<Int8RangeArg>,
    /// A linear probe of this backbone (`dino-train linear`): adds the `logits` output,
    /// computed from the same forward pass, so `dino-run classify` needs no gallery.
    #[arg(long, value_name = "linear.safetensors")]
    linear_head: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Convert official DINO PyTorch weights (.pth, or safetensors with official keys) to a
    /// dino-rs backbone file. The architecture is read from the tensor shapes.
    Import(ImportRequest),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputArg {
    #[value(name = "embedding")]
    Embedding,
    #[value(name = "patch_tokens")]
    PatchTokens,
    #[value(name = "attention")]
    Attention,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    Fp32,
    Fp16,
    Int8,
}

#[derive(Clone, Copy, ValueEnum)]
enum Int8RangeArg {
    Full,
    Reduced,
}

fn precision(cli: &Cli) -> Result<Precision> {
    let range = match cli.int8_range {
        None | Some(Int8RangeArg::Full) => Int8Range::Full,
        Some(Int8RangeArg::Reduced) => Int8Range::Reduced,
    };
    Ok(match cli.precision {
        PrecisionArg::Int8 => Precision::Int8(range),
        _ if cli.int8_range.is_some() => {
            anyhow::bail!("--int8-range applies to --precision int8 only")
        }
        PrecisionArg::Fp32 => Precision::Fp32,
        PrecisionArg::Fp16 => Precision::Fp16,
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let precision = precision(&cli)?;
    if let Some(Command::Import(r)) = cli.command {
        println!("{}", r.run()?);
        return Ok(());
    }
    let (Some(checkpoint), Some(to)) = (cli.checkpoint, cli.to) else {
        anyhow::bail!("--checkpoint and --to are required");
    };
    let opts = ExportOptions {
        img_size: cli.img_size,
        outputs: Outputs {
            patch_tokens: cli.outputs.contains(&OutputArg::PatchTokens),
            attention: cli.outputs.contains(&OutputArg::Attention),
        },
        opset: cli.opset,
        precision,
        linear_head: cli.linear_head,
    };
    let start = Instant::now();
    let s = export(&checkpoint, &to, &opts)
        .with_context(|| format!("exporting {} to {}", checkpoint.display(), to.display()))?;
    println!(
        "wrote {}: {}/{} at {}px, {}, opset {}, outputs {}, {} nodes, {:.1} MB, fingerprint {}, {:.1}s",
        to.display(),
        s.arch,
        s.patch_size,
        s.input_size,
        opts.precision.name(),
        opts.opset,
        s.outputs.join(","),
        s.nodes,
        s.bytes as f64 / 1e6,
        &s.fingerprint[..12],
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
