//! Errors of the runtime library: each names the file, the key or the output involved.

use std::path::PathBuf;

use dino_core::CoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked in: {tried}).\n\
         Install it with `pip install onnxruntime==1.31.1` (or onnxruntime-gpu==1.31.1 for CUDA) \
         and pass its libonnxruntime.so.1.31.1 with `--ort-lib PATH` or the ORT_DYLIB_PATH \
         environment variable, or place it next to the dino-run binary"
    )]
    OrtLibNotFound { tried: String },
    #[error("{path}: cannot load ONNX Runtime: {why}")]
    OrtLoad { path: PathBuf, why: String },
    #[error(
        "CUDA device {device} requested but the CUDA execution provider cannot be used: {why}\n\
         (dino-run never falls back to the CPU silently; install onnxruntime-gpu==1.31.1 with its \
         CUDA libraries and pass its libonnxruntime.so with --ort-lib, or use --device cpu)"
    )]
    Cuda { device: i32, why: String },
    #[error("invalid device `{0}`: expected `cpu`, `cuda` or `cuda:N`")]
    BadDevice(String),
    #[error("{path}: {context}: {why}")]
    Ort {
        path: PathBuf,
        context: &'static str,
        why: String,
    },
    #[error("{path}: metadata_props `{key}` is missing: the model was not exported by dino-export")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{path}: metadata_props `{key}` is not valid: {why}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        why: String,
    },
    #[error("{path}: the model has no `{name}` output (it has: {available}){hint}")]
    MissingOutput {
        path: PathBuf,
        name: String,
        available: String,
        hint: &'static str,
    },
    #[error("{path}: the model's `{name}` is {found}, expected {expected}")]
    BadSignature {
        path: PathBuf,
        name: String,
        found: String,
        expected: String,
    },
    #[error("{path}: not a valid dino-run gallery: {why}")]
    BadGallery { path: PathBuf, why: String },
    #[error(
        "{path}: the gallery was built with another model (gallery fingerprint {gallery}, \
         model fingerprint {model}); rebuild it with `dino-run index` and this model"
    )]
    GalleryMismatch {
        path: PathBuf,
        gallery: String,
        model: String,
    },
    #[error("the model returned {logits} class scores for {classes} class names")]
    ClassCount { logits: usize, classes: usize },
    #[error(
        "{path}: cannot classify without a gallery: the model has no `logits` output; pass \
         --gallery GALLERY.dgal (built by `dino-run index`), or export the model with a linear \
         probe (`dino-export --linear-head linear.safetensors`)"
    )]
    NoClassifier { path: PathBuf },
    #[error("the embedding has dimension {embedding}, the gallery {gallery}")]
    DimensionMismatch { embedding: usize, gallery: usize },
    #[error(
        "the gallery keeps no image paths (built before format version 2): rebuild it with \
         `dino-run index`"
    )]
    NoPaths,
    #[error(
        "the gallery is unlabelled (indexed from a folder without class folders): it answers \
         search, not k-NN classification; index a labelled ImageFolder (<dir>/<class>/<image>) \
         to classify"
    )]
    UnlabelledGallery,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl RuntimeError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// `map_err` adapter naming the file and what was being done.
    pub(crate) fn ctx<R>(
        path: &std::path::Path,
        context: &'static str,
    ) -> impl FnOnce(ort::Error<R>) -> Self {
        move |e| Self::ort(path, context, e)
    }

    pub(crate) fn ort<R>(path: &std::path::Path, context: &'static str, e: ort::Error<R>) -> Self {
        Self::Ort {
            path: path.to_path_buf(),
            context,
            why: e.message().to_string(),
        }
    }
}
