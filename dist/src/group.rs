//! The process group: c10d's ProcessGroupGloo or ProcessGroupNCCL behind a Rust handle.
use std::ffi::{CString, c_char, c_int, c_void};
use std::net::UdpSocket;
use std::ptr::{self, NonNull};
use std::time::Duration;

use tch::Tensor;

use crate::rendezvous::{self, Store};
use crate::{DistError, ffi};

/// torch.distributed's default collective timeout, as the trainer's `--dist_timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether ProcessGroupNCCL was compiled in (see the crate's build script).
pub const NCCL_AVAILABLE: bool = cfg!(dino_dist_nccl);

/// The c10d backend of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors, over TCP.
    Gloo,
    /// CUDA tensors; only when `NCCL_AVAILABLE`.
    Nccl,
}

/// Where and how to build a process group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistConfig {
    pub rank: usize,
    pub world_size: usize,
    /// Rank 0's host: it serves the TCPStore there.
    pub master_addr: String,
    pub master_port: u16,
    pub backend: Backend,
    /// Bounds the rendezvous and every collective: a dead or stuck peer is an error after it.
    pub timeout: Duration,
}

impl DistConfig {
    pub(crate) fn timeout_ms(&self) -> i64 {
        i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX)
    }

    pub(crate) fn rendezvous_error(&self, step: &'static str, detail: String) -> DistError {
        DistError::Rendezvous {
            addr: self.master_addr.clone(),
            port: self.master_port,
            rank: self.rank,
            step,
            detail,
        }
    }

    fn validate(&self) -> Result<(), DistError> {
        let problem = if self.world_size == 0 || self.world_size > i32::MAX as usize {
            format!("world size {} out of range", self.world_size)
        } else if self.rank >= self.world_size {
            format!(
                "rank {} is not below the world size {}",
                self.rank, self.world_size
            )
        } else if self.master_addr.is_empty() {
            "empty master address".into()
        } else if self.timeout.is_zero() {
            "zero timeout".into()
        } else {
            return Ok(());
        };
        Err(DistError::Config(problem))
    }
}

/// A joined group of `world_size` processes. Collectives must be called in the same order
/// on every rank; each waits for its result within the configured timeout.
pub struct ProcessGroup {
    raw: NonNull<ffi::DinoPg>,
    store: Store,
    rank: usize,
    world_size: usize,
    backend: Backend,
    timeout: Duration,
}

