//! Rank, world size and master address from the launcher's environment: torchrun's
//! variables, else SLURM's, as the official DINO `init_distributed_mode` reads them.
use std::time::Duration;

use crate::{Backend, DistConfig, DistError};

/// torch.distributed's default `MASTER_PORT`, used when SLURM gives none.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Which launcher's variables described this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`.
    Torchrun,
    /// `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, the node list; `MASTER_ADDR` and
    /// `MASTER_PORT` override the first node and the default port when set.
    Slurm,
}

impl Launcher {
    fn name(self) -> &'static str {
        match self {
            Self::Torchrun => "torchrun (RANK is set)",
            Self::Slurm => "SLURM (SLURM_PROCID is set)",
        }
    }
}

/// This process's place in a multi-process job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    /// Rank on this node: the CUDA device index to use.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub launcher: Launcher,
}

impl DistEnv {
    /// Reads the process environment; `None` for a plain single process (no launcher).
    pub fn from_env() -> Result<Option<Self>, DistError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As `from_env`, with the variables from `get` (tests, or a launcher's own map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, DistError> {
        let get = |var: &'static str| get(var).filter(|v| !v.trim().is_empty());
        let env = if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
            let l = Launcher::Torchrun;
            let need = |var| {
                get(var).ok_or(DistError::MissingEnv {
                    var,
                    launcher: l.name(),
                })
            };
            Self {
                rank: parse("RANK", &need("RANK")?)?,
                world_size: parse("WORLD_SIZE", &need("WORLD_SIZE")?)?,
                local_rank: parse("LOCAL_RANK", &need("LOCAL_RANK")?)?,
                master_addr: need("MASTER_ADDR")?,
                master_port: parse_port("MASTER_PORT", &need("MASTER_PORT")?)?,
                launcher: l,
            }
        } else if get("SLURM_PROCID").is_some() {
            let l = Launcher::Slurm;
            let need = |var| {
                get(var).ok_or(DistError::MissingEnv {
                    var,
                    launcher: l.name(),
                })
            };
            let master_addr = match get("MASTER_ADDR") {
                Some(addr) => addr,
                None => slurm_master(&get)?,
            };
            let master_port = match get("MASTER_PORT") {
                Some(port) => parse_port("MASTER_PORT", &port)?,
                None => DEFAULT_MASTER_PORT,
            };
            Self {
                rank: parse("SLURM_PROCID", &need("SLURM_PROCID")?)?,
                world_size: parse("SLURM_NTASKS", &need("SLURM_NTASKS")?)?,
                local_rank: parse("SLURM_LOCALID", &need("SLURM_LOCALID")?)?,
                master_addr,
                master_port,
                launcher: l,
            }
        } else {
            return Ok(None);
        };
        if env.world_size == 0 || env.rank >= env.world_size {
            return Err(DistError::Config(format!(
                "rank {} is not below the world size {} (from {})",
                env.rank,
                env.world_size,
                env.launcher.name()
            )));
        }
        Ok(Some(env))
    }

    /// The configuration of a process group for this process.
    pub fn config(&self, backend: Backend, timeout: Duration) -> DistConfig {
        DistConfig {
            rank: self.rank,
            world_size: self.world_size,
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
            backend,
            timeout,
        }
    }
}

fn parse(var: &'static str, value: &str) -> Result<usize, DistError> {
    value.trim().parse().map_err(|_| DistError::BadEnv {
        var,
        value: value.to_owned(),
        reason: "expected a non-negative integer".into(),
    })
}

fn parse_port(var: &'static str, value: &str) -> Result<u16, DistError> {
    match value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(DistError::BadEnv {
            var,
            value: value.to_owned(),
            reason: "expected a port number from 1 to 65535".into(),
        }),
    }
}

/// The first host of the step's (else the job's) node list.
fn slurm_master(get: &impl Fn(&'static str) -> Option<String>) -> Result<String, DistError> {
    const LISTS: [&str; 3] = [
        "SLURM_STEP_NODELIST",
        "SLURM_JOB_NODELIST",
        "SLURM_NODELIST",
    ];
    let (var, list) = LISTS
        .iter()
        .find_map(|&var| get(var).map(|list| (var, list)))
        .ok_or(DistError::MissingEnv {
            var: "SLURM_JOB_NODELIST",
            launcher: Launcher::Slurm.name(),
        })?;
    first_host(&list).ok_or(DistError::BadEnv {
        var,
        value: list,
        reason: "not a SLURM node list such as node[01-04,07],gpu3".into(),
    })
}

/// The first host of a SLURM node list in its compressed form: `node[01-04,07],gpu3` gives
/// `node01` (zero padding kept), `rack[1-2]-n[5-6]` gives `rack1-n5`. None if malformed.
pub fn first_host(nodelist: &str) -> Option<String> {
    let mut host = String::new();
    let mut chars = nodelist.trim().chars();
    while let Some(c) = chars.next() {
        match c {
            ',' => break,
            '[' => {
                let mut inner = String::new();
                loop {
                    match chars.next()? {
                        ']' => break,
                        '[' => return None,
                        c => inner.push(c),
                    }
                }
                let first = inner.split(',').next()?.split('-').next()?.trim();
                if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                host.push_str(first);
            }
            ']' => return None,
            c if c.is_whitespace() => return None,
            c => host.push(c),
        }
    }
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
