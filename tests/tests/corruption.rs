//! Hostile files: seeded random damage to valid files of every format dino-rs reads, each
//! damaged file run through the tool that reads it as a child process under a memory limit
//! and a timeout. Every case must end in one of two ways:
//!
//! - exit 1 or 2 with a message naming the file (no panic, no signal, no timeout), or
//! - exit 0 with provably correct output: the same result as the undamaged file (the
//!   damage hit bytes that carry no meaning, such as zip padding), or, for images, where a
//!   damaged file may still be a valid picture of something else, a well-formed result.
//!
//! Damage: truncation, bit flips, overwritten lengths (0xff.. and 0x7f..), inserted and
//! duplicated runs (nesting), zeroed runs. Half of the positions fall in the first and last
//! 64 KiB, where headers, pickles and directories live.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dino_core::st::StFile;
use dino_tests::export::{REF, export_ok};
use dino_tests::runtime::{dino_run, floats};
use dino_tests::{bin, data_dir, output_ok, run_python, s, scratch};

/// Address-space limit of a case: far above what a good file needs, far below what an
/// unbounded allocation asks for (libtorch's libraries alone map about 2 GiB).
const MEM_LIMIT: &str = "6G";
/// Wall-clock limit of a case (a good file takes well under a second).
const TIME_LIMIT: &str = "60";

