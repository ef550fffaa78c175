//! An exported DINO model: its self-description (`metadata_props`) and batched inference.

use std::path::{Path, PathBuf};

use dino_core::linear::{LinearHeadConfig, META_LINEAR};
use dino_core::onnx_meta as meta;
use dino_core::{EvalTransform, VitConfig};
use half::f16;
use ort::environment::Environment;
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::{Tensor, TensorElementType, ValueType};

use crate::error::RuntimeError;
use crate::session::{Device, SessionOptions, create_session};

/// Images per session run on the CPU. ONNX Runtime's activations and its arena grow with
/// the batch (ViT-S/16 at 224: peak RSS of `dino-run embed` 400 MiB with runs of 32 images,
/// 289 MiB with 16, 234 MiB with 8), while its CPU kernels are no faster per image above a
/// few images (every matrix product already has 197 token rows per image; 8 was the
/// fastest of 32, 16 and 8 on 2 threads). A pipeline batch is run in slices of this size;
/// each image's embedding is the same bit for bit whatever the slice.
pub const CPU_RUN_BATCH: usize = 8;

/// What a model says about itself.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub vit: VitConfig,
    pub eval: EvalTransform,
    pub fingerprint: String,
    pub version: Option<String>,
    /// The graph's outputs, in order.
    pub outputs: Vec<String>,
    /// The graph takes and returns float16 (else float32).
    pub half_io: bool,
    /// The linear probe behind the `logits` output, when the model has one.
    pub linear: Option<LinearHeadConfig>,
}

impl ModelInfo {
    pub fn has_output(&self, name: &str) -> bool {
        self.outputs.iter().any(|o| o == name)
    }

    /// An error naming the model and what it has unless it has output `name`.
    pub fn require_output(&self, name: &str) -> Result<(), RuntimeError> {
        if self.has_output(name) {
            return Ok(());
        }
        Err(RuntimeError::MissingOutput {
            path: self.path.clone(),
            name: name.to_string(),
            available: self.outputs.join(", "),
            hint: match name {
                meta::OUTPUT_ATTENTION => {
                    "; export it with the attention output (dino-export --outputs attention)"
                }
                meta::OUTPUT_LOGITS => {
                    "; export it with a linear probe (dino-export --linear-head linear.safetensors)"
                }
                _ => "",
            },
        })
    }

    /// Values per input image.
    pub fn image_len(&self) -> usize {
        dino_core::preprocess::image_len(&self.eval)
    }
}

/// One output of a batch: shape and f32 values.
#[derive(Clone, Debug)]
pub struct OutputTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A loaded model ready for batched inference.
pub struct Model {
    session: Session,
    pub info: ModelInfo,
    run_batch: usize,
}

fn describe(t: &ValueType) -> String {
    t.to_string()
}

