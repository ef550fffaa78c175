//! Multi-process test plumbing: ranks are this test binary run again with its `child` test
//! selected and `CHILD_ROLE` set; every process is waited for with a limit and killed on
//! failure.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dino_dist::{Backend, DistConfig};

/// Tells a re-run test binary which rank to play (`<scenario>:<rank>:<port>`).
pub const CHILD_ROLE: &str = "DINO_DIST_TEST_ROLE";

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

pub fn config(rank: usize, world_size: usize, port: u16, timeout: Duration) -> DistConfig {
    DistConfig {
        rank,
        world_size,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        backend: Backend::Gloo,
        timeout,
    }
}

/// The role this process plays when it is a re-run child: (scenario, rank, port).
pub fn child_role() -> Option<(String, usize, u16)> {
    let role = std::env::var(CHILD_ROLE).ok()?;
    let mut parts = role.split(':');
    let scenario = parts.next()?.to_owned();
    let rank = parts.next()?.parse().ok()?;
    let port = parts.next()?.parse().ok()?;
    Some((scenario, rank, port))
}

/// This test binary, running only its `child` test as `scenario` rank `rank`.
pub fn rank_command(scenario: &str, rank: usize, port: u16) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, format!("{scenario}:{rank}:{port}"))
        .env_remove("GLOO_SOCKET_IFNAME");
    cmd
}

/// A running process and the threads collecting its output.
pub struct Proc {
    name: String,
    child: Child,
    readers: Vec<JoinHandle<String>>,
}

/// Processes that are all killed if the test leaves before they finish.
pub struct Procs(Vec<Proc>);

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.0 {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn drain(stream: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut s) = stream {
            let _ = s.read_to_string(&mut text);
        }
        text
    })
}

pub fn spawn(named: Vec<(&str, Command)>) -> Procs {
    let mut procs = Procs(Vec::new());
    for (name, mut cmd) in named {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let readers = vec![drain(child.stdout.take()), drain(child.stderr.take())];
        procs.0.push(Proc {
            name: name.to_owned(),
            child,
            readers,
        });
    }
    procs
}

impl Procs {
    /// Waits for every process within `limit` (all killed past it), then returns each
    /// one's exit status and output (stdout then stderr).
    pub fn finish(mut self, limit: Duration) -> Vec<(ExitStatus, String)> {
        let deadline = Instant::now() + limit;
        let mut statuses = Vec::new();
        for p in &mut self.0 {
            let status = loop {
                if let Some(status) = p.child.try_wait().expect("wait for a child") {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            statuses.push(status);
        }
        let timed_out = statuses.iter().any(Option::is_none);
        for p in &mut self.0 {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let mut results = Vec::new();
        let mut report = String::new();
        for (p, status) in self.0.drain(..).zip(statuses) {
            let output: String = p
                .readers
                .into_iter()
                .map(|r| r.join().unwrap_or_default())
                .collect();
            report.push_str(&format!("--- {} ({status:?}) ---\n{output}\n", p.name));
            results.push((status, output));
        }
        assert!(
            !timed_out,
            "processes still running after {limit:?}, killed:\n{report}"
        );
        results
            .into_iter()
            .map(|(s, o)| (s.expect("finished"), o))
            .collect()
    }
}

/// Panics with the output unless the process exited with `code`.
pub fn assert_exit(result: &(ExitStatus, String), code: i32, what: &str) {
    assert_eq!(
        result.0.code(),
        Some(code),
        "{what}: unexpected exit, output:\n{}",
        result.1
    );
}