// SAFETY: the c10d backend may be driven from any thread, one call at a time (no Sync).
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Rendezvous through the TCPStore at `master_addr:master_port`, then the backend's own
    /// connection setup; both bounded by `timeout`.
    pub fn new(cfg: &DistConfig) -> Result<Self, DistError> {
        cfg.validate()?;
        if cfg.backend == Backend::Nccl && !NCCL_AVAILABLE {
            return Err(DistError::NcclUnavailable);
        }
        let store = rendezvous::join(cfg)?;
        let (iface, host) = gloo_device(cfg);
        let opt = |s: &Option<CString>| s.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let backend = match cfg.backend {
            Backend::Gloo => ffi::BACKEND_GLOO,
            Backend::Nccl => ffi::BACKEND_NCCL,
        };
        let mut raw = ptr::null_mut();
        // SAFETY: live store, valid (or null) C strings, out pointer.
        let err = unsafe {
            ffi::dino_c10d_pg_create(
                store.raw(),
                backend,
                cfg.rank as c_int,
                cfg.world_size as c_int,
                cfg.timeout_ms(),
                opt(&iface),
                opt(&host),
                &mut raw,
            )
        };
        ffi::check(err).map_err(|detail| {
            // A rank that found a fault after rank 0 stopped waiting never joins.
            rendezvous::published_fault(&store)
                .unwrap_or_else(|| cfg.rendezvous_error("creating the process group", detail))
        })?;
        let raw = NonNull::new(raw).ok_or_else(|| {
            cfg.rendezvous_error("creating the process group", "null group".into())
        })?;
        Ok(Self {
            raw,
            store,
            rank: cfg.rank,
            world_size: cfg.world_size,
            backend: cfg.backend,
            timeout: cfg.timeout,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Sums `t` over all ranks, in place.
    pub fn all_reduce_sum_(&self, t: &Tensor) -> Result<(), DistError> {
        let ptr = tensor_ptr("all_reduce", t)?;
        // SAFETY: live group and tensor.
        self.run("all_reduce", unsafe {
            ffi::dino_c10d_all_reduce_sum(self.raw.as_ptr(), ptr)
        })
    }

    /// The sum of `t` over all ranks as a new tensor that autograd differentiates: its
    /// backward sums the incoming gradient over the ranks (torch's
    /// `torch.distributed.nn.functional.all_reduce`). With each rank's loss depending on
    /// the sum, every rank then gets the gradient of the sum of the losses. Every rank must
    /// run that backward, in the same order relative to its other collectives.
    pub fn all_reduce_sum_autograd(&self, t: &Tensor) -> Result<Tensor, DistError> {
        if !t.defined() {
            return Err(DistError::InvalidTensor {
                op: "all_reduce_autograd",
                reason: "undefined tensor".into(),
            });
        }
        let mut out = ptr::null_mut();
        // SAFETY: live group and tensor (any layout: the shim sums a contiguous copy).
        self.run("all_reduce_autograd", unsafe {
            ffi::dino_c10d_all_reduce_sum_autograd(
                self.raw.as_ptr(),
                t.as_ptr() as *mut c_void,
                &mut out,
            )
        })?;
        // SAFETY: on success, a new at::Tensor* that the Tensor now owns.
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    }

    /// Averages `t` over all ranks, in place (a sum, then a division).
    pub fn all_reduce_mean_(&self, t: &Tensor) -> Result<(), DistError> {
        self.all_reduce_sum_(t)?;
        let mut alias = t.shallow_clone();
        alias
            .f_div_scalar_(self.world_size as f64)
            .map(drop)
            .map_err(|e| DistError::InvalidTensor {
                op: "all_reduce_mean",
                reason: e.to_string(),
            })
    }

    /// Overwrites `t` on every rank with rank `root`'s values.
    pub fn broadcast_(&self, t: &Tensor, root: usize) -> Result<(), DistError> {
        if root >= self.world_size {
            let reason = format!(
                "root {root} is not a rank of a group of {}",
                self.world_size
            );
            return Err(DistError::InvalidTensor {
                op: "broadcast",
                reason,
            });
        }
        let ptr = tensor_ptr("broadcast", t)?;
        // SAFETY: live group and tensor; root checked above.
        self.run("broadcast", unsafe {
            ffi::dino_c10d_broadcast(self.raw.as_ptr(), ptr, root as c_int)
        })
    }

    /// Every rank's `t` (all of one shape and kind), in rank order.
    pub fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>, DistError> {
        let ptr = tensor_ptr("all_gather", t)?;
        let mut outs: Vec<*mut c_void> = vec![ptr::null_mut(); self.world_size];
        // SAFETY: live group and tensor; outs has room for world_size tensors.
        self.run("all_gather", unsafe {
            ffi::dino_c10d_all_gather(self.raw.as_ptr(), ptr, outs.as_mut_ptr())
        })?;
        // SAFETY: on success each entry is a new at::Tensor* that the Tensor now owns.
        Ok(outs
            .into_iter()
            .map(|p| unsafe { Tensor::from_ptr(p.cast()) })
            .collect())
    }

    /// Returns once every rank has reached it.
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: live group.
        self.run("barrier", unsafe {
            ffi::dino_c10d_barrier(self.raw.as_ptr())
        })
    }

    /// Tells the other ranks why this one is about to stop (a NaN loss, out of memory): their
    /// failing collective then names this rank and the reason.
    pub fn report_failure(&self, reason: &str) -> Result<(), DistError> {
        self.store
            .report_failure(self.rank, reason)
            .map_err(|detail| self.error("report_failure", detail))
    }

    /// Abandons pending work and communicators (NCCL's abort) and releases the group.
    pub fn abort(self) {
        // SAFETY: live group; destroyed by Drop right after.
        unsafe { ffi::dino_c10d_pg_abort(self.raw.as_ptr()) }
    }

    fn run(&self, op: &'static str, err: *mut c_char) -> Result<(), DistError> {
        ffi::check(err).map_err(|detail| {
            let detail = match self.store.failure_note() {
                Some(note) => format!("{detail}; {note}"),
                None => detail,
            };
            self.error(op, detail)
        })
    }

    fn error(&self, op: &'static str, detail: String) -> DistError {
        DistError::Collective {
            op,
            rank: self.rank,
            world_size: self.world_size,
            timeout: self.timeout,
            detail,
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by dino_c10d_pg_create, destroyed once, before the store.
        unsafe { ffi::dino_c10d_pg_destroy(self.raw.as_ptr()) }
    }
}

fn tensor_ptr(op: &'static str, t: &Tensor) -> Result<*mut c_void, DistError> {
    if !t.defined() {
        return Err(DistError::InvalidTensor {
            op,
            reason: "undefined tensor".into(),
        });
    }
    if !t.is_contiguous() {
        return Err(DistError::InvalidTensor {
            op,
            reason: "the tensor must be contiguous".into(),
        });
    }
    Ok(t.as_ptr() as *mut c_void)
}

/// Gloo's network device: `GLOO_SOCKET_IFNAME` as torch.distributed honours it, else the
/// address of this machine's interface that routes to the master (the loopback address for
/// a master on 127.0.0.1), else c10d's default (the host name's address).
fn gloo_device(cfg: &DistConfig) -> (Option<CString>, Option<CString>) {
    if let Some(iface) = std::env::var("GLOO_SOCKET_IFNAME")
        .ok()
        .filter(|s| !s.is_empty())
    {
        return (CString::new(iface).ok(), None);
    }
    let route = ["0.0.0.0:0", "[::]:0"].iter().find_map(|any| {
        let socket = UdpSocket::bind(any).ok()?;
        // A UDP connect only picks the route: nothing is sent.
        socket
            .connect((cfg.master_addr.as_str(), cfg.master_port))
            .ok()?;
        Some(socket.local_addr().ok()?.ip().to_string())
    });
    (None, route.and_then(|ip| CString::new(ip).ok()))
}
