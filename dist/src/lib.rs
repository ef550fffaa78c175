//! Distributed training on torch.distributed's own engine: c10d, the C++ core of
//! libtorch, reached from Rust.
//!
//! A rendezvous through c10d's `TCPStore` (rank 0 serves it), then `ProcessGroupGloo` for
//! CPU tensors or `ProcessGroupNCCL` for CUDA tensors, with all-reduce, broadcast,
//! all-gather and barrier on the `at::Tensor` behind a `tch::Tensor`. The wire protocol is
//! therefore PyTorch's: a Python rank using `torch.distributed` can join the same group
//! (a test does), and collectives scale and fail the way PyTorch users know.
//!
//! Why a shim: `tch` binds ATen's tensor API only, not c10d. `csrc/c10d_shim.cpp` is a
//! small `extern "C"` layer compiled by the build script against the torch wheel's own
//! headers, the way torch-sys compiles its wrapper, and linked to the wheel's libtorch; it
//! catches every C++ exception and returns it as text, so nothing unwinds into Rust.
//!
//! Why Debian's gloo headers: the wheel ships c10d's headers but not gloo's, which
//! `ProcessGroupGloo.hpp` includes. The shim needs gloo's declarations only (a device
//! handle held in a `shared_ptr`); the gloo code that runs is the one inside
//! `libtorch_cpu.so`. So the headers come from the `libgloo-dev` package
//! (`scripts/sysdeps.sh` installs it) and no copy of gloo lives in this tree.
//! NCCL's header comes from the nvidia-nccl wheel that torch depends on.
//!
//! Faults: every collective waits on its c10d `Work` with the group's timeout, so a peer
//! that died makes it fail (at once when its sockets close, else at the timeout) with a
//! message naming the operation and this rank; a rank that stops on purpose can say why
//! first ([`ProcessGroup::report_failure`]). Rendezvous problems (port in use, unreachable
//! master, world-size mismatch between ranks) are typed errors.
//!
//! [`DistEnv::from_env`] reads the launcher's variables (torchrun's or SLURM's).
mod env;
mod error;
mod ffi;
mod group;
mod rendezvous;

pub use env::{DEFAULT_MASTER_PORT, DistEnv, Launcher, first_host};
pub use error::DistError;
pub use group::{Backend, DEFAULT_TIMEOUT, DistConfig, NCCL_AVAILABLE, ProcessGroup};
