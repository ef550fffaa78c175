//! Parallel decode + augmentation on a private thread pool, prefetched through a bounded
//! channel. Each sample's randomness comes from its own `(seed, epoch, index)` stream and each
//! view is written to a fixed place in the batch, so output never depends on scheduling.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::augment::{MultiCrop, ViewOut};
use super::{
    AugmentConfig, DataError, ImageDataset, LoaderConfig, MultiCropBatch, Photometric, RawCrops,
    SampleRng,
};

/// Yields the batches of one epoch; batches are prepared ahead while the consumer works.
pub struct Loader {
    dataset: Arc<ImageDataset>,
    aug: Arc<MultiCrop>,
    cfg: LoaderConfig,
    pool: Arc<rayon::ThreadPool>,
}

impl Loader {
    /// Checks the settings and starts the worker pool (`num_workers` threads).
    pub fn new(
        dataset: Arc<ImageDataset>,
        aug: AugmentConfig,
        cfg: LoaderConfig,
    ) -> Result<Self, DataError> {
        if cfg.batch_size == 0 {
            return Err(DataError::Config("batch_size must be positive".into()));
        }
        let share = cfg.shard.len(dataset.len());
        if cfg.drop_last && share < cfg.batch_size {
            return Err(DataError::Config(format!(
                "{}: {} readable images ({share} per process of {}), fewer than one batch of {} (drop_last)",
                dataset.root().display(),
                dataset.len(),
                cfg.shard.world,
                cfg.batch_size
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.num_workers)
            .thread_name(|i| format!("dino-data-{i}"))
            .build()
            .map_err(|e| DataError::Config(format!("cannot start data workers: {e}")))?;
        Ok(Self {
            dataset,
            aug: Arc::new(MultiCrop::new(aug)?),
            cfg,
            pool: Arc::new(pool),
        })
    }

    pub fn dataset(&self) -> &ImageDataset {
        &self.dataset
    }

    pub fn augment(&self) -> &MultiCrop {
        &self.aug
    }

    /// Worker threads actually running.
    pub fn num_threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Batches per epoch of this shard (`len / batch_size`, rounded up without `drop_last`).
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.cfg.shard.len(self.dataset.len()), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Unreadable files skipped so far (at open and during loading), for the training log.
    pub fn skipped_count(&self) -> usize {
        self.dataset.skipped_count()
    }

    /// This shard's sample order of `epoch`: a permutation drawn from `(seed, epoch)` (the
    /// same on every rank), or the identity without shuffling, dealt by [`Shard::take`].
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.cfg.shuffle {
            SampleRng::for_sample(self.cfg.seed, epoch, u64::MAX).shuffle(&mut order);
        }
        self.cfg.shard.take(&order)
    }

    /// Starts producing the batches of `epoch`; dropping the iterator stops the producer.
    pub fn epoch(&self, epoch: u64) -> EpochBatches {
        let (tx, rx) = sync_channel(self.cfg.prefetch.max(1));
        let order = self.epoch_order(epoch);
        let (ds, aug, pool, cfg) = (
            self.dataset.clone(),
            self.aug.clone(),
            self.pool.clone(),
            self.cfg.clone(),
        );
        let n_batches = self.batches_per_epoch();
        let producer = std::thread::Builder::new()
            .name("dino-data-prefetch".into())
            .spawn(move || {
                for chunk in order.chunks(cfg.batch_size).take(n_batches) {
                    let batch = pool.install(|| make_batch(&ds, &aug, &cfg, epoch, chunk));
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            })
            .ok();
        EpochBatches {
            rx: Some(rx),
            producer,
            remaining: n_batches,
        }
    }
}

/// Splits a view-major buffer of `n_views * b` images into one list of slots per sample.
fn slots<T>(buf: &mut [T], image_len: usize, b: usize) -> Vec<Vec<&mut [T]>> {
    let mut per: Vec<Vec<&mut [T]>> = (0..b).map(|_| Vec::new()).collect();
    for (k, s) in buf.chunks_mut(image_len).enumerate() {
        per[k % b].push(s);
    }
    per
}

/// Decodes and augments `chunk` in parallel, each view straight into its batch slot.
fn make_batch(
    ds: &ImageDataset,
    aug: &MultiCrop,
    cfg: &LoaderConfig,
    epoch: u64,
    chunk: &[usize],
) -> Result<MultiCropBatch, DataError> {
    let c = aug.config();
    let (b, g, l) = (chunk.len(), c.global_crop_size, c.local_crop_size);
    let n_local = c.local_crops_number;
    let (glen, llen) = (3 * g * g, 3 * l * l);
    let deferred = cfg.photometric == Photometric::Deferred;
    let mut global = vec![0f32; if deferred { 0 } else { 2 * b * glen }];
    let mut local = vec![0f32; if deferred { 0 } else { n_local * b * llen }];
    let mut raw_g = vec![0u8; if deferred { 2 * b * glen } else { 0 }];
    let mut raw_l = vec![0u8; if deferred { n_local * b * llen } else { 0 }];
    let mut per_sample: Vec<(Vec<ViewOut<'_>>, usize)> = if deferred {
        let gs = slots(&mut raw_g, glen, b);
        let ls = slots(&mut raw_l, llen, b);
        gs.into_iter()
            .zip(ls)
            .map(|(g, l)| g.into_iter().chain(l).map(ViewOut::U8).collect())
            .zip(chunk.iter().copied())
            .collect()
    } else {
        let gs = slots(&mut global, glen, b);
        let ls = slots(&mut local, llen, b);
        gs.into_iter()
            .zip(ls)
            .map(|(g, l)| g.into_iter().chain(l).map(ViewOut::F32).collect())
            .zip(chunk.iter().copied())
            .collect()
    };
    let results: Vec<Result<(usize, i64, Vec<_>), DataError>> = per_sample
        .par_iter_mut()
        .map(|(outs, index)| {
            let (used, img) = ds.load_or_next(*index)?;
            let mut rng = SampleRng::for_sample(cfg.seed, epoch, *index as u64);
            let views = aug.sample_views(&mut rng, img.dimensions());
            for (k, (v, out)) in views.iter().zip(outs.drain(..)).enumerate() {
                aug.render(&img, v, if k < 2 { g } else { l }, out)?;
            }
            Ok((used, ds.label(used), views))
        })
        .collect();
    drop(per_sample);
    let mut indices = Vec::with_capacity(b);
    let mut labels = Vec::with_capacity(b);
    let mut views = Vec::with_capacity(b);
    for r in results {
        let (i, label, v) = r?;
        indices.push(i);
        labels.push(label);
        views.push(v);
    }
    let raw = deferred.then(|| {
        let view_major = |range: std::ops::Range<usize>| {
            range
                .flat_map(|k| views.iter().map(move |v| v[k].photo))
                .collect::<Vec<_>>()
        };
        RawCrops {
            global: raw_g,
            local: raw_l,
            global_params: view_major(0..2),
            local_params: view_major(2..2 + n_local),
        }
    });
    Ok(MultiCropBatch {
        batch_size: b,
        global_size: g,
        local_size: l,
        n_local,
        global,
        local,
        labels,
        indices,
        raw,
    })
}

/// The batches of one epoch, in order. Ends early (after yielding the error) if a batch
/// cannot be built.
pub struct EpochBatches {
    rx: Option<Receiver<Result<MultiCropBatch, DataError>>>,
    producer: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for EpochBatches {
    type Item = Result<MultiCropBatch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.rx.as_ref()?.recv().ok();
        match &item {
            Some(Ok(_)) => self.remaining = self.remaining.saturating_sub(1),
            _ => self.remaining = 0,
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        // Closing the channel first makes a blocked producer's `send` fail, so it exits.
        self.rx.take();
        if let Some(h) = self.producer.take() {
            let _ = h.join();
        }
    }
}
