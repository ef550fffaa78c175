//! `dino-run`: embeddings, k-NN classification and attention maps of DINO models exported
//! by `dino-export`, on ONNX Runtime alone (no libtorch).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use dino_core::image_io::load_rgb;
use dino_core::image_set::ImageSet;
use dino_core::onnx_meta::{OUTPUT_ATTENTION, OUTPUT_EMBEDDING, OUTPUT_LOGITS};
use dino_runtime::attention::{DEFAULT_THRESHOLD, check_threshold, montage_png};
use dino_runtime::engine::{Engine, EngineOptions};
use dino_runtime::eval::{Counts, DEFAULT_NB_KNN, EvalSet, report};
use dino_runtime::gallery::{Gallery, GalleryHeader, UNLABELLED_CLASS};
use dino_runtime::knn_answer::{ClassSource, KnnParams, nearest_images};
use dino_runtime::pipeline::{EmbedOptions, embed_paths, prepare};
use dino_runtime::serve;

mod latency;
mod serve_args;
use dino_runtime::{Model, RuntimeError};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use serve_args::ServeArgs;

const EXAMPLES: &str = "\
Examples:
  dino-run embed --model model.onnx photo.jpg other.png --json
  ls *.jpg | dino-run embed --latency --model model.onnx -   (warm one-image latency of
      each path read from stdin, answered line by line)
  dino-run index --model model.onnx --images data/train --out gallery.dgal
  dino-run classify --model model.onnx --gallery gallery.dgal photo.jpg --k 20 --topk 5
  dino-run classify --model classifier.onnx photo.jpg --topk 3   (a model exported with
      --linear-head: softmax of its `logits`, no gallery needed)
  dino-run search --model model.onnx --gallery gallery.dgal photo.jpg --topk 5
  dino-run index --model model.onnx --images holiday-photos/ --out photos.dgal   (unlabelled)
  dino-run eval --model model.onnx --gallery gallery.dgal --images data/val --nb_knn 10 20
  dino-run attention --model model.onnx photo.jpg --out attn.png
  dino-run serve --model model.onnx --gallery gallery.dgal --bind 127.0.0.1:8080
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

/// What `classify` and `search` take: a model, its gallery, images.
#[derive(Args)]
struct GalleryArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The gallery built by `dino-run index` with this model (required by `search`; for
    /// `classify`, optional with a model exported with --linear-head, and preferred).
    #[arg(long, value_name = "GALLERY.dgal")]
    gallery: Option<PathBuf>,
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// JSON output: [{"image", "top" | "neighbours" | "error"}].
    #[arg(long)]
    json: bool,
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
        /// Time each image on its own (read, decode, preprocess, inference, one after the
        /// other, as one request to `dino-run serve`), after one untimed warm-up run:
        /// `latency\t<ms>\t<image>` per image on stderr, then the median and p99. Same
        /// embeddings; no batching, no overlap. With `-` as the only image, the paths are
        /// read from stdin, one per line, and each is answered (stdout flushed) before the
        /// next line is read; --json then prints one JSON object per line.
        #[arg(long)]
        latency: bool,
    },
    /// Embed a folder of images into a gallery file. An ImageFolder (every image in a class
    /// folder, <dir>/<class>/<image>) keeps its classes; any other folder, flat or nested,
    /// gives an unlabelled gallery, which answers `search` but not `classify`.
    Index {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, value_name = "DIR")]
        images: PathBuf,
        #[arg(long, value_name = "GALLERY.dgal")]
        out: PathBuf,
    },
    /// Classify images: with --gallery by the weighted k-NN vote against it (as
    /// `dino-train knn`), without by the softmax of the model's `logits` (a linear probe
    /// exported with `dino-export --linear-head`). --k and --temperature are the vote's.
    Classify {
        #[command(flatten)]
        query: GalleryArgs,
        /// Neighbours voting.
        #[arg(long, default_value_t = 20)]
        k: usize,
        /// Temperature of the vote weights exp(similarity / T).
        #[arg(long, default_value_t = 0.07)]
        temperature: f32,
        /// Classes printed per image.
        #[arg(long, default_value_t = 5)]
        topk: usize,
    },
    /// The gallery images nearest to each image (cosine similarity of the embeddings).
    Search {
        #[command(flatten)]
        query: GalleryArgs,
        /// Neighbours printed per image.
        #[arg(long, default_value_t = 5)]
        topk: usize,
    },
    /// k-NN top-1/top-5 of a labelled ImageFolder against a gallery, per k (as `dino-train
    /// knn` with the gallery as the train set). Folder classes are matched to the gallery's
    /// by name.
    Eval(EvalArgs),
    /// Serve embeddings, classification, search and attention maps over HTTP with dynamic
    /// batching (SIGTERM drains and exits, SIGHUP reloads the model and gallery).
    Serve(ServeArgs),
    /// Render the last block's CLS attention (per head, mean, thresholded masks) as a PNG.
    Attention {
        #[command(flatten)]
        model: ModelArgs,
        image: PathBuf,
        #[arg(long, value_name = "OUT.png")]
        out: PathBuf,
        /// Share of the attention mass the masks keep (official: 0.6).
        #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
        threshold: f32,
    },
}

