//! The crate's error type.
use std::time::Duration;

/// What can go wrong between reading the launcher's variables and a collective's result.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("environment variable {var} is not set (needed with {launcher})")]
    MissingEnv {
        var: &'static str,
        launcher: &'static str,
    },
    #[error("environment variable {var}={value:?}: {reason}")]
    BadEnv {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid distributed configuration: {0}")]
    Config(String),
    #[error(
        "the NCCL backend is not compiled into dino-dist (a CPU-only libtorch, or NCCL/CUDA headers \
         missing at build time: see dist/build.rs); use the gloo backend"
    )]
    NcclUnavailable,
    #[error(
        "rendezvous: port {port} is already in use on this machine, choose another MASTER_PORT ({detail})"
    )]
    PortInUse { port: u16, detail: String },
    #[error("rendezvous: master {addr}:{port} not reachable within {timeout:?} ({detail})")]
    MasterUnreachable {
        addr: String,
        port: u16,
        timeout: Duration,
        detail: String,
    },
    #[error(
        "rendezvous: world size mismatch: rank {rank} has world size {world_size}, rank 0 has \
         {rank0_world_size} (WORLD_SIZE / SLURM_NTASKS must agree on every rank)"
    )]
    WorldSizeMismatch {
        rank: usize,
        world_size: usize,
        rank0_world_size: usize,
    },
    #[error("rendezvous: two processes joined as rank {rank}")]
    DuplicateRank { rank: usize },
    #[error("rendezvous on {addr}:{port} failed on rank {rank} while {step}: {detail}")]
    Rendezvous {
        addr: String,
        port: u16,
        rank: usize,
        step: &'static str,
        detail: String,
    },
    #[error("{op} on rank {rank} of {world_size} failed (timeout {timeout:?}): {detail}")]
    Collective {
        op: &'static str,
        rank: usize,
        world_size: usize,
        timeout: Duration,
        detail: String,
    },
    #[error("{op}: {reason}")]
    InvalidTensor { op: &'static str, reason: String },
}
