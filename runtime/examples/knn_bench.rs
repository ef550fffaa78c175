//! k-NN timing for one query against a 50,000 x 384 gallery (the size of an ImageNet-50k
//! style gallery of ViT-S features), and the time to read such a `.dgal` file.
//!
//!     cargo run --release -p dino-runtime --example knn_bench [-- THREADS]

use std::time::Instant;

use dino_core::knn::{l2_normalize_rows, nearest_neighbours, vote};
use dino_runtime::gallery::{Gallery, GalleryHeader};

fn main() -> anyhow::Result<()> {
    let threads: usize = std::env::args().nth(1).map_or(Ok(2), |s| s.parse())?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    let (rows, dim, classes) = (50_000, 384, 1000);
    let mut state = 42u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut features: Vec<f32> = (0..rows * dim).map(|_| next()).collect();
    l2_normalize_rows(&mut features, dim);
    let labels: Vec<usize> = (0..rows).map(|i| i % classes).collect();
    let header = GalleryHeader {
        fingerprint: "bench".into(),
        model: "bench.onnx".into(),
        dim,
        rows,
        classes: (0..classes).map(|c| format!("class{c}")).collect(),
        unlabelled: false,
        eval: None,
    };
    let path = std::env::temp_dir().join(format!("knn-bench-{}.dgal", std::process::id()));
    Gallery::new(header, labels, features)?.write(&path)?;
    let t = Instant::now();
    let g = Gallery::read(&path)?;
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    std::fs::remove_file(&path)?;

    let mut q: Vec<f32> = (0..dim).map(|_| next()).collect();
    l2_normalize_rows(&mut q, dim);
    let kg = g.knn();
    let mut times = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let n = nearest_neighbours(&kg, &q, 20);
        let ranked = vote(&n[0], kg.labels, kg.num_classes, 0.07);
        std::hint::black_box(ranked);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "one query vs {rows} x {dim}, k=20, {threads} threads: median {:.2} ms, min {:.2} ms; reading the {:.0} MiB gallery: {read_ms:.1} ms",
        times[times.len() / 2],
        times[0],
        (rows * dim * 4) as f64 / (1 << 20) as f64
    );
    Ok(())
}