/// Damaged files per format: 100 in `make test`; `DINO_RS_CORRUPTION_CASES=N` for a
/// deeper campaign (the seeds of the first 100 are the same at every N).
fn cases() -> usize {
    std::env::var("DINO_RS_CORRUPTION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// SplitMix64: small, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// A position, half the time within 64 KiB of either end.
    fn position(&mut self, len: usize) -> usize {
        const HOT: usize = 64 << 10;
        if len > 2 * HOT && self.next().is_multiple_of(2) {
            let p = self.below(2 * HOT);
            if p < HOT { p } else { len - 2 * HOT + p }
        } else {
            self.below(len)
        }
    }
}

/// One seeded damage of `src`, and what it was.
fn damage(rng: &mut Rng, src: &[u8]) -> (Vec<u8>, String) {
    let mut b = src.to_vec();
    let at = rng.position(b.len());
    let what = match rng.below(6) {
        0 => {
            b.truncate(at);
            format!("truncated to {at} bytes")
        }
        1 => {
            let n = 1 + rng.below(8);
            for _ in 0..n {
                let p = rng.position(b.len());
                b[p] ^= 1 << rng.below(8);
            }
            format!("{n} bit flips")
        }
        2 => {
            let fill = if rng.next().is_multiple_of(2) {
                0xff
            } else {
                0x7f
            };
            let n = [2, 4, 8][rng.below(3)];
            for x in b.iter_mut().skip(at).take(n) {
                *x = fill;
            }
            format!("{n} bytes of 0x{fill:02x} at {at}")
        }
        3 => {
            let n = 1 + rng.below(64);
            let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            b.splice(at..at, junk);
            format!("{n} random bytes inserted at {at}")
        }
        4 => {
            let n = (1 + rng.below(4096)).min(b.len() - at);
            let run = b[at..at + n].to_vec();
            let times = 1 + rng.below(16);
            for _ in 0..times {
                b.splice(at..at, run.iter().copied());
            }
            format!("{n} bytes at {at} repeated {times} more times")
        }
        _ => {
            let n = 1 + rng.below(256);
            for x in b.iter_mut().skip(at).take(n) {
                *x = 0;
            }
            format!("{n} bytes zeroed at {at}")
        }
    };
    (b, what)
}

/// `tool args` under the memory and time limits.
fn limited(tool: &Path) -> Command {
    let mut c = Command::new("prlimit");
    c.arg(format!("--as={}", bytes(MEM_LIMIT)))
        .args(["--", "timeout", "-s", "KILL", TIME_LIMIT])
        .arg(tool);
    c
}

fn bytes(limit: &str) -> u64 {
    let g: u64 = limit.trim_end_matches('G').parse().expect("a size in G");
    g << 30
}

/// What a case did wrong, if anything. `ok_output` judges an exit 0.
fn verdict(
    out: &Output,
    file: &Path,
    ok_output: &dyn Fn(&Output) -> Result<(), String>,
) -> Result<(), String> {
    let err = String::from_utf8_lossy(&out.stderr);
    let name = file.file_name().unwrap().to_string_lossy();
    match out.status.code() {
        None => Err(format!("killed by a signal: {:?}\n{err}", out.status)),
        Some(0) => ok_output(out).map_err(|why| format!("exit 0 with a wrong result: {why}")),
        Some(1 | 2) if err.contains(name.as_ref()) => Ok(()),
        Some(1 | 2) => Err(format!("the message does not name the file:\n{err}")),
        Some(124 | 137) => Err("ran past the time limit".into()),
        Some(c) => Err(format!("exit {c}:\n{err}")),
    }
}

/// Runs `cases` damaged copies of `clean` through `run` on two workers; panics with the
/// failures (seed, damage, verdict) if there are any.
fn campaign(
    name: &str,
    clean: &Path,
    cases: usize,
    run: &(dyn Fn(&Path, &Path) -> Output + Sync),
    ok_output: &(dyn Fn(&Output) -> Result<(), String> + Sync),
) {
    let src = std::fs::read(clean).unwrap();
    let ext = clean
        .extension()
        .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
    let dir = scratch(&format!("corrupt-{name}"));
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for worker in 0..2 {
            let (dir, src, ext, failures) = (&dir, &src, &ext, &failures);
            sc.spawn(move || {
                for case in (worker..cases).step_by(2) {
                    let seed = 1000 + case as u64;
                    let (bytes, what) = damage(&mut Rng(seed), src);
                    let work = dir.join(format!("w{worker}"));
                    std::fs::create_dir_all(&work).unwrap();
                    let file = work.join(format!("case-{seed}{ext}"));
                    std::fs::write(&file, &bytes).unwrap();
                    let out = run(&file, &work);
                    if let Err(why) = verdict(&out, &file, ok_output) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("seed {seed} ({what}): {why}"));
                    }
                    let _ = std::fs::remove_file(&file);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    eprintln!("{name}: {cases} damaged files, {} failures", failures.len());
    assert!(
        failures.is_empty(),
        "{name}: {} of {cases} cases failed:\n{}",
        failures.len(),
        failures
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A vit_tiny/16 training `checkpoint.pth` in float16 (teacher, student, optimizer state,
/// `args` Namespace, loss centre: every kind of object an official checkpoint holds).
fn official_pth(dir: &Path) -> PathBuf {
    let pth = dir.join("checkpoint.pth");
    let args = [
        "pth",
        "--layout",
        "checkpoint",
        "--arch",
        "vit_tiny",
        "--patch",
        "16",
        "--img-size",
        "32",
        "--seed",
        "3",
        "--half",
        "--out",
        &s(&pth),
    ];
    run_python(REF, &args);
    pth
}

#[test]
fn damaged_pth_files() {
    let c = chain();
    let pth = &c.pth;
    let clean_out = c.dir.join("clean.safetensors");
    export_ok(&["import", &s(pth), "--to", &s(&clean_out)]);
    let clean = StFile::read(&clean_out).unwrap();
    let run = |file: &Path, work: &Path| {
        let mut c = limited(&bin("dino-export"));
        c.arg("import")
            .arg(file)
            .arg("--to")
            .arg(work.join("out.safetensors"));
        c.output().unwrap()
    };
    // An exit 0 must have written exactly the clean import (checked per worker folder).
    let check = |file: &Path, work: &Path| {
        let out = run(file, work);
        if out.status.code() == Some(0) {
            let got = StFile::read(&work.join("out.safetensors"));
            let equal = got.as_ref().is_ok_and(|g| {
                g.tensors == clean.tensors && g.vit_config().ok() == clean.vit_config().ok()
            });
            if !equal {
                return wrong(out);
            }
        }
        out
    };
    campaign("pth", pth, cases(), &check, &wrong_is_failure);
}

/// Marks an output as wrong by turning it into exit 0 with a tell-tale stderr that
/// [`wrong_is_failure`] refuses.
fn wrong(mut out: Output) -> Output {
    out.stderr = b"WRONG RESULT".to_vec();
    out
}

fn wrong_is_failure(out: &Output) -> Result<(), String> {
    if out.stderr == b"WRONG RESULT" {
        Err("the output differs from the undamaged file's".into())
    } else {
        Ok(())
    }
}

/// The undamaged chain: official `.pth` -> dino-rs backbone -> fp16 ONNX model.
struct Chain {
    dir: PathBuf,
    pth: PathBuf,
    backbone: PathBuf,
    model: PathBuf,
}

/// Built once and shared by the tests of this file (they run in parallel).
fn chain() -> &'static Chain {
    static CHAIN: std::sync::OnceLock<Chain> = std::sync::OnceLock::new();
    CHAIN.get_or_init(build_chain)
}

fn build_chain() -> Chain {
    let dir = scratch("corrupt-chain");
    let pth = official_pth(&dir);
    let backbone = dir.join("teacher.safetensors");
    export_ok(&["import", &s(&pth), "--to", &s(&backbone)]);
    let model = dir.join("model.onnx");
    export_ok(&[
        "--checkpoint",
        &s(&backbone),
        "--to",
        &s(&model),
        "--precision",
        "fp16",
    ]);
    Chain {
        dir,
        pth,
        backbone,
        model,
    }
}

#[test]
fn damaged_safetensors_checkpoints() {
    let c = chain();
    let clean = std::fs::read(&c.model).unwrap();
    let check = |file: &Path, work: &Path| {
        let to = work.join("out.onnx");
        let mut cmd = limited(&bin("dino-export"));
        cmd.arg("--checkpoint").arg(file).arg("--to").arg(&to);
        cmd.args(["--precision", "fp16"]);
        let out = cmd.output().unwrap();
        if out.status.code() == Some(0) && std::fs::read(&to).ok().as_deref() != Some(&clean[..]) {
            return wrong(out);
        }
        out
    };
    campaign(
        "safetensors",
        &c.backbone,
        cases(),
        &check,
        &wrong_is_failure,
    );
}

fn embedding(out: &Output) -> Result<Vec<f32>, String> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(floats(&v[0]["embedding"]))
}

#[test]
fn damaged_onnx_models() {
    let c = chain();
    let photo = data_dir().join("photos/coffee.png");
    let mut first = dino_run(&c.dir);
    first
        .args(["embed", "--json", "--model"])
        .arg(&c.model)
        .arg(&photo);
    let truth = embedding(&output_ok(&mut first, "dino-run embed")).unwrap();
    let run = |file: &Path, work: &Path| {
        let mut cmd = limited(&bin("dino-run"));
        cmd.env("XDG_CACHE_HOME", work.join("cache"));
        cmd.args(["--no-cache", "embed", "--json", "--model"])
            .arg(file)
            .arg(&photo);
        cmd.output().unwrap()
    };
    let same = |out: &Output| match embedding(out) {
        Ok(e) if e == truth => Ok(()),
        Ok(_) => Err("another embedding".into()),
        Err(e) => Err(e),
    };
    campaign("onnx", &c.model, cases(), &run, &same);
}

#[test]
fn damaged_galleries() {
    let c = chain();
    let gallery = c.dir.join("g.dgal");
    let mut index = dino_run(&c.dir);
    index
        .args(["index", "--model"])
        .arg(&c.model)
        .arg("--images")
        .arg(data_dir().join("cifar10-mini/test"))
        .arg("--out")
        .arg(&gallery);
    output_ok(&mut index, "dino-run index");
    let query = data_dir().join("photos/coffee.png");
    let classify = |g: &Path, work: &Path| {
        let mut cmd = limited(&bin("dino-run"));
        cmd.env("XDG_CACHE_HOME", c.dir.join("cache"));
        let _ = work;
        cmd.args(["classify", "--json", "--model"])
            .arg(&c.model)
            .arg("--gallery")
            .arg(g)
            .arg(&query);
        cmd.output().unwrap()
    };
    let truth = classify(&gallery, &c.dir).stdout;
    let same = |out: &Output| {
        if out.stdout == truth {
            Ok(())
        } else {
            Err(format!("answer {}", String::from_utf8_lossy(&out.stdout)))
        }
    };
    campaign("gallery", &gallery, cases(), &classify, &same);
}

fn image_campaign(name: &str, clean: &Path) {
    let c = chain();
    let dim = 192;
    // Warm the graph cache once; the cases then load the optimised graph.
    let mut warm = dino_run(&c.dir);
    warm.args(["embed", "--model"]).arg(&c.model).arg(clean);
    output_ok(&mut warm, "dino-run embed");
    let run = |file: &Path, _: &Path| {
        let mut cmd = limited(&bin("dino-run"));
        cmd.env("XDG_CACHE_HOME", c.dir.join("cache"));
        cmd.args(["embed", "--json", "--model"])
            .arg(&c.model)
            .arg(file);
        cmd.output().unwrap()
    };
    // A damaged image may still be a valid image of something else: its embedding must be
    // well formed (the model's width, finite, unit length).
    let well_formed = |out: &Output| {
        let e = embedding(out)?;
        let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        if e.len() == dim && e.iter().all(|v| v.is_finite()) && (norm - 1.0).abs() < 1e-3 {
            Ok(())
        } else {
            Err(format!("{} values, norm {norm}", e.len()))
        }
    };
    campaign(name, clean, cases(), &run, &well_formed);
}

#[test]
fn damaged_jpegs() {
    image_campaign("jpeg", &data_dir().join("photos/rocket.jpg"));
}

#[test]
fn damaged_pngs() {
    image_campaign("png", &data_dir().join("photos/coffee.png"));
}

#[test]
fn damaged_metrics_logs() {
    let dir = scratch("corrupt-metrics-src");
    let mut log = String::new();
    for i in 1..=60 {
        log.push_str(&format!(
            "{{\"kind\":\"step\",\"epoch\":{},\"step\":{i},\"loss\":{},\"lr\":{},\"wd\":0.04,\"momentum\":0.996,\"teacher_temp\":0.04}}\n",
            (i - 1) / 20,
            9.0 - i as f64 * 0.05,
            1e-5 * i as f64
        ));
        if i % 20 == 0 {
            log.push_str(&format!(
                "{{\"kind\":\"knn\",\"epoch\":{},\"step\":{i},\"top1\":{},\"top5\":50.0,\"k\":20}}\n",
                i / 20 - 1,
                10 + i / 10
            ));
        }
    }
    let clean = dir.join("metrics.jsonl");
    std::fs::write(&clean, log).unwrap();
    let run = |file: &Path, work: &Path| {
        let run_dir = work.join("run");
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::copy(file, run_dir.join("metrics.jsonl")).unwrap();
        let mut cmd = limited(&bin("dino-train"));
        cmd.args(["plot", "--run"]).arg(&run_dir);
        let mut out = cmd.output().unwrap();
        // Messages name the log inside the run folder: map it back to the case's file.
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let err = String::from_utf8_lossy(&out.stderr).replace("metrics.jsonl", &name);
        out.stderr = err.into_bytes();
        if out.status.code() == Some(0) && !run_dir.join("plots/loss.png").is_file() {
            return wrong(out);
        }
        out
    };
    campaign("metrics", &clean, cases(), &run, &wrong_is_failure);
    std::fs::remove_dir_all(dir).ok();
}
