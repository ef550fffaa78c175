//! Input robustness: unreadable files are skipped and counted, every format becomes RGB.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dino_train::data::{AugmentConfig, DataError, ImageDataset, Loader, LoaderConfig, Verify};
use image::{ImageBuffer, Luma, Rgb, Rgba};

fn photos() -> PathBuf {
    dino_tests::data_dir().join("photos")
}

fn write_good(dir: &Path, name: &str, seed: u8) {
    let img = ImageBuffer::from_fn(40, 30, |x, y| Rgb([x as u8 * 5 + seed, y as u8 * 7, seed]));
    img.save(dir.join(name)).expect("write png");
}

#[test]
fn corrupt_files_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    for k in 0..3u8 {
        write_good(&a, &format!("good{k}.png"), k * 40);
        write_good(&b, &format!("good{k}.png"), 200 - k * 30);
    }
    let jpeg = std::fs::read(photos().join("rocket.jpg")).unwrap();
    std::fs::write(a.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    std::fs::write(b.join("notes.txt"), "not an image\n").unwrap();

    for verify in [Verify::Full, Verify::Header] {
        let ds = Arc::new(ImageDataset::open(tmp.path(), verify).expect("opens despite bad files"));
        let cfg = LoaderConfig {
            batch_size: 2,
            num_workers: 2,
            ..Default::default()
        };
        let l = Loader::new(ds.clone(), AugmentConfig::cifar(), cfg).unwrap();
        let batches: Vec<_> = l.epoch(0).collect::<Result<_, _>>().expect("batches");
        assert!(
            batches
                .iter()
                .all(|b| b.global.iter().all(|x| x.is_finite()))
        );
        // With header checks only, the truncated JPEG is found (and counted) when loaded.
        assert_eq!(l.skipped_count(), 2, "{verify:?}: {:?}", ds.skipped());
        let names: Vec<String> = ds
            .skipped()
            .iter()
            .map(|s| s.path.file_name().unwrap().to_string_lossy().into())
            .collect();
        assert!(
            names.contains(&"truncated.jpg".to_string())
                && names.contains(&"notes.txt".to_string()),
            "{names:?}"
        );
        assert!(
            ds.skipped()
                .iter()
                .all(|s| s.to_string().starts_with(s.path.to_str().unwrap())),
            "messages name the file"
        );
        assert_eq!(ds.classes(), ["a", "b"]);
    }
    let ds = ImageDataset::open(tmp.path(), Verify::Full).unwrap();
    assert_eq!(ds.len(), 6);
}

#[test]
fn empty_or_unreadable_folder_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ImageDataset::open(tmp.path(), Verify::Full)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no images found") && err.contains(&*tmp.path().to_string_lossy()),
        "{err}"
    );
    std::fs::create_dir_all(tmp.path().join("cls")).unwrap();
    std::fs::write(tmp.path().join("cls/readme.txt"), "text").unwrap();
    let err = ImageDataset::open(tmp.path(), Verify::Full).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::NoReadableImages {
                total: 1,
                skipped: 1,
                ..
            }
        ),
        "{err}"
    );
    let missing = ImageDataset::open(&tmp.path().join("nope"), Verify::Full)
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope"), "{missing}");
}

#[test]
fn every_photo_format_loads_as_rgb() {
    // The photos folder is flat: present it as one class through links-free copies.
    let tmp = tempfile::tempdir().unwrap();
    let cls = tmp.path().join("photos");
    std::fs::create_dir_all(&cls).unwrap();
    for e in std::fs::read_dir(photos()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, cls.join(p.file_name().unwrap())).unwrap();
    }
    // Formats the photos lack: 16-bit RGB and gray PNG, RGBA and lossless WebP.
    let rgb16 =
        ImageBuffer::<Rgb<u16>, _>::from_fn(20, 10, |x, _| Rgb([x as u16 * 3000, 65535, 0]));
    rgb16.save(cls.join("deep16.png")).unwrap();
    let gray16 = ImageBuffer::<Luma<u16>, _>::from_fn(20, 10, |x, _| Luma([x as u16 * 3000]));
    gray16.save(cls.join("gray16.png")).unwrap();
    let rgba = ImageBuffer::<Rgba<u8>, _>::from_fn(20, 10, |x, _| Rgba([x as u8 * 10, 5, 9, 100]));
    rgba.save(cls.join("lossless.webp")).unwrap();

    let ds = ImageDataset::open(tmp.path(), Verify::Full).unwrap();
    assert_eq!(ds.skipped_count(), 0, "{:?}", ds.skipped());
    assert_eq!(ds.len(), 10);
    let name = |i: usize| {
        ds.path(i)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    for i in 0..ds.len() {
        let img = ds.load(i).unwrap();
        assert!(img.width() > 0 && img.height() > 0);
        assert_eq!(
            img.as_raw().len(),
            3 * (img.width() * img.height()) as usize,
            "{}",
            name(i)
        );
        match name(i).as_str() {
            "camera.png" => assert!(
                img.pixels().all(|p| p[0] == p[1] && p[1] == p[2]),
                "gray replicated"
            ),
            "horse.png" => assert_eq!(img.dimensions(), (400, 328)),
            "deep16.png" => assert_eq!(img.get_pixel(1, 0).0, [12, 255, 0], "16-bit scaled to 8"),
            "lossless.webp" => assert_eq!(img.get_pixel(2, 0).0, [20, 5, 9], "alpha dropped"),
            _ => {}
        }
    }
    // And the whole pipeline runs on them at ImageNet crop sizes.
    let cfg = LoaderConfig {
        batch_size: 5,
        num_workers: 2,
        ..Default::default()
    };
    let aug = AugmentConfig {
        local_crops_number: 2,
        ..AugmentConfig::default()
    };
    let l = Loader::new(Arc::new(ds), aug, cfg).unwrap();
    let b = l.epoch(0).next().unwrap().unwrap();
    assert_eq!(b.global.len(), 2 * 5 * 3 * 224 * 224);
    assert_eq!(b.local.len(), 2 * 5 * 3 * 96 * 96);
}
