//! Between libtorch var stores and dino-rs safetensors files.
//!
//! Names in a `VarStore` already equal the official keys (the model builds its paths that
//! way), so saving is a copy and loading is a checked copy: every missing key, unexpected
//! key and shape mismatch is reported by name before anything is overwritten.

use std::collections::BTreeMap;
use std::path::Path;

use dino_core::st::{self, Dtype, RawTensor};
use dino_core::weights::{backbone_shapes, check_shapes};
use dino_core::{EvalTransform, VitConfig};
use tch::{Device, Kind, Tensor, nn};

use crate::error::ModelError;
use crate::vit::VisionTransformer;

/// A tensor's values as stored by dino-rs: floats as f32, integers as i64.
pub fn to_raw(t: &Tensor) -> RawTensor {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let t = t.detach().to_device(Device::Cpu).contiguous();
    if t.is_floating_point() {
        let v = Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).expect("f32 copy");
        RawTensor::from_f32(shape, &v)
    } else {
        let v = Vec::<i64>::try_from(t.to_kind(Kind::Int64).flatten(0, -1)).expect("i64 copy");
        RawTensor::from_i64(shape, &v)
    }
}

/// A stored tensor as a CPU tensor (f32 for every float dtype, i64 for integers).
pub fn from_raw(r: &RawTensor, path: &Path, key: &str) -> Result<Tensor, ModelError> {
    let shape: Vec<i64> = r.shape.iter().map(|&d| d as i64).collect();
    let t = match r.dtype {
        Dtype::I64 => {
            let v: Vec<i64> = r
                .data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            Tensor::from_slice(&v)
        }
        _ => Tensor::from_slice(&r.to_f32(path, key)?),
    };
    Ok(t.reshape(shape))
}

/// Every variable of `vs` (trainable or not) as raw tensors, keys prefixed by `prefix`.
pub fn named_raw(vs: &nn::VarStore, prefix: &str) -> BTreeMap<String, RawTensor> {
    vs.variables()
        .iter()
        .map(|(k, t)| (format!("{prefix}{k}"), to_raw(t)))
        .collect()
}

/// Copies `tensors` into the variables of `vs` after checking them against `expected`.
/// BatchNorm's `num_batches_tracked` (official files have it, libtorch's module does not)
/// is accepted and ignored.
pub fn load_checked(
    vs: &nn::VarStore,
    tensors: &BTreeMap<String, RawTensor>,
    expected: &[(String, Vec<usize>)],
    path: &Path,
) -> Result<(), ModelError> {
    let found: BTreeMap<String, Vec<usize>> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.shape.clone()))
        .collect();
    check_shapes(path, expected, &found)?;
    let mut vars = vs.variables();
    for (key, raw) in tensors {
        let Some(var) = vars.get_mut(key) else {
            if key.ends_with("num_batches_tracked") {
                continue;
            }
            return Err(ModelError::Tch {
                path: path.to_path_buf(),
                key: key.clone(),
                source: tch::TchError::TensorNameNotFound(key.clone(), path.display().to_string()),
            });
        };
        let src = from_raw(raw, path, key)?;
        tch::no_grad(|| var.f_copy_(&src.to_kind(var.kind()))).map_err(|source| {
            ModelError::Tch {
                path: path.to_path_buf(),
                key: key.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Writes a backbone alone (official keys, no prefix) with its config: the file
/// `dino-export` reads and timm loads.
pub fn save_backbone(
    path: &Path,
    vs: &nn::VarStore,
    cfg: &VitConfig,
    eval: Option<&EvalTransform>,
) -> Result<(), ModelError> {
    let meta = st::backbone_metadata(cfg, None, eval, st::KIND_BACKBONE);
    st::write_atomic(path, &named_raw(vs, ""), meta)?;
    Ok(())
}

/// A backbone loaded from a dino-rs file, ready for inference on `device`.
pub struct LoadedBackbone {
    pub vs: nn::VarStore,
    pub model: VisionTransformer,
    pub eval: Option<EvalTransform>,
}

pub fn load_backbone(path: &Path, device: Device) -> Result<LoadedBackbone, ModelError> {
    load_pretrained(path, None, device)
}

/// A frozen backbone from any file `--pretrained_weights` accepts (dino-rs backbone or
/// checkpoint, official `.pth`), `key` choosing `teacher` (default) or `student`.
pub fn load_pretrained(
    path: &Path,
    key: Option<&str>,
    device: Device,
) -> Result<LoadedBackbone, ModelError> {
    let p = dino_import::read_pretrained(path, key)?;
    let mut cfg = p.vit;
    cfg.drop_path_rate = 0.0;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = VisionTransformer::new(&vs.root(), &cfg);
    load_checked(&vs, &p.tensors, &backbone_shapes(&cfg), path)?;
    vs.set_device(device);
    vs.freeze();
    Ok(LoadedBackbone {
        vs,
        model,
        eval: p.eval,
    })
}
