//! `dino-run serve` as a child process on a loopback port chosen at run time.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::runtime::dino_run;

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its stderr lines so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `dino-run [global] serve --bind 127.0.0.1:0 <args>` with its graph cache in
    /// `dir`, and waits (at most a minute) for the address it prints.
    pub fn start(dir: &Path, global: &[&str], args: &[&str]) -> Self {
        let mut c = dino_run(dir);
        c.args(global)
            .arg("serve")
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn dino-run serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                if let Some(a) = line.split("http://").nth(1) {
                    let a = a.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(a);
                }
                sink.lock().expect("log").push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "dino-run serve did not start:\n{}",
                    log.lock().expect("log").join("\n")
                );
            }
        };
        Self { child, addr, log }
    }

    /// Sends `signal` (e.g. "TERM", "HUP") to the server.
    pub fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits at most `limit` for the server to exit.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                t.elapsed() < limit,
                "the server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the server process, KiB (`VmRSS` of /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// Whether a stderr line so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains(text))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A seeded model with an attention output (64 px crops, patch 16, 3 heads) and its
/// gallery of 200 CIFAR-10 test images (20 per class), written into `dir`: what the serve
/// tests use.
pub fn model_and_gallery(dir: &Path, seed: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let model = crate::runtime::fixture(
        dir,
        &format!("m{seed}.onnx"),
        &[
            "--img", "64", "--patch", "16", "--heads", "3", "--seed", seed,
        ],
    );
    let gallery = dir.join(format!("g{seed}.dgal"));
    let mut c = dino_run(dir);
    c.arg("index")
        .arg("--model")
        .arg(&model)
        .arg("--images")
        .arg(crate::cifar_subset(dir, "test", 20))
        .arg("--out")
        .arg(&gallery);
    crate::output_ok(&mut c, "dino-run index");
    (model, gallery)
}
