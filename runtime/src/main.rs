//! `dino-run`: embeddings, k-NN classification and attention maps of DINO models exported
//! by `dino-export`, on ONNX Runtime alone (no libtorch).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use dino_core::image_io::{ImageFolder, load_rgb};
use dino_core::knn;
use dino_core::onnx_meta::OUTPUT_ATTENTION;
use dino_core::preprocess::{eval_crop, normalize_into};
use dino_runtime::attention::AttentionMaps;
use dino_runtime::gallery::{Gallery, GalleryHeader};
use dino_runtime::pipeline::{EmbedOptions, embed_paths};
use dino_runtime::session::{self, Device, SessionOptions};
use dino_runtime::{Model, RuntimeError};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

const EXAMPLES: &str = "\
Examples:
  dino-run embed --model model.onnx photo.jpg other.png --json
  dino-run index --model model.onnx --images data/train --out gallery.dgal
  dino-run classify --model model.onnx --gallery gallery.dgal photo.jpg --k 20 --topk 5
  dino-run attention --model model.onnx photo.jpg --out attn.png
  dino-run --device cuda:0 --threads 4 embed --model model.onnx *.jpg

ONNX Runtime is loaded from --ort-lib, ORT_DYLIB_PATH, the folder of this binary, or the
Python venv dino-run was built with; get it with `pip install onnxruntime==1.31.1`
(onnxruntime-gpu==1.31.1 for --device cuda).

Exit status: 0 on success, 1 when some images could not be processed (the others are),
2 on any other error.";

#[derive(Parser)]
#[command(name = "dino-run", version, about = "DINO ViT inference on ONNX Runtime: embeddings, k-NN classification, attention maps", after_help = EXAMPLES)]
struct Cli {
    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, next to the binary, the build venv).
    #[arg(long, global = true, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// Execution provider: cpu, cuda or cuda:N. CUDA that cannot load is an error.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// Intra-op threads for ONNX Runtime and image decoding (0: one per core).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    /// Do not cache the optimised graph (by default kept under ~/.cache/dino-rs/ort).
    #[arg(long, global = true)]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ModelArgs {
    /// The ONNX model exported by dino-export.
    #[arg(long, value_name = "MODEL.onnx")]
    model: PathBuf,
    /// Images per inference batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Print the embedding of each image (L2-normalised unless --raw).
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// JSON output: [{"image", "embedding"} | {"image", "error"}].
        #[arg(long)]
        json: bool,
        /// The model's output as is, without L2 normalisation.
        #[arg(long)]
        raw: bool,
    },
    /// Embed a labelled ImageFolder (<dir>/<class>/<image>) into a gallery file.
    Index {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, value_name = "DIR")]
        images: PathBuf,
        #[arg(long, value_name = "GALLERY.dgal")]
        out: PathBuf,
    },
    /// Classify images by the weighted k-NN vote against a gallery (as `dino-train knn`).
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, value_name = "GALLERY.dgal")]
        gallery: PathBuf,
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Neighbours voting.
        #[arg(long, default_value_t = 20)]
        k: usize,
        /// Temperature of the vote weights exp(similarity / T).
        #[arg(long, default_value_t = 0.07)]
        temperature: f32,
        /// Classes printed per image.
        #[arg(long, default_value_t = 5)]
        topk: usize,
        #[arg(long)]
        json: bool,
    },
    /// Render the last block's CLS attention (per head, mean, thresholded masks) as a PNG.
    Attention {
        #[command(flatten)]
        model: ModelArgs,
        image: PathBuf,
        #[arg(long, value_name = "OUT.png")]
        out: PathBuf,
        /// Share of the attention mass the masks keep (official: 0.6).
        #[arg(long, default_value_t = 0.6)]
        threshold: f32,
    },
}

