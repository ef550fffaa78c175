//! `dino-train knn` as the official `eval_knn.py`: several k from one pass equal separate
//! runs; dumped features vote exactly as the run that wrote them (dino-rs safetensors, and
//! the official `.pth` dump written by PyTorch from them); an official training
//! `checkpoint.pth` (written by PyTorch from a dino-rs teacher, `backbone.`/`module.`
//! prefixes, heads) gives bit-identical features for its teacher and its student; errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dino_core::st::StFile;
use dino_tests::{bin, cifar_subset, dino_train, root, run_python, s, scratch};

const SCRIPT: &str = "tests/python/knn_files.py";

fn knn(args: &[&str]) -> Output {
    Command::new(bin("dino-train"))
        .args(["knn", "--quiet", "--device", "cpu"])
        .args(args)
        .output()
        .expect("run dino-train knn")
}

/// The JSON objects (one per k) of a successful `knn --json` run.
fn knn_json(args: &[&str]) -> Vec<serde_json::Value> {
    let o = knn(&[&["--json"], args].concat());
    assert!(
        o.status.success(),
        "dino-train knn {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn knn_err(args: &[&str]) -> String {
    let o = knn(args);
    assert!(!o.status.success(), "dino-train knn {args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `<dir>/data/train` and `<dir>/data/val`: the first `train`/`val` CIFAR images per class.
fn data(dir: &Path, train: usize, val: usize) -> PathBuf {
    let d = dir.join("data");
    cifar_subset(&d, "train", train);
    let test = cifar_subset(&d, "test", val);
    std::fs::rename(test, d.join("val")).expect("rename test to val");
    d
}

fn features(dir: &Path) -> StFile {
    StFile::read(&dir.join("knn_features.safetensors")).expect("dumped features")
}

#[test]
fn several_k_in_one_pass_equal_single_runs_and_dumps_vote_the_same() {
    let dir = scratch("knn-multi");
    let d = data(&dir, 20, 10);
    let teacher = s(&root().join("demo/teacher.safetensors"));
    let dump = dir.join("feats");
    let ks = ["1", "5", "20", "100"];
    let w = ["--pretrained_weights", &teacher, "--native"];
    let all = knn_json(
        &[
            &w[..],
            &["--data_path", &s(&d), "--dump_features", &s(&dump)],
        ]
        .concat(),
    );
    let all_ks = knn_json(&[&w[..], &["--data_path", &s(&d), "--nb_knn"], &ks].concat());
    assert_eq!(all.len(), 4, "the official default --nb_knn 10 20 100 200");
    assert_eq!(all[1]["k"], 20);
    assert_eq!(
        (
            all[0]["train_images"].as_u64(),
            all[0]["val_images"].as_u64()
        ),
        (Some(200), Some(100))
    );
    let (train, val) = (s(&d.join("train")), s(&d.join("val")));
    for (row, k) in all_ks.iter().zip(ks) {
        let one = knn_json(&[
            "--checkpoint",
            &teacher,
            "--native",
            "--train",
            &train,
            "--val",
            &val,
            "--k",
            k,
        ]);
        assert_eq!(one.len(), 1);
        assert_eq!(&one[0], row, "k = {k} alone");
    }

    // The dump votes exactly as the run that wrote it, without model or images.
    let loaded = knn_json(&["--load_features", &s(&dump)]);
    assert_eq!(loaded, all);
    let f = features(&dump);
    assert_eq!(f.tensors["train_features"].shape, [200, 192]);
    assert_eq!(f.tensors["test_labels"].shape, [100]);

    // The official dump (torch.save of each tensor) of the same features votes the same;
    // it records no eval transform.
    let official = dir.join("official");
    run_python(
        SCRIPT,
        &[
            "official-dump",
            "--features",
            &s(&dump.join("knn_features.safetensors")),
            "--out",
            &s(&official),
        ],
    );
    let from_pth = knn_json(&["--load_features", &s(&official)]);
    for (a, mut b) in all.iter().cloned().zip(from_pth) {
        assert_eq!(
            (b["resize"].take(), b["crop"].take()),
            (serde_json::Value::Null, serde_json::Value::Null)
        );
        let mut a = a;
        a["resize"] = serde_json::Value::Null;
        a["crop"] = serde_json::Value::Null;
        assert_eq!(a, b);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A tiny vit_tiny/16 at 32 pixels (an official architecture, which official files need),
/// trained one epoch with ImageNet statistics (what official weights are evaluated with).
const VIT_TINY: &str = r#"
arch = "vit_tiny"
patch_size = 16
img_size = 32
out_dim = 256
head_hidden_dim = 64
head_bottleneck_dim = 32
global_crop_size = 32
local_crop_size = 16
local_crops_number = 2
batch_size = 16
epochs = 1
warmup_epochs = 0
num_workers = 2
"#;

#[test]
fn official_checkpoint_pth_gives_the_features_of_the_dino_rs_teacher_and_student() {
    let dir = scratch("knn-pth");
    let d = data(&dir, 4, 3);
    let cfg = dir.join("vit_tiny.toml");
    std::fs::write(&cfg, VIT_TINY).unwrap();
    let run = dir.join("run");
    let o = dino_train(&cfg, &d.join("train"), &run, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let teacher = run.join("teacher.safetensors");
    let (ckpt, student) = (dir.join("checkpoint.pth"), dir.join("student.safetensors"));
    run_python(
        SCRIPT,
        &[
            "official-checkpoint",
            "--teacher",
            &s(&teacher),
            "--out",
            &s(&ckpt),
            "--student-out",
            &s(&student),
            "--seed",
            "0",
        ],
    );

    let run_dump = |weights: &[&str], name: &str| {
        let out = dir.join(name);
        let r = knn_json(
            &[
                weights,
                &[
                    "--data_path",
                    &s(&d),
                    "--native",
                    "--nb_knn",
                    "1",
                    "5",
                    "20",
                    "--dump_features",
                    &s(&out),
                ],
            ]
            .concat(),
        );
        (r, features(&out))
    };
    let (ours, f_ours) = run_dump(&["--pretrained_weights", &s(&teacher)], "ours");
    let (pth, f_pth) = run_dump(
        &[
            "--pretrained_weights",
            &s(&ckpt),
            "--checkpoint_key",
            "teacher",
        ],
        "pth",
    );
    let (_, f_default) = run_dump(&["--pretrained_weights", &s(&ckpt)], "default");
    assert_eq!(ours, pth);
    assert_eq!(
        f_ours.tensors, f_pth.tensors,
        "the .pth teacher's features differ"
    );
    assert_eq!(
        f_default.tensors, f_pth.tensors,
        "--checkpoint_key defaults to teacher"
    );

    let (st, f_st) = run_dump(&["--pretrained_weights", &s(&student)], "student-st");
    let (pst, f_pst) = run_dump(
        &[
            "--pretrained_weights",
            &s(&ckpt),
            "--checkpoint_key",
            "student",
        ],
        "student-pth",
    );
    assert_eq!(st, pst);
    assert_eq!(
        f_st.tensors, f_pst.tensors,
        "the .pth student's features differ"
    );
    assert_ne!(
        f_pst.tensors, f_pth.tensors,
        "the student was read as the teacher"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn knn_errors_name_the_problem() {
    let dir = scratch("knn-errors");
    let d = data(&dir, 2, 1);
    let teacher = s(&root().join("demo/teacher.safetensors"));
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = knn_err(&["--load_features", &s(&empty)]);
    assert!(
        e.contains("no k-NN features") && e.contains("trainfeat.pth"),
        "{e}"
    );

    let wrong = dir.join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::copy(&teacher, wrong.join("knn_features.safetensors")).unwrap();
    let e = knn_err(&["--load_features", &s(&wrong)]);
    assert!(e.contains("not k-NN features"), "{e}");

    let e = knn_err(&["--load_features", &s(&empty), "--checkpoint", &teacher]);
    assert!(e.contains("cannot be used with"), "{e}");
    let e = knn_err(&["--checkpoint", &teacher]);
    assert!(e.contains("--data_path"), "{e}");
    let e = knn_err(&["--data_path", &s(&d)]);
    assert!(e.contains("--pretrained_weights"), "{e}");

    let dp = ["--checkpoint", &teacher, "--native", "--data_path", &s(&d)];
    let e = knn_err(&[&dp[..], &["--nb_knn", "10", "0"]].concat());
    assert!(e.contains("positive"), "{e}");
    let e = knn_err(&[&dp[..], &["--temperature", "0"]].concat());
    assert!(e.contains("temperature"), "{e}");
    let e = knn_err(&[&dp[..], &["--checkpoint_key", "student"]].concat());
    assert!(e.contains("student"), "{e}");
    let e = knn_err(&[&dp[..], &["--checkpoint_key", "head"]].concat());
    assert!(e.contains("invalid value 'head'"), "{e}");
    let e = knn_err(&["--checkpoint", &teacher, "--data_path", &s(&dir)]);
    assert!(e.contains(&s(&dir.join("train"))), "{e}");

    // Classes of val that are not those of train.
    std::fs::rename(d.join("val/truck"), d.join("val/lorry")).unwrap();
    let e = knn_err(&dp);
    assert!(e.contains("lorry") && e.contains("differ"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
