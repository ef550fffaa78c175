//! ONNX Runtime loaded once per process, and models opened with the same options: what the
//! CLI commands and the server (which reopens its model on SIGHUP) share.

use std::path::Path;

use ort::environment::Environment;

use crate::error::RuntimeError;
use crate::model::Model;
use crate::session::{self, Device, SessionOptions};

/// How ONNX Runtime is found and sessions are created (the CLI's global options).
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// libonnxruntime (default: see [`session::find_ort_lib`]).
    pub ort_lib: Option<std::path::PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Intra-op threads (0: one per core).
    pub threads: usize,
    /// Do not cache optimised graphs.
    pub no_cache: bool,
}

/// The loaded ONNX Runtime environment and the session options models are opened with.
pub struct Engine {
    env: Environment,
    opts: SessionOptions,
}

impl Engine {
    pub fn new(o: &EngineOptions) -> Result<Self, RuntimeError> {
        let device: Device = o.device.parse()?;
        let lib = session::find_ort_lib(o.ort_lib.as_deref())?;
        let env = session::init_ort(&lib)?;
        let opts = SessionOptions {
            device,
            threads: o.threads,
            cache_dir: if o.no_cache {
                None
            } else {
                session::default_cache_dir()
            },
        };
        Ok(Self { env, opts })
    }

    pub fn open(&self, model: &Path) -> Result<Model, RuntimeError> {
        Model::open(&self.env, model, &self.opts)
    }
}
