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
    /// Mixed precision through libtorch's CUDA autocast.
    Autocast,
}

impl Precision {
    pub fn resolve(spec: &str, device: Device) -> Result<Self> {
        match (spec, device.is_cuda()) {
            ("fp32", _) | ("auto", false) => Ok(Self::Fp32),
            ("auto" | "bf16" | "fp16", true) => Ok(Self::Autocast),
            (p, false) => bail!(
                "precision `{p}` needs CUDA (mixed precision on CPU is slower than fp32 here); use fp32 or auto"
            ),
            (p, _) => bail!("precision `{p}`: expected auto, bf16, fp16 or fp32"),
        }
    }

    pub fn autocast(self) -> bool {
        self == Self::Autocast
    }
}
