//! `dino-train plot` renders a metrics log into PNG charts of the right size, and still
//! plots (with a warning) a log with a NaN row and a truncated last line.

use std::path::Path;
use std::process::{Command, Output};

use dino_tests::{bin, scratch};

const CHARTS: [&str; 6] = ["loss", "lr", "wd", "momentum", "teacher_temp", "knn_top1"];

/// A metrics log of `steps` step rows (one epoch per 10 steps) with a k-NN row per epoch.
fn log_text(steps: usize) -> String {
    let mut s = String::new();
    for i in 1..=steps {
        let f = i as f64 / steps as f64;
        s.push_str(&format!(
            "{{\"kind\":\"step\",\"epoch\":{},\"step\":{i},\"loss\":{},\"lr\":{},\"wd\":{},\"momentum\":{},\"teacher_temp\":{},\"teacher_entropy\":3.0,\"teacher_mean_entropy\":5.0,\"images_per_s\":100.0}}\n",
            (i - 1) / 10,
            9.0 - 3.0 * f,
            5e-4 * f,
            0.04 + 0.36 * f,
            0.996 + 0.004 * f,
            0.04 + 0.03 * f
        ));
        if i % 10 == 0 {
            s.push_str(&format!(
                "{{\"kind\":\"epoch\",\"epoch\":{},\"step\":{i},\"loss\":7.0,\"seconds\":1.0,\"images_per_s\":100.0,\"skipped_files\":0}}\n{{\"kind\":\"knn\",\"epoch\":{},\"step\":{i},\"top1\":{},\"top5\":50.0,\"k\":20}}\n",
                i / 10 - 1,
                i / 10 - 1,
                10.0 + 2.0 * (i / 10) as f64
            ));
        }
    }
    s
}

fn plot(run: &Path) -> Output {
    let out = Command::new(bin("dino-train"))
        .args(["plot", "--run"])
        .arg(run)
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&b[12..16], b"IHDR");
    let be = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    (be(16), be(20))
}

fn check_charts(run: &Path) {
    for c in CHARTS {
        let p = run.join("plots").join(format!("{c}.png"));
        assert_eq!(png_size(&p), (800, 500), "{c}");
        // A chart, not a blank canvas.
        let img = image::open(&p).unwrap().to_rgb8();
        let coloured = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(coloured > 2000, "{c}: {coloured} non-white pixels");
    }
}

#[test]
fn a_log_becomes_charts_of_the_right_size() {
    let run = scratch("plot-clean");
    std::fs::write(run.join("metrics.jsonl"), log_text(40)).unwrap();
    let o = plot(&run);
    assert!(o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).contains("warning"));
    check_charts(&run);
    std::fs::remove_dir_all(run).ok();
}

#[test]
fn nan_rows_and_a_truncated_last_line_still_plot_with_a_warning() {
    let run = scratch("plot-damaged");
    let mut text = log_text(30);
    // serde_json writes a NaN loss as null; Python's json writes a bare NaN.
    text.push_str("{\"kind\":\"step\",\"epoch\":2,\"step\":31,\"loss\":null,\"lr\":1e-4,\"wd\":0.4,\"momentum\":1.0,\"teacher_temp\":0.07,\"teacher_entropy\":3.0,\"teacher_mean_entropy\":5.0,\"images_per_s\":100.0}\n");
    text.push_str("{\"kind\":\"step\",\"epoch\":2,\"step\":32,\"loss\":NaN,\"lr\":1e-4}\n");
    text.push_str("{\"kind\":\"step\",\"epoch\":3,\"step\":33,\"lo");
    std::fs::write(run.join("metrics.jsonl"), text).unwrap();
    let o = plot(&run);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning") && err.contains("skipped 2 line(s)"),
        "{err}"
    );
    assert!(err.contains("null"), "{err}");
    check_charts(&run);
    std::fs::remove_dir_all(run).ok();
}

#[test]
fn a_missing_or_empty_log_is_an_error() {
    let run = scratch("plot-missing");
    let o = plot(&run);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("metrics.jsonl"));
    std::fs::write(run.join("metrics.jsonl"), "{\"kind\":\"step\",\"st").unwrap();
    let o = plot(&run);
    assert!(!o.status.success());
    std::fs::remove_dir_all(run).ok();
}

#[test]
fn values_near_the_float_limit_are_dropped_and_plotting_ends() {
    let run = scratch("plot-huge");
    let mut text = log_text(30);
    for (i, v) in [(31, "1e308"), (32, "-1.7e308"), (33, "2.5e-308")].iter() {
        text.push_str(&format!(
            "{{\"kind\":\"step\",\"epoch\":3,\"step\":{i},\"loss\":{v},\"lr\":{v},\"wd\":0.4,\"momentum\":1.0,\"teacher_temp\":0.07}}\n"
        ));
    }
    std::fs::write(run.join("metrics.jsonl"), text).unwrap();
    // Before the fix the tick search never ended; `timeout` turns a hang into a failure.
    let o = Command::new("timeout")
        .arg("120")
        .arg(bin("dino-train"))
        .args(["plot", "--run"])
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{:?}: {err}", o.status);
    assert!(err.contains("out-of-range"), "{err}");
    check_charts(&run);
    std::fs::remove_dir_all(run).ok();
}
