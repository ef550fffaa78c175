//! Device and precision choice: CUDA when present unless told otherwise, and a clear error
//! (never a silent CPU fallback) when CUDA is asked for and absent.

use std::fmt;
use std::str::FromStr;

use tch::{Cuda, Device};

use crate::error::{Result, TrainError};

/// Sets flush-to-zero and denormals-are-zero for this thread's SSE/AVX arithmetic, as
/// `torch.set_flush_denormal(True)` does. Threads started afterwards (libtorch's intra-op
/// pool, the data workers) inherit the setting, so call it first thing in `main`. DINO's
/// sharpened teacher softmax (temperatures of a few hundredths) and the student's
/// log-softmax gradients are full of values below 1e-38, which x86 cores compute some hundred times slower than
/// normal numbers; flushing them changes results only below fp32's normal range.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads and writes the MXCSR register of the current thread only; bits 15 (FTZ)
    // and 6 (DAZ) are defined on every x86-64 processor with SSE2.
    unsafe {
        let mut csr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
        csr |= (1 << 15) | (1 << 6);
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
    }
}

/// Makes glibc keep freed memory for reuse instead of returning it to the kernel: no `mmap`
/// for large blocks (libtorch allocates its CPU tensors with plain `posix_memalign`, and a
/// training step frees and re-allocates hundreds of MB of activations, each fresh `mmap`
/// paying a page fault per 4 KiB page) and no trimming of the heap top, for a little more
/// peak memory that stays at the step's high-water mark (figures in BENCHMARKS.md, "CPU
/// training step"). Linux with glibc only; elsewhere nothing changes.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // mallopt(3) parameters of glibc's malloc.h.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_MAX: i32 = -4;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes allocator tunables; called once, before the work.
        unsafe {
            mallopt(M_MMAP_MAX, 0);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
            mallopt(M_TOP_PAD, 512 << 20);
        }
    }
}

/// Where to run (`--device`): CUDA when present (`auto`), the CPU, or a CUDA device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    /// `cuda` (device 0) or `cuda:N`.
    Cuda(Option<usize>),
}

/// A `--device` that is none of `auto`, `cpu`, `cuda`, `cuda:N`.
#[derive(Debug, thiserror::Error)]
#[error("device `{0}`: expected auto, cpu, cuda or cuda:N")]
pub struct DeviceSpecError(String);

impl FromStr for DeviceSpec {
    type Err = DeviceSpecError;
    fn from_str(s: &str) -> Result<Self, DeviceSpecError> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(None)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(|i| Self::Cuda(Some(i)))
                .ok_or_else(|| DeviceSpecError(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(i)) => write!(f, "cuda:{i}"),
        }
    }
}

/// The device `spec` names; CUDA asked for and absent is an error, never a CPU fallback.
pub fn select_device(spec: DeviceSpec) -> Result<Device> {
    let err = |why: String| TrainError::Device {
        spec: spec.to_string(),
        why,
    };
    match spec {
        DeviceSpec::Auto => Ok(Device::cuda_if_available()),
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(i) => {
            let (i, n) = (i.unwrap_or(0), Cuda::device_count() as usize);
            if n == 0 {
                return Err(err(
                    "CUDA is not available (no GPU, or libtorch_cuda could not load)".into(),
                ));
            }
            if i >= n {
                return Err(err(format!("only {n} CUDA device(s)")));
            }
            Ok(Device::Cuda(i))
        }
    }
}

/// `--precision`: what the forward passes compute in, resolved for the device by
/// [`Precision::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "lower")]
pub enum PrecisionSpec {
    /// bf16 on CUDA, fp32 on CPU
    Auto,
    /// CUDA autocast to bfloat16
    Bf16,
    /// CUDA autocast to float16 with loss scaling (the official use_fp16)
    Fp16,
    /// no autocast
    Fp32,
}

