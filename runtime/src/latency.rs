//! `dino-run embed --latency`: the single-image latency a request to `dino-run serve` has
//! without HTTP, measured inside the process.

use std::path::PathBuf;
use std::time::Instant;

use dino_core::onnx_meta::OUTPUT_EMBEDDING;
use dino_runtime::Model;
use dino_runtime::pipeline::{EmbedOptions, embed_one};

/// `embed --latency`: each image alone and timed, after an untimed run of the first one
/// (a session's first run allocates its buffers).
pub fn embed_timed(
    m: &mut Model,
    images: &[PathBuf],
    normalize: bool,
) -> Vec<Result<Vec<f32>, String>> {
    let opts = EmbedOptions {
        batch_size: 1,
        normalize,
        output: OUTPUT_EMBEDDING,
    };
    if let Some(first) = images.first() {
        let _ = embed_one(m, first, opts);
    }
    let mut ms = Vec::with_capacity(images.len());
    let mut results = Vec::with_capacity(images.len());
    for p in images {
        let t = Instant::now();
        let r = embed_one(m, p, opts);
        let took = t.elapsed().as_secs_f64() * 1e3;
        match &r {
            Ok(_) => {
                eprintln!("latency\t{took:.3}\t{}", p.display());
                ms.push(took);
            }
            Err(e) => eprintln!("error: {e}"),
        }
        results.push(r.map_err(|e| e.to_string()));
    }
    ms.sort_by(f64::total_cmp);
    // Nearest-rank percentiles.
    let rank = |q: usize| ms[(q * ms.len()).div_ceil(100).saturating_sub(1)];
    if !ms.is_empty() {
        eprintln!(
            "latency: {} images, median {:.1} ms, p99 {:.1} ms",
            ms.len(),
            rank(50),
            rank(99)
        );
    }
    results
}