fn engine_options(cli: &Cli) -> EngineOptions {
    EngineOptions {
        ort_lib: cli.ort_lib.clone(),
        device: cli.device.clone(),
        threads: cli.threads,
        no_cache: cli.no_cache,
    }
}

fn open_model(cli: &Cli, path: &Path) -> Result<Model> {
    Ok(Engine::new(&engine_options(cli))?.open(path)?)
}

/// One image's embedding, or why it has none.
type Embedded = Result<Vec<f32>, String>;

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
    (batch, output, normalize): (usize, &'static str, bool),
    what: &str,
) -> Result<Vec<Embedded>> {
    let pb = (paths.len() > batch).then(|| progress(paths.len(), what));
    let mut results: Vec<Embedded> = vec![Err(String::new()); paths.len()];
    embed_paths(
        model,
        paths,
        EmbedOptions {
            batch_size: batch,
            normalize,
            output,
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

impl GalleryArgs {
    /// Embeds the images, answers `key` for each with `answer`, prints JSON or per image a
    /// line of `(name, value, decimals)` columns.
    fn answer<T: serde::Serialize>(
        &self,
        cli: &Cli,
        key: &str,
        columns: (&str, &str, usize),
        answer: impl Fn(&Gallery, &[f32]) -> Result<T, RuntimeError>,
    ) -> Result<bool> {
        let path = self
            .gallery
            .as_ref()
            .context("--gallery GALLERY.dgal is required (built by `dino-run index`)")?;
        let mut m = open_model(cli, &self.model.model)?;
        let g = Gallery::read(path)?;
        g.check_model(path, &m.info.fingerprint, &m.info.eval)?;
        let run = (self.model.batch_size, OUTPUT_EMBEDDING, true);
        let results = embed_all(&mut m, &self.images, run, "embedding")?;
        let items = answer_each(&self.images, &results, key, |e| answer(&g, e))
            .with_context(|| path.display().to_string())?;
        print_items(&items, self.json, key, columns)?;
        Ok(results.iter().all(Result::is_ok))
    }

    /// `classify`: the k-NN vote with a gallery, else the model's linear probe.
    fn classify(&self, cli: &Cli, p: KnnParams, topk: usize) -> Result<bool> {
        const COLUMNS: (&str, &str, usize) = ("class", "share", 3);
        if self.gallery.is_some() {
            return self.answer(cli, "top", COLUMNS, |g, e| {
                ClassSource::Knn(g, p).top(e, topk)
            });
        }
        let mut m = open_model(cli, &self.model.model)?;
        let Some(head) = m.info.linear.clone() else {
            return Err(RuntimeError::NoClassifier {
                path: self.model.model.clone(),
            }
            .into());
        };
        let run = (self.model.batch_size, OUTPUT_LOGITS, false);
        let results = embed_all(&mut m, &self.images, run, "classifying")?;
        let items = answer_each(&self.images, &results, "top", |l| {
            ClassSource::Linear(&head).top(l, topk)
        })
        .with_context(|| self.model.model.display().to_string())?;
        print_items(&items, self.json, "top", COLUMNS)?;
        Ok(results.iter().all(Result::is_ok))
    }
}

/// One JSON item per image: `key` holding `answer(embedding)`, or the image's error.
fn answer_each<T: serde::Serialize>(
    images: &[PathBuf],
    results: &[Embedded],
    key: &str,
    answer: impl Fn(&[f32]) -> Result<T, RuntimeError>,
) -> Result<Vec<serde_json::Value>> {
    let items = images.iter().zip(results);
    items
        .map(|(p, r)| answer_item(p, r, key, &answer))
        .collect()
}

/// The JSON item of one image: `key` holding `answer(embedding)`, or the image's error.
fn answer_item<T: serde::Serialize>(
    image: &Path,
    result: &Embedded,
    key: &str,
    answer: impl Fn(&[f32]) -> Result<T, RuntimeError>,
) -> Result<serde_json::Value> {
    Ok(match result {
        Ok(e) => json!({"image": image, key: answer(e)?}),
        Err(e) => json!({"image": image, "error": e}),
    })
}

/// The text line of one embedding: the image, a tab, the values separated by spaces.
fn embedding_line(image: &Path, embedding: &[f32]) -> String {
    let v: Vec<String> = embedding.iter().map(|x| x.to_string()).collect();
    format!("{}\t{}", image.display(), v.join(" "))
}

/// Prints JSON items, or per image a tab-separated line over the entries of `key`, each
/// as its `name` and its `value` with `decimals` (the same for k-NN and linear answers).
fn print_items(
    items: &[serde_json::Value],
    json: bool,
    key: &str,
    (name, value, decimals): (&str, &str, usize),
) -> Result<()> {
    let fields = |c: &serde_json::Value| {
        format!(
            "{} {:.decimals$}",
            c[name].as_str().unwrap_or("?"),
            c[value].as_f64().unwrap_or(0.0)
        )
    };
    if json {
        println!("{}", serde_json::to_string(items)?);
        return Ok(());
    }
    for it in items {
        let Some(list) = it[key].as_array() else {
            continue;
        };
        let s: Vec<String> = list.iter().map(fields).collect();
        println!("{}\t{}", it["image"].as_str().unwrap_or("?"), s.join("\t"));
    }
    Ok(())
}

fn cmd_embed(cli: &Cli, model: &ModelArgs, images: &[PathBuf], flags: EmbedFlags) -> Result<bool> {
    let EmbedFlags { json, raw, latency } = flags;
    let from_stdin = images.iter().any(|p| p.as_os_str() == "-");
    if from_stdin && !(latency && images.len() == 1) {
        bail!("`-` (image paths from stdin) is taken by `embed --latency` as its only image");
    }
    let mut m = open_model(cli, &model.model)?;
    if from_stdin {
        return latency::embed_stream(&mut m, std::io::stdin().lock(), !raw, json);
    }
    let results = if latency {
        latency::embed_timed(&mut m, images, !raw)
    } else {
        let run = (model.batch_size, OUTPUT_EMBEDDING, !raw);
        embed_all(&mut m, images, run, "embedding")?
    };
    if json {
        let items = answer_each(images, &results, "embedding", |e| Ok(e.to_vec()))?;
        println!("{}", serde_json::to_string(&items)?);
    } else {
        for (p, r) in images.iter().zip(&results) {
            if let Ok(e) = r {
                println!("{}", embedding_line(p, e));
            }
        }
    }
    Ok(results.iter().all(Result::is_ok))
}

#[derive(Clone, Copy)]
struct EmbedFlags {
    json: bool,
    raw: bool,
    latency: bool,
}

fn cmd_index(cli: &Cli, model: &ModelArgs, images: &Path, out: &Path) -> Result<bool> {
    dino_core::st::ensure_distinct(&model.model, out)?;
    let set = ImageSet::scan(images)?;
    eprintln!("{}: {}", images.display(), set.describe());
    let mut m = open_model(cli, &model.model)?;
    let paths: Vec<PathBuf> = set.samples.iter().map(|s| s.0.clone()).collect();
    let run = (model.batch_size, OUTPUT_EMBEDDING, true);
    let results = embed_all(&mut m, &paths, run, "indexing")?;
    let (mut labels, mut features, mut kept) = (Vec::new(), Vec::new(), Vec::new());
    for (r, s) in results.iter().zip(&set.samples) {
        if let Ok(e) = r {
            labels.push(s.1.unwrap_or(0));
            features.extend_from_slice(e);
            kept.push(s.0.to_string_lossy().into_owned());
        }
    }
    if labels.is_empty() {
        bail!(
            "{}: none of the {} images could be embedded",
            images.display(),
            paths.len()
        );
    }
    let (classes, unlabelled) = match set.classes() {
        Some(c) => (c.to_vec(), false),
        None => (vec![UNLABELLED_CLASS.to_string()], true),
    };
    let header = GalleryHeader {
        fingerprint: m.info.fingerprint.clone(),
        model: model
            .model
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        dim: features.len() / labels.len(),
        rows: labels.len(),
        classes,
        unlabelled,
        eval: Some(m.info.eval.clone()),
    };
    let n = labels.len();
    Gallery::new(header, labels, features)?
        .with_paths(kept)?
        .write(out)?;
    let what = match set.classes() {
        Some(c) => format!("{} classes", c.len()),
        None => "no classes (unlabelled: search only)".into(),
    };
    eprintln!(
        "{}: {n} images of {what} (of {} files)",
        out.display(),
        paths.len()
    );
    Ok(n == paths.len())
}

/// `eval`: embeds the labelled folder and prints the k-NN accuracy per k.
fn cmd_eval(cli: &Cli, a: &EvalArgs) -> Result<bool> {
    KnnParams {
        k: a.nb_knn.iter().copied().min().unwrap_or(0),
        temperature: a.temperature as f32,
    }
    .check()
    .map_err(|why| anyhow::anyhow!("--{why}"))?;
    let mut m = open_model(cli, &a.model.model)?;
    let g = Gallery::read(&a.gallery)?;
    g.check_model(&a.gallery, &m.info.fingerprint, &m.info.eval)?;
    let set = EvalSet::scan(&a.images, &g, &a.gallery)?;
    let run = (a.model.batch_size, OUTPUT_EMBEDDING, true);
    let results = embed_all(&mut m, &set.paths, run, "evaluating")?;
    let embedded: Vec<Option<Vec<f32>>> = results.into_iter().map(Result::ok).collect();
    let skipped = embedded.iter().filter(|e| e.is_none()).count();
    let hits = dino_runtime::eval::evaluate(&g, &set, &embedded, &a.nb_knn, a.temperature as f32)?;
    let counts = Counts {
        gallery: g.header.rows,
        images: set.paths.len() - skipped,
        skipped,
    };
    for h in hits {
        println!("{}", report(&h, a.temperature, counts, a.json));
    }
    Ok(skipped == 0)
}

const EVAL_EXAMPLES: &str = "\
Examples:
  dino-run index --model model.onnx --images data/train --out train.dgal
  dino-run eval --model model.onnx --gallery train.dgal --images data/val
  dino-run eval --model model.onnx --gallery train.dgal --images data/val --k 20 --json

Exit status 1 when some images could not be read (they are counted as skipped).";

/// The arguments of `eval`.
#[derive(Args)]
#[command(after_help = EVAL_EXAMPLES)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A labelled gallery written by `dino-run index` with this model.
    #[arg(long, value_name = "GALLERY.dgal")]
    gallery: PathBuf,
    /// Labelled query images: an ImageFolder.
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Neighbours voting; several values are evaluated from one search.
    #[arg(
        long = "nb_knn",
        visible_alias = "k",
        value_name = "K",
        num_args = 1..,
        default_values_t = DEFAULT_NB_KNN
    )]
    nb_knn: Vec<usize>,
    /// Temperature of the vote weights exp(similarity / T).
    #[arg(long, default_value_t = 0.07)]
    temperature: f64,
    /// One JSON object per k (one per line).
    #[arg(long)]
    json: bool,
}

