//! `dino-run serve`'s options: the limits of the server, as flags.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use dino_runtime::engine::EngineOptions;
use dino_runtime::serve::ServeOptions;

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, value_name = "MODEL.onnx")]
    model: PathBuf,
    /// Gallery for /v1/classify and /v1/search (built by `dino-run index` with this model).
    #[arg(long, value_name = "GALLERY.dgal")]
    gallery: Option<PathBuf>,
    /// Address to listen on (loopback unless told otherwise; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: String,
    /// Most images one model run takes from the queue.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Longest wait for more images once one is queued, in milliseconds.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Most images waiting for the model; beyond, requests get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Most requests handled at once; beyond, 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_inflight: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 16 << 20)]
    max_body: usize,
    /// Most pixels of one decoded image (413 beyond), checked before decoding.
    #[arg(long, default_value_t = 40_000_000)]
    max_pixels: u64,
    /// Per-request time limit in milliseconds (504 beyond).
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Threads decoding and preprocessing images (0: one per core).
    #[arg(long, default_value_t = 0)]
    decode_threads: usize,
    /// File holding a bearer token that /v1/* and /metrics then require.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// An image the page at / can load as its sample (`/?sample`), read once at start.
    #[arg(long, value_name = "IMAGE")]
    page_sample: Option<PathBuf>,
}

impl ServeArgs {
    /// The server's options; reads the token and the page's sample image.
    pub fn options(&self, engine: EngineOptions) -> Result<ServeOptions> {
        let a = self;

        let token = match &a.token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read the token", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        if token.as_deref() == Some("") {
            bail!("the --token-file is empty");
        }
        let page_sample = match &a.page_sample {
            Some(p) => {
                Some(std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?)
            }
            None => None,
        };
        let bind = a
            .bind
            .parse()
            .with_context(|| format!("--bind {}: not an address:port", a.bind))?;
        Ok(ServeOptions {
            engine,
            model: a.model.clone(),
            gallery: a.gallery.clone(),
            bind,
            max_batch: a.max_batch.max(1),
            max_wait: Duration::from_millis(a.max_wait_ms),
            max_queue: a.max_queue.max(1),
            max_inflight: a.max_inflight.max(1),
            max_body: a.max_body,
            max_pixels: a.max_pixels,
            timeout: Duration::from_millis(a.timeout_ms.max(1)),
            decode_threads: a.decode_threads,
            token,
            page_sample,
        })
    }
}
