//! Folders without class folders, end to end: `dino-train train` on a flat and on a nested
//! folder (one tiny epoch; k-NN during training skipped with a note when its folder is
//! unlabelled), `dino-export`, `dino-run index` of both into unlabelled galleries, `search`
//! finding each query image itself first at similarity ~1, and `classify` and `eval`
//! refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dino_tests::runtime::{dino_run, json, stderr};
use dino_tests::{
    bin, cifar_subset, dino_train, output_ok, s, scratch, sorted_files, write_tiny_config,
};

/// The images of a small CIFAR ImageFolder copied into `flat/` (one folder) and `nested/`
/// (at depths 1 to 3, with a hidden file and a link back to the root).
fn unlabelled(dir: &Path) -> (PathBuf, PathBuf) {
    let src = cifar_subset(dir, "train", 3);
    let (flat, nested) = (dir.join("flat"), dir.join("nested"));
    let subdirs = ["", "a", "a/b/c"];
    for (i, f) in sorted_files(&src)
        .iter()
        .flat_map(|c| sorted_files(c))
        .enumerate()
    {
        let name = format!("img{i:02}.jpg");
        std::fs::create_dir_all(&flat).unwrap();
        std::fs::copy(&f, flat.join(&name)).unwrap();
        let d = nested.join(subdirs[i % 3]);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&f, d.join(&name)).unwrap();
    }
    std::fs::write(flat.join(".DS_Store.jpg"), b"hidden").unwrap();
    std::os::unix::fs::symlink(&nested, nested.join("a/loop")).unwrap();
    std::fs::remove_dir_all(&src).unwrap();
    (flat, nested)
}

fn search(dir: &Path, model: &Path, gallery: &Path, query: &Path, json: bool) -> Output {
    let mut c = dino_run(dir);
    c.args([
        "search",
        "--topk",
        "3",
        "--model",
        &s(model),
        "--gallery",
        &s(gallery),
        &s(query),
    ]);
    if json {
        c.arg("--json");
    }
    output_ok(&mut c, "dino-run search")
}

#[test]
fn flat_and_nested_folders_train_index_and_search() {
    let dir = scratch("unlabelled");
    let (flat, nested) = unlabelled(&dir);
    let cfg = write_tiny_config(&dir, "");
    let labelled = cifar_subset(&dir, "test", 1);
    let mut teacher = PathBuf::new();
    for (data, what) in [(&flat, "flat folder"), (&nested, "nested folders")] {
        let out = dir.join(format!(
            "run-{}",
            data.file_name().unwrap().to_string_lossy()
        ));
        // k-NN on the unlabelled folder itself: skipped with a note, training goes on.
        let o = dino_train(
            &cfg,
            data,
            &out,
            &[
                "--epochs",
                "1",
                "--knn_freq",
                "1",
                "--knn_train",
                &s(data),
                "--knn_val",
                &s(&labelled),
            ],
        );
        let e = stderr(&o);
        assert!(o.status.success(), "{e}");
        assert!(
            e.contains(&format!("unlabelled ({what}, no class folders), 30 images")),
            "{e}"
        );
        assert!(e.contains("k-NN evaluation skipped: knn_train"), "{e}");
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        assert!(!metrics.contains("\"knn\""), "{metrics}");
        teacher = out.join("teacher.safetensors");
        assert!(teacher.exists());
    }

    let model = dir.join("model.onnx");
    output_ok(
        Command::new(bin("dino-export")).args([
            "--img-size",
            "32",
            "--checkpoint",
            &s(&teacher),
            "--to",
            &s(&model),
        ]),
        "dino-export",
    );
    for data in [&flat, &nested] {
        let gallery = dir.join("g.dgal");
        let o = output_ok(
            dino_run(&dir).args([
                "index",
                "--model",
                &s(&model),
                "--images",
                &s(data),
                "--out",
                &s(&gallery),
            ]),
            "dino-run index",
        );
        let e = stderr(&o);
        assert!(e.contains("30 images of no classes"), "{e}");
        // The deepest image of the nested folder, the last of the flat one.
        let query = match data == &nested {
            true => nested.join("a/b/c/img29.jpg"),
            false => flat.join("img29.jpg"),
        };
        let r = json(&search(&dir, &model, &gallery, &query, true));
        let n = &r[0]["neighbours"];
        assert_eq!(n.as_array().unwrap().len(), 3, "{r}");
        assert_eq!(n[0]["path"].as_str(), Some(s(&query).as_str()), "{r}");
        let sim = n[0]["similarity"].as_f64().unwrap();
        assert!((sim - 1.0).abs() < 1e-5, "self-similarity {sim}");
        assert!(n[1]["similarity"].as_f64().unwrap() <= sim);
        assert_eq!(n[0]["class"], "unlabelled");
        let text = String::from_utf8_lossy(&search(&dir, &model, &gallery, &query, false).stdout)
            .into_owned();
        assert!(
            text.starts_with(&format!("{}\t{} 1.0000", s(&query), s(&query)))
                || text.starts_with(&format!("{}\t{} 0.9999", s(&query), s(&query))),
            "{text}"
        );

        let o = dino_run(&dir)
            .args([
                "classify",
                "--model",
                &s(&model),
                "--gallery",
                &s(&gallery),
                &s(&query),
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("the gallery is unlabelled"),
            "{}",
            stderr(&o)
        );
        let o = dino_run(&dir)
            .args(["eval", "--model", &s(&model), "--gallery", &s(&gallery)])
            .args(["--images", &s(&labelled)])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("the gallery is unlabelled"),
            "{}",
            stderr(&o)
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
