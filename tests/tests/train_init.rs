//! `dino-train train` started from weights, driven as a user would on a few CIFAR-10 images:
//! `--pretrained_weights` (a dino-rs teacher) and `--init_from` (a dino-rs checkpoint, an
//! official `checkpoint.pth`) train; `--resume` of such a run continues from its own
//! checkpoint without the pretrained file; bad files are refused naming them. And
//! `import --with-head` keeps the official DINO head, tensor for tensor, with its config.

use std::path::Path;

use dino_core::st::{self, StFile};
use dino_tests::{
    bin, cifar_subset, dino_train, run_ok, run_python, s, scratch, write_tiny_config,
};

fn ok(out: &std::process::Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed:\n{err}");
    err
}

fn refused(out: &std::process::Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The tiny configuration's backbone: width, depth, heads, patch, image size.
const TINY: [&str; 5] = ["32", "1", "2", "4", "32"];
/// ViT-Tiny/16's (`import` reads the architecture of a width off the presets).
const VIT_TINY: [&str; 5] = ["192", "12", "3", "16", "224"];

/// An official checkpoint (`dino_checkpoint.py`) of backbone `vit` and the tiny
/// configuration's head, with or without BatchNorm.
fn official_checkpoint(dir: &Path, vit: [&str; 5], use_bn: bool) {
    let bn = if use_bn { "1" } else { "0" };
    let dir = s(dir);
    let mut args = vec![dir.as_str()];
    args.extend(vit);
    args.extend(["256", "64", "32", bn]);
    run_python("tests/python/dino_checkpoint.py", &args);
}

#[test]
fn training_starts_from_weights_and_resumes_without_them() {
    let dir = scratch("train-init");
    let data = cifar_subset(&dir, "train", 2);
    let cfg = write_tiny_config(&dir, "");
    let one = ["--epochs", "1", "--warmup_epochs", "0"];
    ok(
        &dino_train(&cfg, &data, &dir.join("base"), &one),
        "base run",
    );
    let teacher = dir.join("base").join("teacher.safetensors");
    let pretrained = dir.join("pretrained.safetensors");
    std::fs::copy(&teacher, &pretrained).expect("copy teacher");

    // From a dino-rs teacher, stopped after one of two epochs...
    let run = dir.join("from-teacher");
    let args = ["--pretrained_weights", &s(&pretrained), "--stop-after", "1"];
    let mut cmd = std::process::Command::new(bin("dino-train"));
    cmd.args(["train", "--config", &s(&cfg), "--data_path", &s(&data)])
        .args(["--output_dir", &s(&run)])
        .args(args);
    let out = cmd.output().expect("run dino-train");
    let err = ok(&out, "--pretrained_weights");
    assert!(
        err.contains("starting from the weights of") && err.contains("pretrained.safetensors"),
        "{err}"
    );
    let config = std::fs::read_to_string(run.join("config.toml")).expect("config.toml");
    assert!(config.contains("pretrained_weights = "), "{config}");
    // ... and resumed with the pretrained file gone: the run's checkpoint is all it needs.
    std::fs::remove_file(&pretrained).expect("remove");
    let out = dino_train(
        &cfg,
        &data,
        &run,
        &["--pretrained_weights", &s(&pretrained), "--resume"],
    );
    let err = ok(&out, "--resume");
    assert!(
        err.contains("resuming") && !err.contains("starting from"),
        "{err}"
    );
    assert!(run.join("teacher.safetensors").exists());

    // From a dino-rs training checkpoint and from an official checkpoint.pth.
    let ck = dir.join("base").join("checkpoint.safetensors");
    ok(
        &dino_train(
            &cfg,
            &data,
            &dir.join("from-ck"),
            &[&one[..], &["--init_from", &s(&ck)]].concat(),
        ),
        "--init_from dino-rs",
    );
    official_checkpoint(&dir, TINY, false);
    let pth = dir.join("checkpoint.pth");
    let tail = ["--init_from", &s(&pth), "--norm_last_layer", "false"];
    ok(
        &dino_train(
            &cfg,
            &data,
            &dir.join("from-pth"),
            &[&one[..], &tail].concat(),
        ),
        "--init_from official",
    );

    // Refusals name the file and the problem.
    for (extra, file, want) in [
        (
            vec!["--pretrained_weights", &s(&teacher), "--embed_dim", "48"],
            "teacher.safetensors",
            "embed_dim 48",
        ),
        (
            vec!["--pretrained_weights", &s(&teacher), "--patch_size", "8"],
            "teacher.safetensors",
            "custom/8",
        ),
        (
            vec!["--pretrained_weights", &s(&ck), "--checkpoint_key", "foo"],
            "checkpoint.safetensors",
            "foo",
        ),
        (
            vec!["--init_from", &s(&teacher)],
            "teacher.safetensors",
            "not a training checkpoint",
        ),
        (
            vec!["--init_from", &s(&pth), "--out_dim", "128"],
            "checkpoint.pth",
            "out_dim 128",
        ),
        (
            vec!["--init_from", &s(&pth)],
            "checkpoint.pth",
            "norm_last_layer true",
        ),
    ] {
        let out = dino_train(
            &cfg,
            &data,
            &dir.join("refused"),
            &[&one[..], &extra].concat(),
        );
        let e = refused(&out, &format!("{extra:?}"));
        assert!(e.contains(file) && e.contains(want), "{extra:?}: {e}");
    }
}

#[test]
fn import_with_head_keeps_the_dino_head() {
    let dir = scratch("import-with-head");
    official_checkpoint(&dir, VIT_TINY, true);
    let pth = dir.join("checkpoint.pth");
    let reference = StFile::read(&dir.join("teacher.safetensors")).expect("reference");

    let with = dir.join("with-head.safetensors");
    let text = run_ok(
        std::process::Command::new(bin("dino-train")).args([
            "import",
            &s(&pth),
            "--with-head",
            "--to",
            &s(&with),
        ]),
        "dino-train import --with-head",
    );
    assert!(
        text.contains("with the DINO head (out_dim 256, 3 layers, BatchNorm)"),
        "{text}"
    );
    let f = StFile::read(&with).expect("written file");
    let head = f
        .head_config()
        .expect("head metadata")
        .expect("a head config");
    assert_eq!(
        (
            head.in_dim,
            head.out_dim,
            head.use_bn,
            head.norm_last_layer,
            head.nlayers,
            head.hidden_dim,
            head.bottleneck_dim
        ),
        (192, 256, true, false, 3, 64, 32)
    );
    // Every tensor of the teacher, head included, as the file held it.
    for (k, t) in &reference.tensors {
        if k == "center" {
            continue;
        }
        let ours = f.tensors.get(k).unwrap_or_else(|| panic!("`{k}` missing"));
        assert_eq!(ours.shape, t.shape, "{k}");
        assert_eq!(
            ours.to_f32(&with, k).unwrap(),
            t.to_f32(&with, k).unwrap(),
            "{k}"
        );
    }
    assert!(f.tensors.contains_key("head.mlp.1.num_batches_tracked"));

    // dino-export writes the same file; without the flag the head is left out.
    let exported = dir.join("export-with-head.safetensors");
    run_ok(
        std::process::Command::new(bin("dino-export")).args([
            "import",
            &s(&pth),
            "--with-head",
            "--to",
            &s(&exported),
        ]),
        "dino-export import --with-head",
    );
    let (a, b) = (
        StFile::read(&exported).unwrap(),
        StFile::read(&with).unwrap(),
    );
    assert_eq!(a.metadata, b.metadata);
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    assert!(a.tensors.iter().all(|(k, t)| t.data == b.tensors[k].data));
    let without = dir.join("without-head.safetensors");
    run_ok(
        std::process::Command::new(bin("dino-train")).args([
            "import",
            &s(&pth),
            "--to",
            &s(&without),
        ]),
        "dino-train import",
    );
    let f = StFile::read(&without).expect("written file");
    assert!(!f.metadata.contains_key(st::META_HEAD));
    assert!(f.tensors.keys().all(|k| !k.starts_with("head.")));

    // The file with the head is still a backbone to the readers of backbones.
    let onnx = dir.join("m.onnx");
    run_ok(
        std::process::Command::new(bin("dino-export")).args([
            "--checkpoint",
            &s(&with),
            "--to",
            &s(&onnx),
        ]),
        "dino-export of a file with a head",
    );
    // A backbone state dict has no head: --with-head says so, naming the file.
    let out = std::process::Command::new(bin("dino-train"))
        .args([
            "import",
            &s(&without),
            "--with-head",
            "--to",
            &s(&dir.join("x.safetensors")),
        ])
        .output()
        .expect("run");
    let e = refused(&out, "--with-head without a head");
    assert!(
        e.contains("without-head.safetensors") && e.contains("head"),
        "{e}"
    );
}
