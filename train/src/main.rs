//! `dino-train`: thin entry point; arguments become configs in `cli`, the work is in the
//! library.

mod cli;

use anyhow::{Context, Result};
use clap::Parser;
use dino_core::EvalTransform;

use cli::{AttentionArgs, BenchArgs, Cli, Command, KnnArgs, LinearArgs, PlotArgs, TrainArgs};
use dino_train::config::TrainConfig;
use dino_train::{attention, bench, device, knn_eval, knn_features, linear, plot, trainer};

fn main() {
    // CPU tuning of the process (see both functions); DINO_CPU_DEFAULTS=1 leaves the
    // defaults, for side-by-side measurements.
    if std::env::var_os("DINO_CPU_DEFAULTS").is_none() {
        device::flush_denormals();
        device::retain_freed_memory();
    }
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train(a),
        Command::Knn(a) => knn(a),
        Command::Bench(a) => bench(a),
        Command::Import(a) => {
            println!("{}", a.run()?);
            Ok(())
        }
        Command::Attention(a) => attention(a),
        Command::Plot(a) => plot(a),
        Command::Linear(a) => linear(a),
    }
}

fn attention(a: AttentionArgs) -> Result<()> {
    let device = device::select_device(a.device)?;
    let opts = attention::AttentionOptions {
        img_size: a.img_size,
        threshold: a.threshold,
        quiet: a.quiet,
    };
    let dirs = attention::run(&a.checkpoint, &a.image, &a.out, &opts, device)?;
    eprintln!(
        "attention maps of {} image(s) written to {}",
        dirs.len(),
        a.out.display()
    );
    Ok(())
}

fn plot(a: PlotArgs) -> Result<()> {
    let r = plot::plot_run(&a.run)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "{} chart(s) written to {}",
        r.files.len(),
        a.run.join(plot::PLOT_DIR).display()
    );
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let cfg = TrainConfig::resolve(a.train.config.as_deref(), &a.train.overrides)?;
    if let Some(n) = a
        .train
        .nproc_per_node
        .filter(|_| std::env::var_os("RANK").is_none())
    {
        return launch(&cfg, n);
    }
    if let Some(report) = bench::bench_step(&cfg, a.warmup, a.steps, a.breakdown)? {
        println!("{report}");
    }
    Ok(())
}

fn train(a: TrainArgs) -> Result<()> {
    let cfg = TrainConfig::resolve(a.config.as_deref(), &a.overrides)?;
    if a.dry_run {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    anyhow::ensure!(
        !cfg.run.data_path.as_os_str().is_empty(),
        "no data_path: give --data_path <folder of images> or set it in the config file"
    );
    if let Some(n) = a
        .nproc_per_node
        .filter(|_| std::env::var_os("RANK").is_none())
    {
        return launch(&cfg, n);
    }
    let s = trainer::train(
        &cfg,
        &trainer::RunOptions {
            resume: a.resume,
            quiet: a.quiet,
            stop_after: a.stop_after,
            time_limit: a
                .time_limit
                .map(|m| std::time::Duration::from_secs_f64(m * 60.0)),
        },
    )?;
    if !s.wrote_files {
        return Ok(());
    }
    if s.skipped_files > 0 {
        eprintln!("{} unreadable file(s) were skipped", s.skipped_files);
    }
    if s.finished {
        eprintln!("teacher backbone written to {}", s.teacher_path.display());
    } else if s.teacher_written && s.epochs_run == 0 {
        eprintln!(
            "no epoch run (--stop-after 0): the starting teacher backbone written to {}",
            s.teacher_path.display()
        );
    } else if s.time_limited {
        eprintln!(
            "time limit reached after {} epoch(s): teacher backbone written to {}; continue with --resume --output_dir {}",
            s.epochs_run,
            s.teacher_path.display(),
            cfg.run.output_dir.display()
        );
    } else {
        eprintln!(
            "stopped after {} epoch(s); continue with --resume --output_dir {}",
            s.epochs_run,
            cfg.run.output_dir.display()
        );
    }
    Ok(())
}

/// `--nproc_per_node N`: this command again in N rank processes.
fn launch(cfg: &TrainConfig, nproc: usize) -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let mut kept = Vec::new();
    while let Some(a) = args.next() {
        let text = a.to_string_lossy();
        if text == "--nproc_per_node" {
            args.next();
        } else if !text.starts_with("--nproc_per_node=") {
            kept.push(a);
        }
    }
    let cpu = match cfg.run.device {
        device::DeviceSpec::Cpu => true,
        device::DeviceSpec::Auto => !tch::Cuda::is_available(),
        device::DeviceSpec::Cuda(_) => false,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    dino_train::launch::Launch {
        program: std::env::current_exe().context("cannot find this program's path")?,
        args: kept,
        nproc,
        threads_per_rank: cpu.then(|| (cores / nproc.max(1)).max(1)),
    }
    .run()?;
    Ok(())
}

fn knn(a: KnnArgs) -> Result<()> {
    anyhow::ensure!(
        a.nb_knn.iter().all(|&k| k > 0),
        "--nb_knn: every k must be positive (got {:?})",
        a.nb_knn
    );
    anyhow::ensure!(
        a.temperature > 0.0,
        "--temperature must be greater than 0 (got {})",
        a.temperature
    );
    let feats = match &a.load_features {
        Some(dir) => knn_features::KnnFeatures::load(dir)
            .with_context(|| format!("--load_features {}", dir.display()))?,
        None => knn_extract(&a)?,
    };
    if let Some(dir) = &a.dump_features {
        let p = feats.dump(dir)?;
        if !a.quiet {
            eprintln!("features written to {}", p.display());
        }
    }
    let hits = feats.hits(&a.nb_knn, a.temperature)?;
    let (ntrain, nval) = (feats.train_labels.len(), feats.test_labels.len());
    for h in hits {
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "k": h.k, "temperature": a.temperature,
                    "top1": h.top1_percent(), "top5": h.top5_percent(),
                    "top1_correct": h.top1, "top5_correct": h.top5,
                    "train_images": ntrain, "val_images": nval, "skipped": feats.skipped,
                    "resize": feats.eval.as_ref().map(|t| t.resize_size),
                    "crop": feats.eval.as_ref().map(|t| t.crop_size),
                })
            );
        } else {
            println!(
                "k-NN (k={}, T={}): top-1 {:.2}%  top-5 {:.2}%  ({ntrain} train / {nval} val images, {} skipped)",
                h.k,
                a.temperature,
                h.top1_percent(),
                h.top5_percent(),
                feats.skipped
            );
        }
    }
    Ok(())
}