/// Arithmetic precision of the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    /// CUDA autocast to bfloat16: fp32 range, so no loss scaling is needed.
    Bf16,
    /// CUDA autocast to float16 with dynamic loss scaling (the official `use_fp16`).
    Fp16,
}

impl Precision {
    pub fn resolve(spec: PrecisionSpec, device: Device) -> Result<Self> {
        use PrecisionSpec as S;
        let p = match (spec, device.is_cuda()) {
            (S::Fp32, _) | (S::Auto, false) => Self::Fp32,
            (S::Auto | S::Bf16, true) => Self::Bf16,
            (S::Fp16, true) => Self::Fp16,
            (p @ (S::Bf16 | S::Fp16), false) => {
                return Err(TrainError::Invalid(format!(
                    "precision `{p}` needs CUDA (CPU autocast is slower than fp32 without AMX); use fp32 or auto"
                )));
            }
        };
        if p != Self::Fp32 {
            set_cuda_autocast_dtype(p == Self::Bf16);
        }
        Ok(p)
    }

    /// Whether forwards run under autocast.
    pub fn autocast(self) -> bool {
        self != Self::Fp32
    }
}

// libtorch's autocast controls, called directly: `tch` exposes on/off through deprecated
// entry points (they print a warning per thread) and not the dtype at all. All take or
// return plain integers: `c10::DeviceType` and `c10::ScalarType` are `int8_t`-backed enums.
unsafe extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device_type: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn at_is_autocast_enabled(device_type: i8) -> bool;
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device_type: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast17increment_nestingEv"]
    fn at_increment_nesting() -> i32;
    #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
    fn at_decrement_nesting() -> i32;
    #[link_name = "_ZN2at8autocast11clear_cacheEv"]
    fn at_clear_cache();
}
const DEVICE_CUDA: i8 = 1;
const SCALAR_HALF: i8 = 5;
const SCALAR_BFLOAT16: i8 = 15;

/// Chooses the dtype of CUDA autocast regions (libtorch's default is float16).
fn set_cuda_autocast_dtype(bf16: bool) {
    let dtype = if bf16 { SCALAR_BFLOAT16 } else { SCALAR_HALF };
    // SAFETY: a setter of a global in libtorch_cpu (linked through tch), integer arguments.
    unsafe { at_set_autocast_dtype(DEVICE_CUDA, dtype) }
}

/// Runs `f` with CUDA autocast on (or off), restoring the previous state after, as
/// `torch.autocast("cuda")` does; the cast-weight cache is cleared when the outermost
/// region ends.
pub fn cuda_autocast<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    // SAFETY: libtorch's thread-local autocast state, plain integer/bool arguments.
    let previous = unsafe {
        let previous = at_is_autocast_enabled(DEVICE_CUDA);
        at_set_autocast_enabled(DEVICE_CUDA, true);
        at_increment_nesting();
        previous
    };
    let out = f();
    // SAFETY: as above.
    unsafe {
        if at_decrement_nesting() == 0 {
            at_clear_cache();
        }
        at_set_autocast_enabled(DEVICE_CUDA, previous);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocast_region_restores_the_previous_state() {
        // The flags are thread-local bookkeeping and work without a GPU.
        // SAFETY: reads libtorch's autocast flag.
        let on = || unsafe { at_is_autocast_enabled(DEVICE_CUDA) };
        assert!(!on());
        let inner = cuda_autocast(true, || (on(), cuda_autocast(true, on)));
        assert_eq!(inner, (true, true));
        assert!(!on());
        assert!(!cuda_autocast(false, on));
    }

    #[test]
    fn device_spec_round_trips() {
        for s in ["auto", "cpu", "cuda", "cuda:1"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
        assert_eq!(
            "cuda:1".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(Some(1))
        );
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn cpu_rejects_reduced_precision() {
        assert_eq!(
            Precision::resolve(PrecisionSpec::Auto, Device::Cpu).unwrap(),
            Precision::Fp32
        );
        assert!(Precision::resolve(PrecisionSpec::Bf16, Device::Cpu).is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }
}
