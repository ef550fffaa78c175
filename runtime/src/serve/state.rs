//! What the server holds: the loaded model and gallery (swapped as one on reload), the
//! queue, the limits and the metrics.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Semaphore;

use super::ServeOptions;
use super::batch::Queue;
use super::metrics::Metrics;
use crate::engine::Engine;
use crate::error::RuntimeError;
use crate::gallery::Gallery;
use crate::model::{Model, ModelInfo};

/// A model with the gallery built by it. Requests hold the `Arc` they started with, so a
/// reload never mixes one model's embeddings with another's gallery.
pub struct Loaded {
    /// Only the inference thread locks it.
    pub model: Mutex<Model>,
    pub info: ModelInfo,
    pub gallery: Option<Gallery>,
    /// 0 for the first load, +1 per reload.
    pub generation: u64,
}

impl Loaded {
    pub fn load(
        engine: &Engine,
        model: &Path,
        gallery: Option<&Path>,
        generation: u64,
    ) -> Result<Self, RuntimeError> {
        let m = engine.open(model)?;
        let gallery = match gallery {
            Some(p) => {
                let g = Gallery::read(p)?;
                g.check_model(p, &m.info.fingerprint, &m.info.eval)?;
                Some(g)
            }
            None => None,
        };
        Ok(Self {
            info: m.info.clone(),
            model: Mutex::new(m),
            gallery,
            generation,
        })
    }
}

pub struct App {
    pub opts: ServeOptions,
    engine: Engine,
    current: RwLock<Arc<Loaded>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    pub queue: Queue,
    pub metrics: Metrics,
    /// Permits for requests in flight (503 when none is left).
    pub inflight: Arc<Semaphore>,
    /// Permits for decode tasks: bounds decoded images in memory.
    pub decoders: Arc<Semaphore>,
    /// Set by SIGTERM: /readyz answers 503.
    pub draining: AtomicBool,
}

impl App {
    pub fn new(
        opts: ServeOptions,
        engine: Engine,
        loaded: Loaded,
        queue: Queue,
        decode_threads: usize,
    ) -> Self {
        Self {
            inflight: Arc::new(Semaphore::new(opts.max_inflight)),
            decoders: Arc::new(Semaphore::new(decode_threads)),
            opts,
            engine,
            current: RwLock::new(Arc::new(loaded)),
            reloading: tokio::sync::Mutex::new(()),
            queue,
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
        }
    }

    /// The model and gallery a new request uses.
    pub fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads the model and gallery again from their paths and swaps them in as one; on
    /// failure the old ones stay. Requests keep being served throughout.
    pub async fn reload(self: &Arc<Self>) -> Result<u64, String> {
        let _one = self.reloading.lock().await;
        let app = self.clone();
        let next = self.current().generation + 1;
        let loaded = tokio::task::spawn_blocking(move || {
            Loaded::load(
                &app.engine,
                &app.opts.model,
                app.opts.gallery.as_deref(),
                next,
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string());
        self.metrics.reloaded(loaded.is_ok());
        let loaded = loaded?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        Ok(next)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
