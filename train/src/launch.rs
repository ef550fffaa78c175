//! `dino-train train --nproc_per_node N`: a single-node launcher for machines without
//! `torchrun` on PATH. It does what `torchrun --standalone --nproc_per_node N` does for
//! dino-train: a free port on the loopback address, one child process per rank with
//! torchrun's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`),
//! SIGINT/SIGTERM forwarded to every child, and every rank stopped as soon as one fails.
//! On CPU each rank gets its share of the cores (`OMP_NUM_THREADS`), as torchrun sets it.

use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Result, TrainError};

/// How long the other ranks get to exit after a SIGTERM before they are killed.
const GRACE: Duration = Duration::from_secs(10);

/// The signal the launcher received (0: none), set by the handler, read by the wait loop.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: i32) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// One launch: the program and its arguments (without `--nproc_per_node`) for every rank.
#[derive(Clone, Debug)]
pub struct Launch {
    pub program: std::path::PathBuf,
    pub args: Vec<std::ffi::OsString>,
    pub nproc: usize,
    /// Intra-op threads per rank (`OMP_NUM_THREADS`); `None` leaves the environment alone.
    pub threads_per_rank: Option<usize>,
}

impl Launch {
    /// Starts every rank and waits for all of them; the first failure stops the others.
    pub fn run(&self) -> Result<()> {
        if self.nproc == 0 {
            return Err(TrainError::Invalid(
                "--nproc_per_node must be at least 1".into(),
            ));
        }
        let port = free_port()?;
        install_handlers();
        let mut children: Vec<(usize, Child)> = Vec::with_capacity(self.nproc);
        for rank in 0..self.nproc {
            match self.spawn(rank, port) {
                Ok(c) => children.push((rank, c)),
                Err(e) => {
                    stop_all(&mut children, libc::SIGTERM);
                    return Err(e);
                }
            }
        }
        wait_all(children)
    }

    fn spawn(&self, rank: usize, port: u16) -> Result<Child> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", self.nproc.to_string())
            .env("LOCAL_WORLD_SIZE", self.nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if let Some(t) = self.threads_per_rank {
            cmd.env("OMP_NUM_THREADS", t.to_string());
        }
        cmd.spawn().map_err(|e| TrainError::io(&self.program, e))
    }
}

/// A port the loopback address can listen on now (the rendezvous of rank 0 takes it).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| TrainError::Invalid(format!("no free port on 127.0.0.1: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| TrainError::Invalid(format!("no free port on 127.0.0.1: {e}")))
}

fn install_handlers() {
    let handler: extern "C" fn(i32) = on_signal;
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as *const () as libc::sighandler_t);
    }
}

/// Polls the children: a forwarded signal, or a rank that failed, stops all of them.
fn wait_all(mut children: Vec<(usize, Child)>) -> Result<()> {
    let mut failure: Option<(usize, ExitStatus)> = None;
    while !children.is_empty() {
        let sig = RECEIVED.swap(0, Ordering::SeqCst);
        if sig != 0 {
            eprintln!(
                "launcher: forwarding signal {sig} to {} rank(s)",
                children.len()
            );
            stop_all(&mut children, sig);
            return Err(TrainError::Invalid(format!("stopped by signal {sig}")));
        }
        let mut i = 0;
        while i < children.len() {
            let (rank, child) = &mut children[i];
            match child.try_wait() {
                Ok(Some(status)) => {
                    let rank = *rank;
                    children.swap_remove(i);
                    if !status.success() && failure.is_none() {
                        failure = Some((rank, status));
                        eprintln!(
                            "launcher: rank {rank} exited with {status}; stopping the others"
                        );
                        stop_all(&mut children, libc::SIGTERM);
                    }
                }
                Ok(None) => i += 1,
                Err(e) => return Err(TrainError::Invalid(format!("waiting for rank {rank}: {e}"))),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failure {
        None => Ok(()),
        Some((rank, status)) => Err(TrainError::Invalid(format!(
            "rank {rank} failed ({status}); the other ranks were stopped"
        ))),
    }
}

/// Sends `sig` to every child, then kills those still running after [`GRACE`].
fn stop_all(children: &mut Vec<(usize, Child)>, sig: i32) {
    for (_, c) in children.iter() {
        // SAFETY: kill(2) on a child's own pid, which is still ours to signal (not reaped).
        unsafe {
            libc::kill(c.id() as libc::pid_t, sig);
        }
    }
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        children.retain_mut(|(_, c)| matches!(c.try_wait(), Ok(None)));
        if children.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    children.clear();
}
