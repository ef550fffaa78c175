//! The TCPStore rendezvous: rank 0 serves the store, every rank joins through it, and the
//! world sizes are compared before any process group is built.
//!
//! Joining follows torch.distributed (each rank bumps TCPStore's own join counter and rank 0
//! waits for all of them), so a Python rank can join a group whose rank 0 is ours (not the
//! reverse: our other ranks wait for rank 0's published world size). On top,
//! rank 0 publishes its world size and every other rank compares its own; a rank that finds
//! a mismatch (or a second process with its rank) publishes the fault and fills the join
//! counter, so rank 0 reports the fault at once instead of waiting out its timeout.
use std::ffi::{CString, c_int};
use std::net::{TcpStream, ToSocketAddrs};
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use crate::ffi;
use crate::{DistConfig, DistError};

const WORLD_SIZE_KEY: &str = "dino_dist/world_size";
const FAULT_KEY: &str = "dino_dist/fault";
/// Written by `Store::report_failure`, read when a collective fails.
const FAILURE_KEY: &str = "dino_dist/failure";

/// An open TCPStore (the server on rank 0, a client elsewhere).
pub(crate) struct Store {
    raw: NonNull<ffi::DinoStore>,
}

// SAFETY: c10d's TCPStore serialises its own requests; the handle is only freed in Drop.
unsafe impl Send for Store {}

fn c_string(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

impl Store {
    pub(crate) fn raw(&self) -> *mut ffi::DinoStore {
        self.raw.as_ptr()
    }

    fn open(cfg: &DistConfig) -> Result<Self, DistError> {
        let host = c_string(&cfg.master_addr).map_err(DistError::Config)?;
        if cfg.rank != 0 {
            wait_for_master(cfg)?;
        }
        let mut raw = ptr::null_mut();
        // SAFETY: valid C string and out pointer; errors come back as strings.
        let err = unsafe {
            ffi::dino_c10d_store_create(
                host.as_ptr(),
                cfg.master_port,
                c_int::from(cfg.rank == 0),
                cfg.world_size as c_int,
                cfg.timeout_ms(),
                &mut raw,
            )
        };
        ffi::check(err).map_err(|detail| classify_open_error(cfg, detail))?;
        let raw = NonNull::new(raw)
            .ok_or_else(|| cfg.rendezvous_error("opening the store", "null store".into()))?;
        Ok(Self { raw })
    }

    fn set(&self, key: &str, value: &str) -> Result<(), String> {
        let key = c_string(key)?;
        // SAFETY: live store, valid key, value pointer and length from one slice.
        ffi::check(unsafe {
            ffi::dino_c10d_store_set(self.raw(), key.as_ptr(), value.as_ptr(), value.len() as u64)
        })
    }

    /// Waits (up to the store's timeout) for the key, as text.
    fn get(&self, key: &str) -> Result<String, String> {
        let key = c_string(key)?;
        let (mut buf, mut len) = (ptr::null_mut(), 0u64);
        // SAFETY: live store, valid key and out pointers.
        ffi::check(unsafe {
            ffi::dino_c10d_store_get(self.raw(), key.as_ptr(), &mut buf, &mut len)
        })?;
        // SAFETY: on success the shim filled a malloc'd buffer of len bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf, len as usize) }.to_vec();
        // SAFETY: released once with the shim's free.
        unsafe { ffi::dino_c10d_free(buf.cast()) };
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let key = c_string(key)?;
        let mut out = 0;
        // SAFETY: live store, valid key and out pointer.
        ffi::check(unsafe { ffi::dino_c10d_store_add(self.raw(), key.as_ptr(), delta, &mut out) })?;
        Ok(out)
    }

    fn check(&self, key: &str) -> Result<bool, String> {
        let key = c_string(key)?;
        let mut exists = 0;
        // SAFETY: live store, valid key and out pointer.
        ffi::check(unsafe { ffi::dino_c10d_store_check(self.raw(), key.as_ptr(), &mut exists) })?;
        Ok(exists != 0)
    }

    /// Bumps TCPStore's join counter; on rank 0, then waits until it reaches the world size.
    fn wait_for_workers(&self) -> Result<(), String> {
        // SAFETY: live store.
        ffi::check(unsafe { ffi::dino_c10d_store_wait_for_workers(self.raw()) })
    }

    /// Leaves a note for the other ranks, shown when their next collective fails.
    pub(crate) fn report_failure(&self, rank: usize, reason: &str) -> Result<(), String> {
        self.set(FAILURE_KEY, &format!("rank {rank} reported: {reason}"))
    }

    /// What the store says about a failed collective: a rank's note, or that the store
    /// itself (rank 0) is gone. Never blocks: one request to a live or dead server.
    pub(crate) fn failure_note(&self) -> Option<String> {
        match self.check(FAILURE_KEY) {
            Ok(true) => self.get(FAILURE_KEY).ok(),
            Ok(false) => None,
            Err(e) => Some(format!(
                "the store on rank 0 is unreachable, rank 0 has likely exited ({e})"
            )),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by dino_c10d_store_create, destroyed once.
        unsafe { ffi::dino_c10d_store_destroy(self.raw()) }
    }
}

/// Returns once rank 0's store listens, or fails at the timeout: c10d's own connect
/// retries (a full timeout per attempt, with back-off between) can take twice as long.
fn wait_for_master(cfg: &DistConfig) -> Result<(), DistError> {
    let deadline = Instant::now() + cfg.timeout;
    let mut last = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DistError::MasterUnreachable {
                addr: cfg.master_addr.clone(),
                port: cfg.master_port,
                timeout: cfg.timeout,
                detail: last,
            });
        }
        match (cfg.master_addr.as_str(), cfg.master_port).to_socket_addrs() {
            Ok(addrs) => {
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, left) {
                        Ok(_) => return Ok(()),
                        Err(e) => last = format!("{addr}: {e}"),
                    }
                }
            }
            Err(e) => last = format!("cannot resolve {}: {e}", cfg.master_addr),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