/// Runs the backbone of `--pretrained_weights` over the train and val folders.
fn knn_extract(a: &KnnArgs) -> Result<knn_features::KnnFeatures> {
    let (train, val) = match (&a.data_path, &a.train, &a.val) {
        (Some(d), _, _) => (d.join("train"), d.join("val")),
        (None, Some(t), Some(v)) => (t.clone(), v.clone()),
        _ => anyhow::bail!("give --data_path DIR (with train/ and val/) or --train and --val"),
    };
    let weights = a
        .pretrained_weights
        .as_deref()
        .context("give --pretrained_weights (or --load_features)")?;
    let device = device::select_device(a.device)?;
    let key = a.checkpoint_key.map(|k| k.as_str());
    let loaded = dino_models::io::load_pretrained(weights, key, device)
        .with_context(|| format!("cannot load {}", weights.display()))?;
    let t = knn_transform(a, &loaded);
    Ok(knn_eval::extract_pair(
        &loaded.model,
        &train,
        &val,
        &t,
        device,
        a.quiet,
        None,
    )?)
}

/// The eval transform of `knn`: the checkpoint's, `--native`, or `--resize`/`--crop`.
fn knn_transform(a: &KnnArgs, loaded: &dino_models::io::LoadedBackbone) -> EvalTransform {
    let img = loaded.model.cfg.img_size;
    let base = loaded
        .eval
        .clone()
        .unwrap_or_else(|| EvalTransform::standard(img));
    if a.native {
        return EvalTransform {
            resize_size: img,
            crop_size: img,
            ..base
        };
    }
    let crop = a.crop.unwrap_or(base.crop_size);
    let resize = a.resize.unwrap_or(if a.crop.is_some() {
        EvalTransform::standard(crop).resize_size
    } else {
        base.resize_size
    });
    EvalTransform {
        resize_size: resize,
        crop_size: crop,
        ..base
    }
}

fn linear(a: LinearArgs) -> Result<()> {
    let (train, val) =
        linear::data_folders(a.data_path.as_deref(), a.train.as_deref(), a.val.as_deref())
            .or_else(|e| match (a.evaluate, &a.val) {
                // --evaluate reads only the val folder.
                (true, Some(v)) => Ok((std::path::PathBuf::new(), v.clone())),
                _ => Err(e),
            })?;
    let cfg = linear::LinearConfig {
        pretrained_weights: a.pretrained_weights,
        checkpoint_key: a.checkpoint_key,
        train,
        val,
        output_dir: a.output_dir,
        n_last_blocks: a.n_last_blocks,
        avgpool_patchtokens: a.avgpool_patchtokens,
        epochs: a.epochs,
        lr: a.lr,
        batch_size: a.batch_size_per_gpu,
        val_freq: a.val_freq,
        protocol: if a.cached_features {
            linear::Protocol::CachedFeatures
        } else {
            linear::Protocol::Augmented
        },
        seed: a.seed,
        device: device::select_device(a.device)?,
        quiet: a.quiet,
    };
    let top5 = |t: Option<f64>| t.map_or(String::new(), |t| format!("  top-5 {t:.2}%"));
    if a.evaluate {
        let probe = a
            .linear_weights
            .unwrap_or_else(|| cfg.output_dir.join(linear::PROBE_FILE));
        let (acc, head) = linear::evaluate_saved(&cfg, &probe)?;
        println!(
            "linear probe {} (n_last_blocks={}, avgpool_patchtokens={}): top-1 {:.2}%{}  on {} val images",
            probe.display(),
            head.config.n_last_blocks,
            head.config.avgpool_patchtokens,
            acc.top1,
            top5(acc.top5),
            acc.images
        );
        return Ok(());
    }
    let s = linear::train_probe(&cfg)?;
    println!(
        "linear probe (n_last_blocks={}, avgpool_patchtokens={}): best top-1 {:.2}%{}  at epoch {} of {}  ({} train / {} val images, {} skipped)",
        s.recipe.n_last_blocks,
        s.recipe.avgpool_patchtokens,
        s.best.top1,
        top5(s.best.top5),
        s.best_epoch + 1,
        cfg.epochs,
        s.train_images,
        s.best.images,
        s.skipped
    );
    eprintln!("probe written to {}", s.probe.display());
    Ok(())
}
