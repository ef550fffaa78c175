//! `dino-train plot`: training curves from the JSONL metrics log as PNG files.
//!
//! One chart per quantity in `<run>/plots/`: `loss.png`, `lr.png`, `wd.png`,
//! `momentum.png`, `teacher_temp.png` (per logged step) and `knn_top1.png` (per k-NN
//! evaluation, when the run made any). The log is read leniently: a line that does not
//! parse (a truncated last line of a killed run, a `NaN` literal) is skipped, a missing or
//! `null` value (how JSON writers store NaN) drops that point only, and both are reported
//! as warnings. Drawn with `plotters`; labels use the DejaVu Sans subset in `assets/fonts`,
//! compiled in, so no system font is needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::RgbImage;
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;
use thiserror::Error;

use crate::metrics::LOG_FILE;

/// Width and height of every chart, in pixels.
pub const PLOT_SIZE: (u32, u32) = (800, 500);
/// Folder of the charts inside a run's output_dir.
pub const PLOT_DIR: &str = "plots";

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-ASCII.ttf");
const FONT_NAME: &str = "dejavu-sans";

#[derive(Debug, Error)]
pub enum PlotError {
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("cannot draw {chart}: {why}")]
    Draw { chart: String, why: String },
    #[error("{path}: no step or k-NN rows to plot")]
    Empty { path: PathBuf },
}

/// The step-row quantities charted, as `(JSON field, title)`.
const STEP_SERIES: [(&str, &str); 5] = [
    ("loss", "DINO loss"),
    ("lr", "learning rate"),
    ("wd", "weight decay"),
    ("momentum", "teacher momentum"),
    ("teacher_temp", "teacher temperature"),
];

/// What was read from a log and written.
#[derive(Debug, Default)]
pub struct PlotReport {
    pub files: Vec<PathBuf>,
    /// Lines that were not JSON objects (skipped).
    pub bad_lines: usize,
    /// Values that were missing, `null` or not finite (points dropped).
    pub dropped_values: usize,
    /// Human-readable notes about what was skipped.
    pub warnings: Vec<String>,
}

/// Series of `(x, y)` points, one per chart.
#[derive(Debug, Default)]
struct Series {
    step: Vec<Vec<(f64, f64)>>,
    knn_top1: Vec<(f64, f64)>,
}

/// Reads `log`: every parsable line's step values and k-NN top-1 (by epoch, 1-based).
fn read_series(log: &Path, report: &mut PlotReport) -> Result<Series, PlotError> {
    let text = std::fs::read_to_string(log).map_err(|e| PlotError::Io {
        path: log.to_path_buf(),
        why: e.to_string(),
    })?;
    let mut s = Series {
        step: vec![Vec::new(); STEP_SERIES.len()],
        ..Series::default()
    };
    let mut push = |series: &mut Vec<(f64, f64)>, row: &Value, x: Option<f64>, field: &str| match (
        x,
        row.get(field).and_then(Value::as_f64),
    ) {
        (Some(x), Some(y)) if plottable(x) && plottable(y) => series.push((x, y)),
        _ => report.dropped_values += 1,
    };
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: Value = match serde_json::from_str(line) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                bad += 1;
                continue;
            }
        };
        match row.get("kind").and_then(Value::as_str) {
            Some("step") => {
                let x = row.get("step").and_then(Value::as_f64);
                for (series, (field, _)) in s.step.iter_mut().zip(STEP_SERIES) {
                    push(series, &row, x, field);
                }
            }
            Some("knn") => {
                let x = row.get("epoch").and_then(Value::as_f64).map(|e| e + 1.0);
                push(&mut s.knn_top1, &row, x, "top1");
            }
            _ => {}
        }
    }
    report.bad_lines = bad;
    if bad > 0 {
        report.warnings.push(format!(
            "{}: skipped {bad} line(s) that are not JSON (a truncated last line or a NaN literal)",
            log.display()
        ));
    }
    if report.dropped_values > 0 {
        report.warnings.push(format!(
            "{}: dropped {} missing, null, non-finite or out-of-range (|v| > {PLOT_LIMIT:e}) value(s) (NaN is written as null)",
            log.display(),
            report.dropped_values
        ));
    }
    Ok(s)
}