fn open_model(cli: &Cli, path: &Path) -> Result<Model> {
    let device: Device = cli.device.parse()?;
    let lib = session::find_ort_lib(cli.ort_lib.as_deref())?;
    let env = session::init_ort(&lib)?;
    let opts = SessionOptions {
        device,
        threads: cli.threads,
        cache_dir: if cli.no_cache {
            None
        } else {
            session::default_cache_dir()
        },
    };
    Ok(Model::open(&env, path, &opts)?)
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Embeds `paths`, reporting failures by name on stderr; returns per-image results.
fn embed_all(
    model: &mut Model,
    paths: &[PathBuf],
    batch: usize,
    normalize: bool,
    what: &str,
) -> Result<Vec<Result<Vec<f32>, String>>> {
    let pb = (paths.len() > batch).then(|| progress(paths.len(), what));
    let mut results: Vec<Result<Vec<f32>, String>> = vec![Err(String::new()); paths.len()];
    embed_paths(
        model,
        paths,
        EmbedOptions {
            batch_size: batch,
            normalize,
        },
        |i, r| {
            if let Err(e) = &r {
                let msg = format!("error: {e}");
                match &pb {
                    Some(pb) => pb.println(msg),
                    None => eprintln!("{msg}"),
                }
            }
            results[i] = r.map_err(|e| e.to_string());
            if let Some(pb) = &pb {
                pb.inc(1);
            }
        },
    )?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(results)
}

fn run(cli: &Cli) -> Result<bool> {
    match &cli.command {
        Command::Embed {
            model,
            images,
            json,
            raw,
        } => {
            let mut m = open_model(cli, &model.model)?;
            let results = embed_all(&mut m, images, model.batch_size, !raw, "embedding")?;
            if *json {
                let items: Vec<_> = images
                    .iter()
                    .zip(&results)
                    .map(|(p, r)| match r {
                        Ok(e) => json!({"image": p, "embedding": e}),
                        Err(e) => json!({"image": p, "error": e}),
                    })
                    .collect();
                println!("{}", serde_json::to_string(&items)?);
            } else {
                for (p, r) in images.iter().zip(&results) {
                    if let Ok(e) = r {
                        let v: Vec<String> = e.iter().map(|x| x.to_string()).collect();
                        println!("{}\t{}", p.display(), v.join(" "));
                    }
                }
            }
            Ok(results.iter().all(Result::is_ok))
        }
        Command::Index { model, images, out } => {
            let folder = ImageFolder::scan(images)?;
            let mut m = open_model(cli, &model.model)?;
            let paths: Vec<PathBuf> = folder.samples.iter().map(|s| s.0.clone()).collect();
            let results = embed_all(&mut m, &paths, model.batch_size, true, "indexing")?;
            let (mut labels, mut features) = (Vec::new(), Vec::new());
            for (r, s) in results.iter().zip(&folder.samples) {
                if let Ok(e) = r {
                    labels.push(s.1);
                    features.extend_from_slice(e);
                }
            }
            if labels.is_empty() {
                bail!(
                    "{}: none of the {} images could be embedded",
                    images.display(),
                    paths.len()
                );
            }
            let header = GalleryHeader {
                fingerprint: m.info.fingerprint.clone(),
                model: model
                    .model
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                dim: features.len() / labels.len(),
                rows: labels.len(),
                classes: folder.classes.clone(),
            };
            let n = labels.len();
            Gallery::new(header, labels, features)?.write(out)?;
            eprintln!(
                "{}: {n} images of {} classes (of {} files)",
                out.display(),
                folder.classes.len(),
                paths.len()
            );
            Ok(n == paths.len())
        }
        Command::Classify {
            model,
            gallery,
            images,
            k,
            temperature,
            topk,
            json,
        } => {
            if *k == 0 || temperature.is_nan() || *temperature <= 0.0 {
                bail!("--k must be positive and --temperature greater than 0");
            }
            let mut m = open_model(cli, &model.model)?;
            let g = Gallery::read(gallery)?;
            g.check_fingerprint(gallery, &m.info.fingerprint)?;
            let results = embed_all(&mut m, images, model.batch_size, true, "classifying")?;
            let kg = g.knn();
            let mut items = Vec::new();
            for (p, r) in images.iter().zip(&results) {
                let Ok(e) = r else {
                    items.push(json!({"image": p, "error": r.as_ref().err()}));
                    continue;
                };
                if e.len() != kg.dim {
                    bail!(
                        "{}: embedding dimension {} differs from the gallery's {}",
                        gallery.display(),
                        e.len(),
                        kg.dim
                    );
                }
                let neighbours = knn::nearest_neighbours(&kg, e, *k);
                let ranked = knn::vote(&neighbours[0], kg.labels, kg.num_classes, *temperature);
                let total: f32 = ranked.iter().map(|c| c.1).sum();
                let top: Vec<_> = ranked
                    .iter()
                    .take(*topk)
                    .map(|&(c, s)| json!({"class": g.header.classes[c], "index": c, "score": s, "share": s / total}))
                    .collect();
                items.push(json!({"image": p, "top": top}));
            }
            if *json {
                println!("{}", serde_json::to_string(&items)?);
            } else {
                for it in &items {
                    let Some(top) = it["top"].as_array() else {
                        continue;
                    };
                    let s: Vec<String> = top
                        .iter()
                        .map(|c| {
                            format!(
                                "{} {:.3}",
                                c["class"].as_str().unwrap_or("?"),
                                c["share"].as_f64().unwrap_or(0.0)
                            )
                        })
                        .collect();
                    println!("{}\t{}", it["image"].as_str().unwrap_or("?"), s.join("\t"));
                }
            }
            Ok(results.iter().all(Result::is_ok))
        }
        Command::Attention {
            model,
            image,
            out,
            threshold,
        } => {
            if !(0.0..=1.0).contains(threshold) {
                bail!("--threshold must be in [0, 1], got {threshold}");
            }
            let mut m = open_model(cli, &model.model)?;
            m.info.require_output(OUTPUT_ATTENTION)?;
            let img = load_rgb(image)?;
            let crop = eval_crop(&img, &m.info.eval);
            let mut input = vec![0f32; m.info.image_len()];
            normalize_into(&crop, &m.info.eval.mean, &m.info.eval.std, &mut input);
            let outs = m.run(&input, 1, &[OUTPUT_ATTENTION])?;
            let a = &outs[0];
            let heads = a.shape.get(1).copied().unwrap_or(0);
            let maps = AttentionMaps {
                attention: &a.data,
                heads,
                patch_size: m.info.vit.patch_size,
                crop: &crop,
                threshold: *threshold,
            };
            maps.check()
                .map_err(|why| anyhow::anyhow!("{}: {why}", model.model.display()))?;
            maps.render()
                .save(out)
                .with_context(|| format!("{}: cannot write the PNG", out.display()))?;
            eprintln!("{}: {heads} heads, threshold {threshold}", out.display());
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.threads > 0 {
        // Only fails when a pool exists already, which cannot happen this early.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(cli.threads)
            .build_global();
    }
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: some images could not be processed (see above)");
            ExitCode::from(1)
        }
        Err(e) => {
            let e = match e.downcast::<RuntimeError>() {
                Ok(r) => anyhow::Error::new(r),
                Err(e) => e,
            };
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
