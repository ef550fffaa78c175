//! Batched embedding of image files: decoding and preprocessing of the next batch (in
//! parallel, on a producer thread) overlap with inference of the current one. On the CPU a
//! batch is run in slices of [`crate::model::CPU_RUN_BATCH`] images, which bounds ONNX
//! Runtime's activation memory; the embeddings are the same as in one run.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use dino_core::image_io::load_rgb;
use dino_core::knn::l2_normalize_rows;
use dino_core::preprocess::{eval_crop, eval_transform_into, normalize_into};
use image::RgbImage;
use rayon::prelude::*;

use crate::error::RuntimeError;
use crate::model::Model;

/// One preprocessed batch: the indices of the images it holds, their tensors, and the
/// images of this chunk that could not be read.
struct Batch {
    indices: Vec<usize>,
    data: Vec<f32>,
    failed: Vec<(usize, RuntimeError)>,
}

/// One decoded image as the model sees it: its eval crop (what attention maps are drawn
/// on) and the normalised CHW tensor, the same values as [`embed_paths`] computes.
pub fn prepare(img: &RgbImage, eval: &dino_core::EvalTransform) -> (RgbImage, Vec<f32>) {
    let crop = eval_crop(img, eval);
    let mut input = vec![0f32; dino_core::preprocess::image_len(eval)];
    normalize_into(&crop, &eval.mean, &eval.std, &mut input);
    (crop, input)
}

/// Embedding options.
#[derive(Clone, Copy, Debug)]
pub struct EmbedOptions {
    pub batch_size: usize,
    /// L2-normalise the embeddings (the default of `dino-run embed`).
    pub normalize: bool,
    /// The per-image output returned: `embedding`, or `logits` to classify with the
    /// model's linear probe.
    pub output: &'static str,
}

fn produce(
    paths: &[PathBuf],
    len: usize,
    batch_size: usize,
    eval: &dino_core::EvalTransform,
    tx: SyncSender<Batch>,
    recycled: Receiver<Vec<f32>>,
) {
    for (c, chunk) in paths.chunks(batch_size).enumerate() {
        let base = c * batch_size;
        let mut data = recycled.try_recv().unwrap_or_default();
        data.resize(chunk.len() * len, 0.0);
        // Decode and transform each image in one step, so only one decoded image per
        // thread is alive at a time.
        let status: Vec<Option<RuntimeError>> = data
            .par_chunks_mut(len)
            .zip(chunk.par_iter())
            .map(|(o, p)| {
                load_rgb(p)
                    .map(|img| eval_transform_into(&img, eval, o))
                    .err()
                    .map(Into::into)
            })
            .collect();
        let mut indices = Vec::with_capacity(chunk.len());
        let mut failed = Vec::new();
        for (i, st) in status.into_iter().enumerate() {
            match st {
                None => {
                    // Compact: move the tensor down over the slots of failed images.
                    let dst = indices.len();
                    if dst != i {
                        data.copy_within(i * len..(i + 1) * len, dst * len);
                    }
                    indices.push(base + i);
                }
                Some(e) => failed.push((base + i, e)),
            }
        }
        data.truncate(indices.len() * len);
        if tx
            .send(Batch {
                indices,
                data,
                failed,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Embeds one image with nothing overlapped (read, decode, preprocess, inference, one after
/// the other), as a single request is served: what `dino-run embed --latency` times. The
/// values are those of [`embed_paths`].
pub fn embed_one(
    model: &mut Model,
    path: &Path,
    opts: EmbedOptions,
) -> Result<Vec<f32>, RuntimeError> {
    let mut input = vec![0f32; model.info.image_len()];
    let img = load_rgb(path)?;
    eval_transform_into(&img, &model.info.eval, &mut input);
    let out = model.run(&input, 1, &[opts.output])?;
    let mut v = out.into_iter().next().map(|o| o.data).unwrap_or_default();
    if opts.normalize && !v.is_empty() {
        let dim = v.len();
        l2_normalize_rows(&mut v, dim);
    }
    Ok(v)
}

/// Embeds `paths` in batches. `sink` receives, for every image in order of completion,
/// its index in `paths` and its embedding (`opts.output`) or the error that stopped it; a failing image
/// does not stop the others. Errors of the model itself end the run.
pub fn embed_paths(
    model: &mut Model,
    paths: &[PathBuf],
    opts: EmbedOptions,
    mut sink: impl FnMut(usize, Result<Vec<f32>, RuntimeError>),
) -> Result<(), RuntimeError> {
    let len = model.info.image_len();
    let eval = model.info.eval.clone();
    let batch_size = opts.batch_size.max(1);
    std::thread::scope(|scope| {
        // A rendezvous channel: the producer prepares the next batch while this one runs and
        // hands it over when the model is free, so two batch buffers are alive, not three.
        let (tx, rx) = sync_channel::<Batch>(0);
        let (back_tx, back_rx) = sync_channel::<Vec<f32>>(2);
        scope.spawn(move || produce(paths, len, batch_size, &eval, tx, back_rx));
        for batch in rx {
            for (i, e) in batch.failed {
                sink(i, Err(e));
            }
            // The batch runs in slices of at most `run_batch` images (see CPU_RUN_BATCH).
            let step = model.run_batch().clamp(1, batch.indices.len().max(1));
            for (indices, rows) in batch
                .indices
                .chunks(step)
                .zip(batch.data.chunks(step * len))
            {
                let n = indices.len();
                let out = model.run(rows, n, &[opts.output])?;
                let mut v = out.into_iter().next().map(|o| o.data).unwrap_or_default();
                let dim = v.len() / n;
                if opts.normalize {
                    l2_normalize_rows(&mut v, dim);
                }
                for (row, &i) in v.chunks_exact(dim).zip(indices) {
                    sink(i, Ok(row.to_vec()));
                }
            }
            let _ = back_tx.try_send(batch.data);
        }
        Ok(())
    })
}