impl Model {
    /// Loads `path`, reads and checks its metadata and signature.
    pub fn open(
        env: &Environment,
        path: &Path,
        opts: &SessionOptions,
    ) -> Result<Self, RuntimeError> {
        if !path.is_file() {
            return Err(RuntimeError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model file not found"),
            ));
        }
        let session = create_session(env, path, opts)?;
        let info = read_info(&session, path)?;
        let run_batch = match opts.device {
            Device::Cpu => CPU_RUN_BATCH,
            Device::Cuda(_) => usize::MAX,
        };
        Ok(Self {
            session,
            info,
            run_batch,
        })
    }

    /// The most images one session run takes: batches of the pipeline are run in slices
    /// of this size (see [`CPU_RUN_BATCH`]).
    pub fn run_batch(&self) -> usize {
        self.run_batch
    }

    /// Runs `n` preprocessed images (`n * image_len` values) and returns the requested
    /// outputs in the order asked.
    pub fn run(
        &mut self,
        batch: &[f32],
        n: usize,
        outputs: &[&str],
    ) -> Result<Vec<OutputTensor>, RuntimeError> {
        let s = self.info.eval.crop_size;
        assert_eq!(batch.len(), n * self.info.image_len(), "batch buffer size");
        for o in outputs {
            self.info.require_output(o)?;
        }
        let path = self.info.path.clone();
        let mut selector = OutputSelector::no_default();
        for o in outputs {
            selector = selector.with(*o);
        }
        let opts = RunOptions::new()
            .map_err(RuntimeError::ctx(&path, "creating run options"))?
            .with_outputs(selector);
        let shape = [n, 3, s, s];
        let result = if self.info.half_io {
            let h: Vec<f16> = batch.iter().map(|&v| f16::from_f32(v)).collect();
            let t = Tensor::from_array((shape, h))
                .map_err(RuntimeError::ctx(&path, "creating the input tensor"))?;
            self.session
                .run_with_options(ort::inputs![meta::INPUT_IMAGE => t], &opts)
        } else {
            let t = ort::value::TensorRef::from_array_view((shape, batch))
                .map_err(RuntimeError::ctx(&path, "creating the input tensor"))?;
            self.session
                .run_with_options(ort::inputs![meta::INPUT_IMAGE => t], &opts)
        }
        .map_err(RuntimeError::ctx(&path, "running the model"))?;
        let mut out = Vec::with_capacity(outputs.len());
        for o in outputs {
            let v = result.get(*o).ok_or_else(|| RuntimeError::Ort {
                path: self.info.path.clone(),
                context: "reading outputs",
                why: format!("output `{o}` was not returned"),
            })?;
            let (shape, data) = if self.info.half_io {
                let (sh, d) = v
                    .try_extract_tensor::<f16>()
                    .map_err(RuntimeError::ctx(&path, "reading a float16 output"))?;
                (sh.to_vec(), d.iter().map(|x| x.to_f32()).collect())
            } else {
                let (sh, d) = v
                    .try_extract_tensor::<f32>()
                    .map_err(RuntimeError::ctx(&path, "reading an output"))?;
                (sh.to_vec(), d.to_vec())
            };
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            self.info.check_output(o, &shape, data.len(), n)?;
            out.push(OutputTensor { shape, data });
        }
        Ok(out)
    }
}

impl ModelInfo {
    /// Checks an output against the batch and the metadata: one row per image, the width
    /// the metadata promises, as many values as the shape says. A graph that ignores the
    /// batch or disagrees with its metadata is refused, never read past or misread.
    fn check_output(
        &self,
        name: &str,
        shape: &[usize],
        values: usize,
        n: usize,
    ) -> Result<(), RuntimeError> {
        let width = match name {
            meta::OUTPUT_EMBEDDING => Some(self.vit.embed_dim),
            meta::OUTPUT_LOGITS => self.linear.as_ref().map(|l| l.num_classes()),
            _ => None,
        };
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let ok = shape.first() == Some(&n)
            && count == Some(values)
            && width.is_none_or(|w| shape.len() == 2 && shape[1] == w)
            && shape.iter().all(|&d| d > 0);
        if ok {
            return Ok(());
        }
        let expected = match width {
            Some(w) => format!("[{n}, {w}] for a batch of {n}"),
            None => format!("{n} rows for a batch of {n}"),
        };
        Err(RuntimeError::BadSignature {
            path: self.path.clone(),
            name: name.into(),
            found: format!("{shape:?} with {values} values"),
            expected,
        })
    }
}

fn read_info(session: &Session, path: &Path) -> Result<ModelInfo, RuntimeError> {
    let md = session
        .metadata()
        .map_err(|e| RuntimeError::ort(path, "reading metadata_props", e))?;
    let custom = |key: &str| md.custom(key);
    let m = read_meta(custom, path)?;
    let half_io = check_input(session, path, m.eval.crop_size)?;
    let outputs: Vec<String> = session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    let linear = if outputs.iter().any(|o| o == meta::OUTPUT_LOGITS) {
        Some(read_linear(custom, path, &m.vit)?)
    } else {
        None
    };
    let info = ModelInfo {
        path: path.to_path_buf(),
        vit: m.vit,
        eval: m.eval,
        fingerprint: m.fingerprint,
        version: m.version,
        outputs,
        half_io,
        linear,
    };
    info.require_output(meta::OUTPUT_EMBEDDING)?;
    Ok(info)
}

