//! The JSONL metrics log and the collapse watch.
//!
//! One JSON object per line: `{"kind": "step", ...}` every `log_freq` steps,
//! `{"kind": "epoch", ...}` at each epoch end, `{"kind": "knn", ...}` per evaluation. The
//! log is appended to, so a resumed run continues the same file; `dino-train plot` reads it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

pub const LOG_FILE: &str = "metrics.jsonl";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub epoch: usize,
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub wd: f64,
    pub momentum: f64,
    pub teacher_temp: f64,
    /// Mean per-image entropy of the teacher distribution (nats).
    pub teacher_entropy: f64,
    /// Entropy of the batch-mean teacher distribution (nats).
    pub teacher_mean_entropy: f64,
    pub images_per_s: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    pub epoch: usize,
    pub step: usize,
    pub loss: f64,
    pub seconds: f64,
    pub images_per_s: f64,
    pub skipped_files: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KnnRow {
    pub epoch: usize,
    pub step: usize,
    pub top1: f64,
    pub top5: f64,
    pub k: usize,
}

/// A metrics row, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Row {
    Step(StepRow),
    Epoch(EpochRow),
    Knn(KnnRow),
}

pub struct MetricsLog {
    path: std::path::PathBuf,
    out: BufWriter<File>,
}

impl MetricsLog {
    pub fn append(dir: &Path) -> Result<Self> {
        let path = dir.join(LOG_FILE);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(Self {
            out: BufWriter::new(f),
            path,
        })
    }

    pub fn write(&mut self, row: &Row) -> Result<()> {
        let mut line = serde_json::to_vec(row).map_err(|e| TrainError::Invalid(e.to_string()))?;
        line.push(b'\n');
        // Rows are few; flushing keeps the log complete if the run is killed.
        (self.out.write_all(&line))
            .and_then(|()| self.out.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Prints `msg` above the progress bar, or on stderr when the bar is hidden (`--quiet`, or
/// stderr not a terminal): indicatif drops the `println` of a hidden bar, and a warning must
/// reach a log file all the more.
pub fn warn_line(bar: &indicatif::ProgressBar, msg: &str) {
    if bar.is_hidden() {
        eprintln!("{msg}");
    } else {
        bar.println(msg);
    }
}

/// Why training looks collapsed, if it does (paper section 5.3: the two collapse modes).
pub fn collapse_warning(row: &StepRow, max_entropy: f64) -> Option<String> {
    let near = |a: f64, b: f64| (a - b).abs() < 0.02 * max_entropy;
    if near(row.teacher_entropy, max_entropy) && near(row.loss, max_entropy) {
        Some(format!(
            "teacher output is uniform (entropy {:.3} ≈ ln(out_dim) = {:.3}, loss {:.3}): collapse to the uniform distribution; lower teacher_temp or raise momentum_teacher",
            row.teacher_entropy, max_entropy, row.loss
        ))
    } else if row.teacher_mean_entropy < 0.02 * max_entropy {
        Some(format!(
            "every image picks the same prototype (entropy of the mean teacher output {:.3} ≈ 0): collapse to one dimension; check center_momentum and teacher_temp",
            row.teacher_mean_entropy
        ))
    } else {
        None
    }
}

/// Reads a metrics log, skipping (and counting) lines that do not parse, such as a
/// truncated last line of a killed run.
pub fn read_log(path: &Path) -> Result<(Vec<Row>, usize)> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut rows = Vec::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Row>(line) {
            Ok(r) => rows.push(r),
            Err(_) => bad += 1,
        }
    }
    Ok((rows, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_teacher_is_flagged() {
        let m = (4096f64).ln();
        let row = StepRow {
            loss: m,
            teacher_entropy: m - 0.01,
            teacher_mean_entropy: m,
            ..Default::default()
        };
        assert!(collapse_warning(&row, m).unwrap().contains("uniform"));
    }

    #[test]
    fn one_hot_teacher_is_flagged_and_healthy_is_not() {
        let m = (4096f64).ln();
        let row = StepRow {
            loss: 3.0,
            teacher_entropy: 0.01,
            teacher_mean_entropy: 0.01,
            ..Default::default()
        };
        assert!(collapse_warning(&row, m).unwrap().contains("one dimension"));
        let ok = StepRow {
            loss: 7.0,
            teacher_entropy: 5.0,
            teacher_mean_entropy: 8.0,
            ..Default::default()
        };
        assert!(collapse_warning(&ok, m).is_none());
    }

    #[test]
    fn rows_round_trip_and_bad_lines_are_counted() {
        let dir = std::env::temp_dir().join(format!("dino-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = MetricsLog::append(&dir).unwrap();
        log.write(&Row::Epoch(EpochRow {
            epoch: 0,
            loss: 8.0,
            ..Default::default()
        }))
        .unwrap();
        drop(log);
        let path = dir.join(LOG_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"kind\": \"step\", \"epo");
        std::fs::write(&path, text).unwrap();
        let (rows, bad) = read_log(&path).unwrap();
        assert_eq!((rows.len(), bad), (1, 1));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
