//! Dynamic batching: requests queue preprocessed images; one inference thread takes up to
//! `max_batch` of them, waiting at most `max_wait` for more while other requests are still
//! being decoded, and runs them together (in slices of [`crate::Model::run_batch`], as the
//! CLI's pipeline). The queue is bounded in images: a request that does not fit is refused
//! at once (503) instead of waiting in memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dino_core::onnx_meta::{OUTPUT_ATTENTION, OUTPUT_EMBEDDING, OUTPUT_LOGITS};
use tokio::sync::oneshot;

use super::state::{App, Loaded};

/// The model's outputs for one image.
pub struct Inferred {
    /// The raw embedding (not normalised).
    pub embedding: Vec<f32>,
    /// `[heads, patches]` attention and the number of heads, when asked for.
    pub attention: Option<(Vec<f32>, usize)>,
    /// The linear probe's class scores, when asked for.
    pub logits: Option<Vec<f32>>,
}

/// The outputs a request needs besides the embedding.
#[derive(Clone, Copy, Debug, Default)]
pub struct Want {
    pub attention: bool,
    pub logits: bool,
}

/// One preprocessed image waiting for the model it was preprocessed for.
pub struct Job {
    pub loaded: Arc<Loaded>,
    pub input: Vec<f32>,
    pub want: Want,
    pub reply: oneshot::Sender<Result<Inferred, String>>,
}

/// Why images could not be queued.
#[derive(Debug)]
pub enum Refused {
    Full,
    Closed,
}

pub struct Queue {
    tx: Mutex<Option<Sender<Job>>>,
    depth: AtomicUsize,
    max: usize,
    /// Requests decoding images they will queue: the worker waits for them.
    preparing: AtomicUsize,
}

/// Counts a request as preparing images while alive.
pub struct Preparing<'a>(&'a AtomicUsize);

impl Drop for Preparing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Queue {
    pub fn new(max: usize) -> (Self, Receiver<Job>) {
        let (tx, rx) = channel();
        let q = Self {
            tx: Mutex::new(Some(tx)),
            depth: AtomicUsize::new(0),
            max,
            preparing: AtomicUsize::new(0),
        };
        (q, rx)
    }

    /// Images queued and not yet taken by the worker.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    pub fn preparing(&self) -> Preparing<'_> {
        self.preparing.fetch_add(1, Ordering::SeqCst);
        Preparing(&self.preparing)
    }

    /// Queues all `jobs` or none.
    pub fn submit(&self, jobs: Vec<Job>) -> Result<(), Refused> {
        let n = jobs.len();
        if self.depth.fetch_add(n, Ordering::SeqCst) + n > self.max {
            self.depth.fetch_sub(n, Ordering::SeqCst);
            return Err(Refused::Full);
        }
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            self.depth.fetch_sub(n, Ordering::SeqCst);
            return Err(Refused::Closed);
        };
        for j in jobs {
            // The receiver lives until the sender is dropped by `close`.
            if tx.send(j).is_err() {
                return Err(Refused::Closed);
            }
        }
        Ok(())
    }

    /// Refuses new images; the worker ends once the queued ones are done.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

pub fn spawn_worker(rx: Receiver<Job>, app: Arc<App>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("dino-infer".into())
        .spawn(move || worker(rx, &app))
        .expect("spawning the inference thread")
}

/// Takes the next batch: the first job, then more until `max_batch`, the deadline, or
/// nothing more is coming (queue empty and no request decoding).
fn next_batch(rx: &Receiver<Job>, app: &App) -> Option<Vec<Job>> {
    let first = rx.recv().ok()?;
    let deadline = Instant::now() + app.opts.max_wait;
    let mut jobs = vec![first];
    while jobs.len() < app.opts.max_batch {
        match rx.try_recv() {
            Ok(j) => {
                jobs.push(j);
                continue;
            }
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {}
        }
        let now = Instant::now();
        if app.queue.preparing.load(Ordering::SeqCst) == 0 || now >= deadline {
            break;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_micros(500))) {
            Ok(j) => jobs.push(j),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(jobs)
}

fn worker(rx: Receiver<Job>, app: &App) {
    while let Some(jobs) = next_batch(&rx, app) {
        app.queue.depth.fetch_sub(jobs.len(), Ordering::SeqCst);
        app.metrics.batch(jobs.len());
        // Jobs of one model run together; after a reload both may be queued.
        let mut groups: Vec<Vec<Job>> = Vec::new();
        for j in jobs {
            match groups
                .iter_mut()
                .find(|g| Arc::ptr_eq(&g[0].loaded, &j.loaded))
            {
                Some(g) => g.push(j),
                None => groups.push(vec![j]),
            }
        }
        for g in groups {
            run_group(g);
        }
    }
}

fn run_group(jobs: Vec<Job>) {
    let loaded = jobs[0].loaded.clone();
    let mut model = loaded.model.lock().unwrap_or_else(|e| e.into_inner());
    let mut outputs = vec![OUTPUT_EMBEDDING];
    let attention = jobs.iter().any(|j| j.want.attention);
    let logits = jobs.iter().any(|j| j.want.logits);
    if attention {
        outputs.push(OUTPUT_ATTENTION);
    }
    if logits {
        outputs.push(OUTPUT_LOGITS);
    }
    let step = model.run_batch().max(1);
    let mut jobs = jobs.into_iter().peekable();
    while jobs.peek().is_some() {
        let slice: Vec<Job> = jobs.by_ref().take(step).collect();
        let n = slice.len();
        let data: Vec<f32> = slice.iter().flat_map(|j| j.input.iter().copied()).collect();
        match model.run(&data, n, &outputs) {
            Ok(outs) => {
                // Image `i`'s values of output `k`.
                let row = |k: usize, i: usize| {
                    let per = outs[k].data.len() / n;
                    outs[k].data[i * per..(i + 1) * per].to_vec()
                };
                let heads = if attention {
                    outs[1].shape.get(1)
                } else {
                    None
                };
                let heads = heads.copied().unwrap_or(0);
                for (i, j) in slice.into_iter().enumerate() {
                    let inferred = Inferred {
                        embedding: row(0, i),
                        attention: (attention && j.want.attention).then(|| (row(1, i), heads)),
                        logits: (logits && j.want.logits).then(|| row(outputs.len() - 1, i)),
                    };
                    let _ = j.reply.send(Ok(inferred));
                }
            }
            Err(e) => {
                for j in slice {
                    let _ = j.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}
