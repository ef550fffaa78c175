//! `dino-run embed --latency`: the single-image latency a request to `dino-run serve` has
//! without HTTP, measured inside the process.
//!
//! With `-` as the image the paths come from stdin, one per line, and each is answered as
//! soon as its line arrives: a benchmark can then alternate this warm process with another
//! measurement image by image (see `bench/serve_bench.py`).

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use dino_core::onnx_meta::OUTPUT_EMBEDDING;
use dino_runtime::Model;
use dino_runtime::pipeline::{EmbedOptions, embed_one};

/// Longest path line read from stdin, newline included (Linux's PATH_MAX).
const MAX_LINE: u64 = 4096;

/// Times images one at a time on a warm model and keeps their milliseconds.
struct Timer<'m> {
    model: &'m mut Model,
    opts: EmbedOptions,
    warm: bool,
    ms: Vec<f64>,
}

impl<'m> Timer<'m> {
    fn new(model: &'m mut Model, normalize: bool) -> Self {
        let opts = EmbedOptions {
            batch_size: 1,
            normalize,
            output: OUTPUT_EMBEDDING,
        };
        Self {
            model,
            opts,
            warm: false,
            ms: Vec::new(),
        }
    }

    /// Embeds `path` alone, after an untimed run of the first image (a session's first
    /// run allocates its buffers); `latency\t<ms>\t<image>` goes to stderr.
    fn time(&mut self, path: &Path) -> Result<Vec<f32>, String> {
        if !self.warm {
            self.warm = embed_one(self.model, path, self.opts).is_ok();
        }
        let t = Instant::now();
        let r = embed_one(self.model, path, self.opts);
        let took = t.elapsed().as_secs_f64() * 1e3;
        match &r {
            Ok(_) => {
                eprintln!("latency\t{took:.3}\t{}", path.display());
                self.ms.push(took);
            }
            Err(e) => eprintln!("error: {e}"),
        }
        r.map_err(|e| e.to_string())
    }

    /// Prints the median and p99 (nearest rank) of the times so far.
    fn summary(mut self) {
        let ms = &mut self.ms;
        if ms.is_empty() {
            return;
        }
        ms.sort_by(f64::total_cmp);
        let rank = |q: usize| ms[(q * ms.len()).div_ceil(100).saturating_sub(1)];
        eprintln!(
            "latency: {} images, median {:.1} ms, p99 {:.1} ms",
            ms.len(),
            rank(50),
            rank(99)
        );
    }
}

/// `embed --latency`: each image alone and timed.
pub fn embed_timed(
    m: &mut Model,
    images: &[PathBuf],
    normalize: bool,
) -> Vec<Result<Vec<f32>, String>> {
    let mut timer = Timer::new(m, normalize);
    let results = images.iter().map(|p| timer.time(p)).collect();
    timer.summary();
    results
}

/// `embed --latency -`: paths from `input`, one per line, each answered on stdout (a text
/// line, or a JSON object per line with `json`) before the next line is read. Returns
/// whether every image was embedded.
pub fn embed_stream(
    m: &mut Model,
    mut input: impl BufRead,
    normalize: bool,
    json: bool,
) -> Result<bool> {
    let mut timer = Timer::new(m, normalize);
    let mut all_ok = true;
    let mut out = std::io::stdout().lock();
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        let n = Read::take(&mut input, MAX_LINE)
            .read_until(b'\n', &mut line)
            .context("stdin: cannot read the image paths")?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') && n as u64 == MAX_LINE {
            bail!("stdin: line {number} is longer than {MAX_LINE} bytes: not an image path");
        }
        let text = std::str::from_utf8(&line)
            .with_context(|| format!("stdin: line {number} is not UTF-8"))?
            .trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            continue;
        }
        let path = PathBuf::from(text);
        let r = timer.time(&path);
        all_ok &= r.is_ok();
        if json {
            let item = crate::answer_item(&path, &r, "embedding", |e| Ok(e.to_vec()))?;
            writeln!(out, "{item}")?;
        } else if let Ok(e) = &r {
            writeln!(out, "{}", crate::embedding_line(&path, e))?;
        }
        out.flush().context("stdout: cannot write")?;
    }
    timer.summary();
    Ok(all_ok)
}
