//! Device and precision choice: CUDA when present unless told otherwise, and a clear error
//! (never a silent CPU fallback) when CUDA is asked for and absent.

use anyhow::{Result, bail};
use tch::{Cuda, Device};

pub fn select_device(spec: &str) -> Result<Device> {
    let cuda = |i: usize| -> Result<Device> {
        let n = Cuda::device_count() as usize;
        if n == 0 {
            bail!(
                "device `{spec}`: CUDA is not available (no GPU, or libtorch_cuda could not load)"
            );
        }
        if i >= n {
            bail!("device `{spec}`: only {n} CUDA device(s)");
        }
        Ok(Device::Cuda(i))
    };
    match spec {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => bail!("device `{spec}`: expected auto, cpu, cuda or cuda:N"),
        },
    }
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
    pub fn resolve(spec: &str, device: Device) -> Result<Self> {
        let p = match (spec, device.is_cuda()) {
            ("fp32", _) | ("auto", false) => Self::Fp32,
            ("auto" | "bf16", true) => Self::Bf16,
            ("fp16", true) => Self::Fp16,
            (p @ ("bf16" | "fp16"), false) => bail!(
                "precision `{p}` needs CUDA (CPU autocast is slower than fp32 without AMX); use fp32 or auto"
            ),
            (p, _) => bail!("precision `{p}`: expected auto, bf16, fp16 or fp32"),
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

/// Chooses the dtype of CUDA autocast regions (libtorch's default is float16).
///
/// `tch` exposes autocast on/off but not its dtype, so this calls libtorch's
/// `at::autocast::set_autocast_dtype(c10::DeviceType, c10::ScalarType)` directly; both enums
/// are `int8_t`-backed (`DeviceType::CUDA` = 1, `ScalarType::Half` = 5, `BFloat16` = 15).
fn set_cuda_autocast_dtype(bf16: bool) {
    unsafe extern "C" {
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        fn at_set_autocast_dtype(device_type: i8, dtype: i8);
    }
    const CUDA: i8 = 1;
    let dtype = if bf16 { 15 } else { 5 };
    // SAFETY: a plain setter of a global in libtorch_cpu (linked through tch), taking two
    // integer enums by value.
    unsafe { at_set_autocast_dtype(CUDA, dtype) }
}
