//! `dino-run serve`: embeddings, k-NN classification, gallery search and attention maps
//! over HTTP (axum on tokio), with dynamic batching.
//!
//! A request is read under a body limit, its images decoded and preprocessed (the CLI's
//! [`crate::pipeline::prepare`]) on bounded decode threads, then queued for the one
//! inference thread ([`batch`]), which runs up to `max_batch` queued images together. The
//! loaded model and gallery ([`state::Loaded`]) are swapped as one on SIGHUP; queued images
//! run on the model they were preprocessed for. SIGTERM stops accepting, lets in-flight
//! requests finish and exits. The server never opens a path taken from a request.

mod batch;
mod limits;
mod metrics;
mod page;
mod reply;
mod routes;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::engine::{Engine, EngineOptions};
use crate::error::RuntimeError;

/// Everything `dino-run serve` is told.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub engine: EngineOptions,
    pub model: PathBuf,
    pub gallery: Option<PathBuf>,
    pub bind: SocketAddr,
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Most images queued for the model.
    pub max_queue: usize,
    /// Most requests handled at once.
    pub max_inflight: usize,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Most pixels of one image, checked from its header before decoding.
    pub max_pixels: u64,
    pub timeout: Duration,
    /// Decode threads (0: one per core).
    pub decode_threads: usize,
    /// Bearer token required by /v1/* and /metrics.
    pub token: Option<String>,
    /// The page's sample image (`/?sample`), held in memory.
    pub page_sample: Option<Vec<u8>>,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Start(std::io::Error),
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
}

/// Loads the model (and gallery), listens and serves until SIGTERM or Ctrl-C.
pub fn run(opts: ServeOptions) -> Result<(), ServeError> {
    let engine = Engine::new(&opts.engine)?;
    let loaded = state::Loaded::load(&engine, &opts.model, opts.gallery.as_deref(), 0)?;
    let decode_threads = match opts.decode_threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(decode_threads + 2)
        .thread_name("dino-serve")
        .enable_all()
        .build()
        .map_err(ServeError::Start)?;
    let (queue, rx) = batch::Queue::new(opts.max_queue);
    let app = Arc::new(state::App::new(opts, engine, loaded, queue, decode_threads));
    let worker = batch::spawn_worker(rx, app.clone());
    let result = rt.block_on(routes::serve(app.clone()));
    // No request can queue more now; the worker finishes what is queued, then ends.
    app.queue.close();
    let _ = worker.join();
    result
}