fn cmd_attention(
    cli: &Cli,
    model: &ModelArgs,
    image: &Path,
    out: &Path,
    threshold: f32,
) -> Result<bool> {
    check_threshold(threshold).map_err(|why| anyhow::anyhow!("--{why}"))?;
    dino_core::st::ensure_distinct(&model.model, out)?;
    dino_core::st::ensure_distinct(image, out)?;
    let mut m = open_model(cli, &model.model)?;
    m.info.require_output(OUTPUT_ATTENTION)?;
    let (crop, input) = prepare(&load_rgb(image)?, &m.info.eval);
    let outs = m.run(&input, 1, &[OUTPUT_ATTENTION])?;
    let a = &outs[0];
    let heads = a.shape.get(1).copied().unwrap_or(0);
    let png = montage_png(&a.data, heads, m.info.vit.patch_size, &crop, threshold)
        .map_err(|why| anyhow::anyhow!("{}: {why}", model.model.display()))?;
    dino_core::st::write_bytes_atomic(out, &png)
        .with_context(|| format!("{}: cannot write the PNG", out.display()))?;
    eprintln!("{}: {heads} heads, threshold {threshold}", out.display());
    Ok(true)
}

fn cmd_serve(cli: &Cli, a: &ServeArgs) -> Result<bool> {
    serve::run(a.options(engine_options(cli))?)?;
    Ok(true)
}

fn run(cli: &Cli) -> Result<bool> {
    match &cli.command {
        Command::Embed {
            model,
            images,
            json,
            raw,
            latency,
        } => {
            let flags = EmbedFlags {
                json: *json,
                raw: *raw,
                latency: *latency,
            };
            cmd_embed(cli, model, images, flags)
        }
        Command::Index { model, images, out } => cmd_index(cli, model, images, out),
        Command::Classify {
            query,
            k,
            temperature,
            topk,
        } => {
            let p = KnnParams {
                k: *k,
                temperature: *temperature,
            };
            p.check().map_err(|why| anyhow::anyhow!("--{why}"))?;
            query.classify(cli, p, *topk)
        }
        Command::Search { query, topk } => {
            query.answer(cli, "neighbours", ("path", "similarity", 4), |g, e| {
                nearest_images(g, e, *topk)
            })
        }
        Command::Attention {
            model,
            image,
            out,
            threshold,
        } => cmd_attention(cli, model, image, out, *threshold),
        Command::Eval(a) => cmd_eval(cli, a),
        Command::Serve(a) => cmd_serve(cli, a),
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