/// The `dino_rs.*` keys every exported model has.
struct Meta {
    vit: VitConfig,
    eval: EvalTransform,
    fingerprint: String,
    version: Option<String>,
}

fn missing(path: &Path, key: &str) -> RuntimeError {
    RuntimeError::MissingMetadata {
        path: path.to_path_buf(),
        key: key.to_string(),
    }
}

fn bad(path: &Path, key: &str, why: String) -> RuntimeError {
    RuntimeError::BadMetadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        why,
    }
}

fn read_meta(custom: impl Fn(&str) -> Option<String>, path: &Path) -> Result<Meta, RuntimeError> {
    let get = |key: &str| custom(key).ok_or_else(|| missing(path, key));
    let vit: VitConfig = serde_json::from_str(&get(meta::META_VIT)?)
        .map_err(|e| bad(path, meta::META_VIT, e.to_string()))?;
    let eval: EvalTransform = serde_json::from_str(&get(meta::META_EVAL)?)
        .map_err(|e| bad(path, meta::META_EVAL, e.to_string()))?;
    vit.validate()
        .map_err(|e| bad(path, meta::META_VIT, e.to_string()))?;
    dino_core::preprocess::validate(&eval)
        .map_err(|e| bad(path, meta::META_EVAL, e.to_string()))?;
    let fingerprint = get(meta::META_FINGERPRINT)?;
    if fingerprint.is_empty() {
        return Err(bad(path, meta::META_FINGERPRINT, "empty".into()));
    }
    Ok(Meta {
        vit,
        eval,
        fingerprint,
        version: custom(meta::META_VERSION),
    })
}

/// The probe behind a `logits` output: its class names and feature recipe.
fn read_linear(
    custom: impl Fn(&str) -> Option<String>,
    path: &Path,
    vit: &VitConfig,
) -> Result<LinearHeadConfig, RuntimeError> {
    let text = custom(META_LINEAR).ok_or_else(|| missing(path, META_LINEAR))?;
    let c: LinearHeadConfig =
        serde_json::from_str(&text).map_err(|e| bad(path, META_LINEAR, e.to_string()))?;
    c.validate(Some(vit))
        .map_err(|why| bad(path, META_LINEAR, why))?;
    Ok(c)
}

/// Whether the `image` input is float16 (else float32); an error unless it is one of them
/// with 3 channels and, where the graph fixes them, sides of the metadata's crop size.
fn check_input(session: &Session, path: &Path, crop: usize) -> Result<bool, RuntimeError> {
    let inputs = session.inputs();
    let input = inputs
        .iter()
        .find(|i| i.name() == meta::INPUT_IMAGE)
        .ok_or_else(|| RuntimeError::BadSignature {
            path: path.to_path_buf(),
            name: "input".into(),
            found: inputs
                .iter()
                .map(|i| i.name().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            expected: format!("an input named `{}`", meta::INPUT_IMAGE),
        })?;
    let wrong = |t: &ValueType| RuntimeError::BadSignature {
        path: path.to_path_buf(),
        name: meta::INPUT_IMAGE.into(),
        found: describe(t),
        expected: format!(
            "a float32 or float16 tensor [batch, 3, {crop}, {crop}] (the metadata's crop size)"
        ),
    };
    // -1 marks a dimension the graph leaves free.
    let fits = |d: i64, want: usize| d < 0 || d as usize == want;
    match input.dtype() {
        ValueType::Tensor { ty, shape, .. }
            if shape.len() == 4
                && fits(shape[1], 3)
                && fits(shape[2], crop)
                && fits(shape[3], crop) =>
        {
            match ty {
                TensorElementType::Float32 => Ok(false),
                TensorElementType::Float16 => Ok(true),
                _ => Err(wrong(input.dtype())),
            }
        }
        other => Err(wrong(other)),
    }
}