fn classify_open_error(cfg: &DistConfig, detail: String) -> DistError {
    let lower = detail.to_lowercase();
    if cfg.rank == 0 && (lower.contains("eaddrinuse") || lower.contains("address already in use")) {
        DistError::PortInUse {
            port: cfg.master_port,
            detail,
        }
    } else if cfg.rank != 0 && (lower.contains("connect") || lower.contains("timed out")) {
        DistError::MasterUnreachable {
            addr: cfg.master_addr.clone(),
            port: cfg.master_port,
            timeout: cfg.timeout,
            detail,
        }
    } else {
        cfg.rendezvous_error("opening the store", detail)
    }
}

/// A problem one rank finds in the group, passed to rank 0 through the store as text.
enum Fault {
    WorldSize {
        rank: usize,
        world_size: usize,
        rank0_world_size: usize,
    },
    DuplicateRank {
        rank: usize,
    },
}

impl Fault {
    fn encode(&self) -> String {
        match *self {
            Self::WorldSize {
                rank,
                world_size,
                rank0_world_size,
            } => {
                format!("world_size {rank} {world_size} {rank0_world_size}")
            }
            Self::DuplicateRank { rank } => format!("duplicate {rank}"),
        }
    }

    fn decode(text: &str) -> Option<DistError> {
        let mut words = text.split(' ');
        let kind = words.next()?;
        let nums: Vec<usize> = words.map(str::parse).collect::<Result<_, _>>().ok()?;
        match (kind, nums.as_slice()) {
            ("world_size", &[rank, world_size, rank0_world_size]) => {
                Some(DistError::WorldSizeMismatch {
                    rank,
                    world_size,
                    rank0_world_size,
                })
            }
            ("duplicate", &[rank]) => Some(DistError::DuplicateRank { rank }),
            _ => None,
        }
    }

    fn into_error(self) -> DistError {
        match self {
            Self::WorldSize {
                rank,
                world_size,
                rank0_world_size,
            } => DistError::WorldSizeMismatch {
                rank,
                world_size,
                rank0_world_size,
            },
            Self::DuplicateRank { rank } => DistError::DuplicateRank { rank },
        }
    }
}

/// Opens the store and joins the group (see the module's documentation).
pub(crate) fn join(cfg: &DistConfig) -> Result<Store, DistError> {
    let store = Store::open(cfg)?;
    let step = |what: &'static str| move |detail| cfg.rendezvous_error(what, detail);
    let (rank, world_size) = (cfg.rank, cfg.world_size);
    if rank == 0 {
        store
            .set(WORLD_SIZE_KEY, &world_size.to_string())
            .map_err(step("publishing the world size"))?;
    }
    let claims = store
        .add(&format!("dino_dist/rank/{rank}"), 1)
        .map_err(step("claiming its rank"))?;
    let rank0_world_size = if rank == 0 {
        world_size
    } else {
        let text = store
            .get(WORLD_SIZE_KEY)
            .map_err(step("reading rank 0's world size"))?;
        text.parse()
            .map_err(|_| cfg.rendezvous_error("reading rank 0's world size", format!("{text:?}")))?
    };
    let fault = if claims > 1 {
        Some(Fault::DuplicateRank { rank })
    } else if rank0_world_size != world_size {
        Some(Fault::WorldSize {
            rank,
            world_size,
            rank0_world_size,
        })
    } else {
        None
    };
    if let Some(fault) = fault {
        store
            .set(FAULT_KEY, &fault.encode())
            .map_err(step("publishing a fault"))?;
        for _ in 0..rank0_world_size {
            store.wait_for_workers().map_err(step("releasing rank 0"))?;
        }
        return Err(fault.into_error());
    }
    store
        .wait_for_workers()
        .map_err(|detail| match published_fault(&store) {
            Some(fault) => fault,
            None => cfg.rendezvous_error("waiting for every rank to join", detail),
        })?;
    match published_fault(&store) {
        Some(fault) if rank == 0 => Err(fault),
        _ => Ok(store),
    }
}

/// The fault a rank published during the rendezvous, if any (a later failure's cause).
pub(crate) fn published_fault(store: &Store) -> Option<DistError> {
    store
        .check(FAULT_KEY)
        .ok()?
        .then(|| store.get(FAULT_KEY).ok())
        .flatten()
        .and_then(|t| Fault::decode(&t))
}