/// Plots `<run>/metrics.jsonl` into `<run>/plots/`.
pub fn plot_run(run: &Path) -> Result<PlotReport, PlotError> {
    plot_log(&run.join(LOG_FILE), &run.join(PLOT_DIR))
}

/// Plots the metrics log `log` into `out` (created if needed).
pub fn plot_log(log: &Path, out: &Path) -> Result<PlotReport, PlotError> {
    let mut report = PlotReport::default();
    let s = read_series(log, &mut report)?;
    if s.step.iter().all(Vec::is_empty) && s.knn_top1.is_empty() {
        return Err(PlotError::Empty {
            path: log.to_path_buf(),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| PlotError::Io {
        path: out.to_path_buf(),
        why: e.to_string(),
    })?;
    for (points, (field, title)) in s.step.iter().zip(STEP_SERIES) {
        if points.is_empty() {
            report
                .warnings
                .push(format!("no {field} values: {field}.png not drawn"));
            continue;
        }
        let path = out.join(format!("{field}.png"));
        draw(&path, title, "step", points, false)?;
        report.files.push(path);
    }
    if s.knn_top1.is_empty() {
        report
            .warnings
            .push("no k-NN evaluations in the log: knn_top1.png not drawn".into());
    } else {
        let path = out.join("knn_top1.png");
        draw(&path, "k-NN top-1 (%)", "epoch", &s.knn_top1, true)?;
        report.files.push(path);
    }
    Ok(report)
}

fn font() -> &'static str {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT).is_ok());
    debug_assert!(ok, "the vendored font parses");
    FONT_NAME
}

/// Largest magnitude drawn. Axis spans and tick steps are computed by subtraction, which
/// overflows to infinity near `f64::MAX` and leaves the tick search without an end; no
/// training metric comes anywhere near this.
const PLOT_LIMIT: f64 = 1e100;

fn plottable(v: f64) -> bool {
    v.is_finite() && v.abs() <= PLOT_LIMIT
}

/// `(lo, hi)` with a margin, never empty.
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    let span = hi - lo;
    let pad = if span > 0.0 {
        0.05 * span
    } else {
        0.05 * lo.abs().max(1e-12)
    };
    (lo - pad, hi + pad)
}

/// One line chart (with markers when `points`) as a PNG of `PLOT_SIZE`.
fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    data: &[(f64, f64)],
    points: bool,
) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError::Draw {
        chart: path.display().to_string(),
        why: e.to_string(),
    };
    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let family = font();
        let x = padded(data.iter().map(|p| p.0));
        let y = padded(data.iter().map(|p| p.1));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (family, 24))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(80)
            .build_cartesian_2d(x.0..x.1, y.0..y.1)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .label_style((family, 14))
            .axis_desc_style((family, 16))
            .y_label_formatter(&|v| format_value(*v))
            .x_label_formatter(&|v| format_value(*v))
            .draw()
            .map_err(|e| err(&e))?;
        let colour = RGBColor(31, 119, 180);
        chart
            .draw_series(LineSeries::new(
                data.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        if points {
            chart
                .draw_series(data.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    let img = RgbImage::from_raw(w, h, buf).ok_or_else(|| err(&"buffer size"))?;
    img.save(path).map_err(|e| PlotError::Io {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Tick labels: plain for ordinary magnitudes, scientific for tiny or huge ones.
fn format_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_labels() {
        assert_eq!(padded([1.0, 3.0].into_iter()), (0.9, 3.1));
        let (lo, hi) = padded([2.0].into_iter());
        assert!(lo < 2.0 && hi > 2.0);
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(5e-4), "5.00e-4");
        assert_eq!(format_value(1234.0), "1234");
    }

    #[test]
    fn values_near_the_float_limit_are_dropped_not_drawn() {
        assert!(plottable(-1e100) && plottable(3.0));
        assert!(!plottable(1e308) && !plottable(-1e101) && !plottable(f64::NAN));
        let (lo, hi) = padded([-1e100, 1e100].into_iter());
        assert!(lo.is_finite() && hi.is_finite() && (hi - lo).is_finite());
    }
}
