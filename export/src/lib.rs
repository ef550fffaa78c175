//! dino-export: a DINO ViT teacher backbone to a self-describing ONNX file.
//!
//! Pure Rust end to end: the weights come from safetensors (or a PyTorch `.pth` read by
//! `dino-import`'s small pickle VM), the graph is built node by node, and the ONNX protobuf is encoded
//! with prost from hand-derived messages. Neither libtorch, Python nor protoc is needed.

pub mod dense;
pub mod error;
pub mod int8;
pub mod load;
pub mod meta;
pub mod onnx;
pub mod probe;
pub mod vit;

use std::path::{Path, PathBuf};

use prost::Message;

use dino_core::onnx_digest::append_digest;
use dino_core::onnx_meta::{OUTPUT_LOGITS, backbone_fingerprint};
use dino_core::st::write_bytes_atomic;

pub use error::ExportError;
pub use int8::Int8Range;
use load::Backbone;
use onnx::graph::{Float, Linears};
use onnx::proto::{ModelProto, OperatorSetIdProto};
pub use vit::Outputs;

/// Weight precision of the exported model. Inputs and outputs are float32 in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Fp16,
    /// The blocks' Linear layers with per-output-channel int8 weights and activations
    /// quantised at run time; everything else (patch embedding, norms, attention, a
    /// probe) in float32.
    Int8(Int8Range),
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8(_) => "int8",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Input side in pixels; the checkpoint's native size when absent.
    pub img_size: Option<usize>,
    pub outputs: Outputs,
    pub opset: i64,
    pub precision: Precision,
    /// A linear probe (`dino-train linear`) of this backbone: adds the `logits` output.
    pub linear_head: Option<PathBuf>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            img_size: None,
            outputs: Outputs::default(),
            opset: onnx::DEFAULT_OPSET,
            precision: Precision::Fp32,
            linear_head: None,
        }
    }
}

/// What was written, for the final report line.
#[derive(Clone, Debug)]
pub struct ExportSummary {
    pub arch: String,
    pub patch_size: usize,
    pub input_size: usize,
    pub nodes: usize,
    pub bytes: usize,
    pub fingerprint: String,
    pub outputs: Vec<&'static str>,
}

/// Reads `checkpoint` and writes the ONNX model to `to` (atomically).
pub fn export(
    checkpoint: &Path,
    to: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary, ExportError> {
    check_destination(to)?;
    dino_core::st::ensure_distinct(checkpoint, to)?;
    if let Some(head) = &opts.linear_head {
        dino_core::st::ensure_distinct(head, to)?;
    }
    let backbone = load::load_backbone(checkpoint)?;
    export_backbone(&backbone, to, opts)
}

/// Fails early (before any heavy work) when `to` cannot be written: the folder must
/// exist and accept a new file (probed with a temporary one).
pub fn check_destination(to: &Path) -> Result<(), ExportError> {
    let dir = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let fail = |source: std::io::Error| ExportError::Write {
        path: to.to_path_buf(),
        source,
    };
    if to.is_dir() {
        return Err(fail(std::io::Error::other("it is a folder")));
    }
    if !dir.is_dir() {
        return Err(fail(std::io::Error::other("its folder does not exist")));
    }
    let probe = dir.join(format!(".dino-export-probe-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(fail)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Exports an already loaded backbone (see [`export`]).
pub fn export_backbone(
    b: &Backbone,
    to: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary, ExportError> {
    let vit = &b.vit;
    let img_size = check_options(vit, opts)?;
    let (float, linears) = match opts.precision {
        Precision::Fp32 => (Float::F32, Linears::Float),
        Precision::Fp16 => (Float::F16, Linears::Float),
        Precision::Int8(range) => (Float::F32, Linears::Int8(range)),
    };
    let fp = backbone_fingerprint(&b.tensors);
    let head = match &opts.linear_head {
        Some(p) => Some(probe::load(p, &b.path, vit, &fp)?),
        None => None,
    };
    let gopts = vit::GraphOptions {
        img_size,
        outputs: opts.outputs,
        opset: opts.opset,
        float,
        linears,
        linear: head.as_ref(),
    };
    let weights = vit::Weights {
        path: &b.path,
        tensors: &b.tensors,
    };
    let graph = vit::build(vit, &weights, &gopts)?;
    let nodes = graph.node_count();
    let eval = meta::eval_for(b.eval.as_ref(), img_size);
    let mut outputs = opts.outputs.names();
    if head.is_some() {
        outputs.push(OUTPUT_LOGITS);
    }
    let props = meta::props(&meta::ModelMeta {
        vit,
        eval: &eval,
        fingerprint: &fp,
        outputs: &outputs,
        precision: opts.precision.name(),
        linear: head.as_ref().map(|h| &h.config),
    });
    let model = model_proto(vit, opts, img_size, graph, props);
    let len = model.encoded_len();
    if len >= i32::MAX as usize {
        return Err(ExportError::Options(format!(
            "the model would be {len} bytes, over protobuf's 2 GiB limit"
        )));
    }
    let mut bytes = model.encode_to_vec();
    // dino-run recomputes this digest on every load and refuses a damaged file.
    append_digest(&mut bytes).map_err(|why| ExportError::Options(format!("encoding: {why}")))?;
    write_bytes_atomic(to, &bytes).map_err(|e| match e {
        dino_core::CoreError::Io { path, source } => ExportError::Write { path, source },
        other => other.into(),
    })?;
    Ok(ExportSummary {
        arch: vit.arch.clone(),
        patch_size: vit.patch_size,
        input_size: img_size,
        nodes,
        bytes: bytes.len(),
        fingerprint: fp,
        outputs,
    })
}

/// The input size (checked against the patch size) after checking the opset.
fn check_options(vit: &dino_core::VitConfig, opts: &ExportOptions) -> Result<usize, ExportError> {
    let img_size = opts.img_size.unwrap_or(vit.img_size);
    if img_size == 0 || !img_size.is_multiple_of(vit.patch_size) {
        return Err(ExportError::Options(format!(
            "--img-size {img_size} must be a positive multiple of the patch size {}",
            vit.patch_size
        )));
    }
    if !(onnx::MIN_OPSET..=onnx::MAX_OPSET).contains(&opts.opset) {
        return Err(ExportError::Options(format!(
            "--opset {} is not supported (choose {} to {})",
            opts.opset,
            onnx::MIN_OPSET,
            onnx::MAX_OPSET
        )));
    }
    Ok(img_size)
}

fn model_proto(
    vit: &dino_core::VitConfig,
    opts: &ExportOptions,
    img_size: usize,
    graph: onnx::graph::Graph,
    metadata_props: Vec<onnx::proto::StringStringEntryProto>,
) -> ModelProto {
    ModelProto {
        ir_version: onnx::ir_version_for(opts.opset),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opts.opset,
        }],
        producer_name: "dino-rs".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: format!(
            "DINO {} /{} backbone at {img_size}px ({}); input `image` float32 [batch, {}, {img_size}, {img_size}] normalised with mean/std",
            vit.arch,
            vit.patch_size,
            opts.precision.name(),
            vit.in_chans
        ),
        graph: Some(graph.into_proto("dino_vit")),
        metadata_props,
    }
}
