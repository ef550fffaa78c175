//! The loader is a pure function of (seed, epoch): thread count and scheduling never show.

use std::sync::Arc;

use dino_train::data::{
    AugmentConfig, ImageDataset, Loader, LoaderConfig, MultiCrop, MultiCropBatch, Photometric,
    Verify, augment, color,
};

fn cifar() -> Arc<ImageDataset> {
    let root = dino_tests::data_dir().join("cifar10-mini/train");
    Arc::new(ImageDataset::open(&root, Verify::Full).expect("cifar10-mini/train"))
}

fn loader(ds: &Arc<ImageDataset>, workers: usize, aug: AugmentConfig, seed: u64) -> Loader {
    let cfg = LoaderConfig {
        batch_size: 16,
        num_workers: workers,
        prefetch: 2,
        seed,
        ..Default::default()
    };
    Loader::new(ds.clone(), aug, cfg).expect("loader")
}

fn first(l: &Loader, epoch: u64, n: usize) -> Vec<MultiCropBatch> {
    l.epoch(epoch).take(n).map(|b| b.expect("batch")).collect()
}

#[test]
fn same_seed_is_bit_identical_across_thread_counts() {
    let ds = cifar();
    assert_eq!(ds.len(), 5000);
    assert_eq!(ds.skipped_count(), 0);
    let one = first(&loader(&ds, 1, AugmentConfig::cifar(), 7), 0, 3);
    let two = first(&loader(&ds, 2, AugmentConfig::cifar(), 7), 0, 3);
    assert_eq!(one.len(), 3);
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a.indices, b.indices);
        assert_eq!(a.labels, b.labels);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.global), bits(&b.global));
        assert_eq!(bits(&a.local), bits(&b.local));
    }
    let b = &one[0];
    assert_eq!(
        (b.batch_size, b.global_size, b.local_size, b.n_local),
        (16, 32, 16, 6)
    );
    assert_eq!(b.global.len(), 2 * 16 * 3 * 32 * 32);
    assert_eq!(b.local.len(), 6 * 16 * 3 * 16 * 16);
    assert!(b.global.iter().chain(&b.local).all(|x| x.is_finite()));
    assert!(b.labels.iter().all(|&l| (0..10).contains(&l)));
}

#[test]
fn epochs_and_seeds_differ() {
    let ds = cifar();
    let l = loader(&ds, 2, AugmentConfig::cifar(), 7);
    let e0 = first(&l, 0, 1).remove(0);
    let e1 = first(&l, 1, 1).remove(0);
    assert_ne!(e0.indices, e1.indices, "epoch shuffles differ");
    assert_ne!(e0.global, e1.global);
    // Same samples in a different epoch get different crops: compare without shuffling.
    let cfg = |seed| LoaderConfig {
        batch_size: 8,
        num_workers: 2,
        shuffle: false,
        seed,
        ..Default::default()
    };
    let fixed = Loader::new(ds.clone(), AugmentConfig::cifar(), cfg(7)).unwrap();
    let a = fixed.epoch(0).next().unwrap().unwrap();
    let b = fixed.epoch(1).next().unwrap().unwrap();
    assert_eq!(a.indices, (0..8).collect::<Vec<_>>());
    assert_eq!(a.indices, b.indices);
    assert_ne!(a.global, b.global);
    let other = Loader::new(ds.clone(), AugmentConfig::cifar(), cfg(8)).unwrap();
    assert_ne!(a.local, other.epoch(0).next().unwrap().unwrap().local);
    // Re-running an epoch reproduces it.
    assert_eq!(a, fixed.epoch(0).next().unwrap().unwrap());
}

#[test]
fn epoch_length_and_early_drop() {
    let ds = cifar();
    let l = loader(&ds, 2, AugmentConfig::cifar(), 1);
    assert_eq!(l.batches_per_epoch(), 5000 / 16);
    let n = l
        .epoch(0)
        .map(|b| b.unwrap())
        .inspect(|b| assert_eq!(b.batch_size, 16))
        .count();
    assert_eq!(n, 312);
    // Dropping a half-consumed epoch must not hang the producer.
    let mut it = l.epoch(1);
    it.next().unwrap().unwrap();
    drop(it);
    let keep_last = LoaderConfig {
        batch_size: 3000,
        num_workers: 2,
        drop_last: false,
        ..Default::default()
    };
    let l = Loader::new(
        ds.clone(),
        AugmentConfig {
            local_crops_number: 0,
            ..AugmentConfig::cifar()
        },
        keep_last,
    )
    .unwrap();
    let sizes: Vec<usize> = l.epoch(0).map(|b| b.unwrap().batch_size).collect();
    assert_eq!(sizes, vec![3000, 2000]);
}

#[test]
fn deferred_photometric_reproduces_cpu_path() {
    let ds = cifar();
    let cpu = first(&loader(&ds, 2, AugmentConfig::cifar(), 3), 0, 1).remove(0);
    let deferred = LoaderConfig {
        batch_size: 16,
        num_workers: 2,
        prefetch: 2,
        seed: 3,
        photometric: Photometric::Deferred,
        ..Default::default()
    };
    let deferred = Loader::new(ds.clone(), AugmentConfig::cifar(), deferred).expect("loader");
    let raw_batch = first(&deferred, 0, 1).remove(0);
    assert!(raw_batch.global.is_empty() && raw_batch.local.is_empty());
    assert_eq!(raw_batch.indices, cpu.indices);
    let raw = raw_batch.raw.expect("raw crops");
    assert_eq!(raw.global_params.len(), 2 * 16);
    assert_eq!(raw.local_params.len(), 6 * 16);
    // Applying the returned parameters to the returned bytes gives the CPU path's floats.
    let norm = color::Normalizer::new(cpu_mean(), cpu_std());
    let check = |bytes: &[u8], params: &[_], size: usize, want: &[f32]| {
        let plane = size * size;
        let mut scratch = Vec::new();
        for (k, p) in params.iter().enumerate() {
            let chw = &bytes[k * 3 * plane..(k + 1) * 3 * plane];
            let mut hwc: Vec<u8> = (0..plane)
                .flat_map(|i| [chw[i], chw[plane + i], chw[2 * plane + i]])
                .collect();
            augment::apply_photometric(&mut hwc, size, p, &mut scratch);
            let mut out = vec![0f32; 3 * plane];
            norm.to_chw(&hwc, &mut out);
            assert_eq!(out, want[k * 3 * plane..(k + 1) * 3 * plane], "view {k}");
        }
    };
    check(&raw.global, &raw.global_params, 32, &cpu.global);
    check(&raw.local, &raw.local_params, 16, &cpu.local);
    // The second global view of every sample is the only one that may solarize.
    assert!(
        raw.global_params[..16]
            .iter()
            .all(|p| !p.solarize && p.blur_sigma.is_some())
    );
    let _ = MultiCrop::new(AugmentConfig::cifar()).unwrap();
}

fn cpu_mean() -> [f32; 3] {
    AugmentConfig::cifar().mean
}

fn cpu_std() -> [f32; 3] {
    AugmentConfig::cifar().std
}
