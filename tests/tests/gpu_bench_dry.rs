//! `bench/gpu.sh --dry-run`: the GPU benchmark script, run on CPU with a tiny model, must
//! produce every row of its table. The GPU run happens rarely and cannot be rerun cheaply, so a
//! broken row has to show up here first.

use std::process::Command;

use dino_tests::{bin, python, root, run_ok, scratch};

#[test]
fn dry_run_prints_every_row() {
    let out_dir = scratch("gpu-bench-dry");
    let bin_dir = bin("dino-train")
        .parent()
        .expect("binary folder")
        .to_path_buf();
    let py = python().get_program().to_owned();
    let stdout = run_ok(
        Command::new("bash")
            .arg(root().join("bench/gpu.sh"))
            .arg("--dry-run")
            .env("BIN", &bin_dir)
            .env("PYTHON", &py)
            .env("BENCH_OUT", &out_dir),
        "gpu.sh --dry-run",
    );

    let table: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ")).collect();
    for row in [
        "| dino-rs: training step |",
        "| pytorch-reference: training step |",
        "| dino-rs step breakdown |",
        "| dino-rs data pipeline, all on the CPU |",
        "| dino-rs data pipeline, CPU side (decode, crop, resize) |",
        "| dino-rs photometric stage on the cpu |",
        "| dino-rs train end to end (JPEG files, photometric = auto) |",
        "| k-NN smoke (cifar-tiny, 1 epoch) |",
    ] {
        assert!(
            table.iter().any(|l| l.starts_with(row)),
            "no row {row} in:\n{stdout}"
        );
    }
    assert!(stdout.contains("dino-rs / PyTorch reference: "), "{stdout}");

    // Every measured rate is a positive number (a NaN or 0 would mean a broken parser).
    let rows = std::fs::read_to_string(out_dir.join("rows.jsonl")).expect("rows.jsonl");
    let mut rates = 0;
    for line in rows.lines() {
        let row: serde_json::Value = serde_json::from_str(line).expect("one JSON row per line");
        for key in ["images_per_s", "samples_per_s"] {
            if let Some(v) = row.get(key) {
                let v = v.as_f64().unwrap_or(f64::NAN);
                assert!(v.is_finite() && v > 0.0, "{key} = {v} in {line}");
                rates += 1;
            }
        }
    }
    assert!(rates >= 6, "only {rates} rates in:\n{rows}");
    let _ = std::fs::remove_dir_all(&out_dir);
}
