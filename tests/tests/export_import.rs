//! Official DINO PyTorch files in, served by ONNX Runtime out. `export_ref.py pth` writes
//! them with `torch.save` in the released layouts: a backbone state dict
//! (`dino_deitsmall16_pretrain.pth`, with a non-contiguous and an fp16 tensor inside) and a
//! training `checkpoint.pth` (student under `module.backbone.`, teacher under `backbone.`
//! and `head.`, optimizer state, `args` as an argparse.Namespace). They are imported with
//! `dino-export import`, exported, and compared within 1e-4 with the same weights loaded
//! into the PyTorch reference the official way. `dino-train import` writes the same file,
//! which `dino-train knn` loads.

use dino_core::st::{self, StFile};
use dino_core::testing::{assert_close, max_abs_diff};
use std::path::Path;
use std::process::Command;

use dino_tests::export::{REF, compare, export_err, export_ok};
use dino_tests::{bin, cifar_subset, run_ok, run_python, s, scratch};

#[test]
fn official_backbone_pth_imports_exports_and_agrees() {
    let dir = scratch("export-import-backbone");
    let pth = dir.join("dino_deitsmall16_pretrain.pth");
    run_python(
        REF,
        &[
            "pth",
            "--layout",
            "backbone",
            "--arch",
            "vit_small",
            "--patch",
            "16",
            "--seed",
            "5",
            "--out",
            &s(&pth),
        ],
    );
    let st_path = dir.join("teacher.safetensors");
    let text = export_ok(&[
        "import",
        &s(&pth),
        "--arch",
        "vit_small",
        "--patch-size",
        "16",
        "--to",
        &s(&st_path),
    ]);
    assert!(text.contains("vit_small/16"), "{text}");
    let f = StFile::read(&st_path).unwrap();
    f.check_format().unwrap();
    assert_eq!(f.meta(st::META_KIND).unwrap(), st::KIND_BACKBONE);
    assert_eq!(f.vit_config().unwrap().num_heads, 6);
    assert!(f.tensors.values().all(|t| t.dtype == st::Dtype::F32));

    let onnx = dir.join("m.onnx");
    export_ok(&[
        "--checkpoint",
        &s(&st_path),
        "--to",
        &s(&onnx),
        "--outputs",
        "attention",
    ]);
    let c = compare(&dir, &pth, &onnx, None, 224, "pth");
    for name in ["embedding", "attention"] {
        let (got, want) = (c.values(name, "ort"), c.values(name, "ref"));
        eprintln!(
            "imported vit_small/16 {name}: max-abs {:.2e}",
            max_abs_diff(&got, &want)
        );
        assert_close(&got, &want, 1e-4, 0.0);
    }

    // A wrong architecture or patch size is named, not silently accepted.
    let out = dir.join("x.safetensors");
    let err = export_err(&["import", &s(&pth), "--arch", "vit_base", "--to", &s(&out)]);
    assert!(
        err.contains("embed_dim 768") && err.contains("embed_dim 384"),
        "{err}"
    );
    let err = export_err(&["import", &s(&pth), "--patch-size", "8", "--to", &s(&out)]);
    assert!(
        err.contains("--patch-size 8") && err.contains("patch size 16"),
        "{err}"
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A vit_tiny/8 training `checkpoint.pth` (teacher and student with `backbone.`/`head.`
/// prefixes, as the official code saves it), written by the reference script.
fn checkpoint_pth(dir: &std::path::Path, seed: u32) -> std::path::PathBuf {
    let pth = dir.join("checkpoint.pth");
    let seed = seed.to_string();
    run_python(
        REF,
        &[
            "pth",
            "--layout",
            "checkpoint",
            "--arch",
            "vit_tiny",
            "--patch",
            "8",
            "--img-size",
            "32",
            "--seed",
            &seed,
            "--out",
            &s(&pth),
        ],
    );
    pth
}

/// `import <pth> --arch vit_tiny --patch-size 8 --to <to>`: the same for both binaries.
fn vit_tiny8_import(pth: &Path, to: &Path) -> [String; 8] {
    [
        "import",
        &s(pth),
        "--arch",
        "vit_tiny",
        "--patch-size",
        "8",
        "--to",
        &s(to),
    ]
    .map(str::to_string)
}

#[test]
fn training_checkpoint_pth_uses_the_teacher() {
    let dir = scratch("export-import-checkpoint");
    let pth = checkpoint_pth(&dir, 6);
    let teacher = dir.join("teacher.safetensors");
    let text = export_ok(
        &vit_tiny8_import(&pth, &teacher)
            .each_ref()
            .map(String::as_str),
    );
    assert!(
        text.contains("entry `teacher`") && text.contains("4 head tensors left out"),
        "{text}"
    );

    // Exported from the imported file and straight from the .pth: the same model.
    let (a, b) = (dir.join("a.onnx"), dir.join("b.onnx"));
    export_ok(&[
        "--checkpoint",
        &s(&teacher),
        "--to",
        &s(&a),
        "--outputs",
        "attention",
        "--img-size",
        "64",
    ]);
    export_ok(&[
        "--checkpoint",
        &s(&pth),
        "--to",
        &s(&b),
        "--outputs",
        "attention",
        "--img-size",
        "64",
    ]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let c = compare(&dir, &pth, &a, None, 64, "ckpt");
    for name in ["embedding", "attention"] {
        assert_close(&c.values(name, "ort"), &c.values(name, "ref"), 1e-4, 0.0);
    }

    // `--key student` picks the other network (DDP's `module.` prefix stripped).
    let student = dir.join("student.safetensors");
    export_ok(&["import", &s(&pth), "--key", "student", "--to", &s(&student)]);
    let (t, st) = (
        StFile::read(&teacher).unwrap(),
        StFile::read(&student).unwrap(),
    );
    assert_eq!(
        t.tensors.keys().collect::<Vec<_>>(),
        st.tensors.keys().collect::<Vec<_>>()
    );
    assert_ne!(t.tensors["cls_token"], st.tensors["cls_token"]);
    let err = export_err(&["import", &s(&pth), "--key", "ema", "--to", &s(&student)]);
    assert!(
        err.contains("no entry `ema`") && err.contains("teacher"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dino_train_import_writes_a_teacher_that_knn_loads() {
    let dir = scratch("train-import");
    let pth = checkpoint_pth(&dir, 7);
    let teacher = dir.join("teacher.safetensors");
    let text = run_ok(
        Command::new(bin("dino-train")).args(vit_tiny8_import(&pth, &teacher)),
        "dino-train import",
    );
    assert!(
        text.contains("vit_tiny/8") && text.contains("entry `teacher`"),
        "{text}"
    );
    // The same contents as `dino-export import` writes (metadata order aside).
    let other = dir.join("other.safetensors");
    export_ok(&["import", &s(&pth), "--to", &s(&other)]);
    let (a, b) = (
        StFile::read(&teacher).unwrap(),
        StFile::read(&other).unwrap(),
    );
    assert_eq!(a.metadata, b.metadata);
    assert!(
        a.tensors == b.tensors,
        "dino-train and dino-export import differ"
    );

    let (train, val) = (
        cifar_subset(&dir, "train", 3),
        cifar_subset(&dir, "test", 2),
    );
    let out = run_ok(
        Command::new(bin("dino-train"))
            .args(["knn", "--native", "--json", "--quiet", "--device", "cpu"])
            .args(["--k", "5", "--checkpoint", &s(&teacher)])
            .args(["--train", &s(&train), "--val", &s(&val)]),
        "dino-train knn on the imported teacher",
    );
    let r: serde_json::Value = serde_json::from_str(&out).expect("knn JSON");
    assert_eq!(
        (r["train_images"].as_u64(), r["val_images"].as_u64()),
        (Some(30), Some(20)),
        "{r}"
    );
    let top1 = r["top1"].as_f64().expect("top1");
    assert!((0.0..=100.0).contains(&top1), "{r}");
    std::fs::remove_dir_all(&dir).unwrap();
}
