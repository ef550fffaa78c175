//! What a user sees when an export cannot be done: a message naming the file and the
//! problem (unknown or foreign format, every missing key, shape mismatches, bad options,
//! an unwritable destination), and never a half-written or clobbered model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use dino_core::VitConfig;
use dino_core::st::{self, RawTensor};
use dino_core::weights::backbone_shapes;
use dino_tests::export::{export_err, export_ok};
use dino_tests::{s, scratch};

fn tiny() -> VitConfig {
    VitConfig {
        arch: "custom".into(),
        patch_size: 4,
        img_size: 8,
        in_chans: 3,
        embed_dim: 8,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 2.0,
        qkv_bias: true,
        drop_path_rate: 0.0,
        layer_norm_eps: 1e-6,
    }
}

fn tensors(cfg: &VitConfig) -> BTreeMap<String, RawTensor> {
    backbone_shapes(cfg)
        .into_iter()
        .map(|(k, shape)| {
            let n = shape.iter().product::<usize>();
            let v: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0).collect();
            (k, RawTensor::from_f32(shape, &v))
        })
        .collect()
}

fn write(path: &Path, t: &BTreeMap<String, RawTensor>, meta: HashMap<String, String>) {
    st::write_atomic(path, t, meta).unwrap();
}

fn backbone_meta(cfg: &VitConfig) -> HashMap<String, String> {
    st::backbone_metadata(cfg, None, None, st::KIND_BACKBONE)
}

/// Files in `dir` other than `keep`: leftovers of a failed write.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn bad_inputs_are_named_and_the_old_model_survives() {
    let dir = scratch("export-errors");
    let cfg = tiny();
    let good = dir.join("good.safetensors");
    write(&good, &tensors(&cfg), backbone_meta(&cfg));
    let model = dir.join("model.onnx");
    let text = export_ok(&["--checkpoint", &s(&good), "--to", &s(&model)]);
    assert!(text.contains("custom/4 at 8px"), "{text}");
    let before = std::fs::read(&model).unwrap();
    let to = s(&model);
    let run = |ckpt: &Path, extra: &[&str]| {
        let c = s(ckpt);
        let mut args = vec!["--checkpoint", c.as_str(), "--to", to.as_str()];
        args.extend(extra);
        export_err(&args)
    };

    let garbage = dir.join("garbage.bin");
    std::fs::write(&garbage, b"definitely not weights").unwrap();
    let err = run(&garbage, &[]);
    assert!(
        err.contains("garbage.bin") && err.contains("unknown checkpoint format"),
        "{err}"
    );

    let foreign = dir.join("foreign.safetensors");
    write(&foreign, &tensors(&cfg), HashMap::new());
    let err = run(&foreign, &[]);
    // Official-key safetensors are imported on the fly like .pth files; these weights are
    // of a width no official preset has.
    assert!(
        err.contains("foreign.safetensors") && err.contains("matches no preset"),
        "{err}"
    );

    let mut t = tensors(&cfg);
    t.remove("norm.bias");
    t.remove("blocks.1.mlp.fc2.weight");
    t.insert(
        "cls_token".into(),
        RawTensor::from_f32(vec![1, 1, 4], &[0.0; 4]),
    );
    let broken = dir.join("broken.safetensors");
    write(&broken, &t, backbone_meta(&cfg));
    let err = run(&broken, &[]);
    for needle in [
        "broken.safetensors",
        "missing key `norm.bias`",
        "missing key `blocks.1.mlp.fc2.weight`",
        "shape mismatch for `cls_token`",
    ] {
        assert!(err.contains(needle), "{needle} not in: {err}");
    }

    let err = run(&good, &["--img-size", "10"]);
    assert!(err.contains("multiple of the patch size 4"), "{err}");
    let err = run(&good, &["--opset", "12"]);
    assert!(err.contains("--opset 12 is not supported"), "{err}");

    let missing = dir.join("nope.safetensors");
    let err = run(&missing, &[]);
    assert!(err.contains("nope.safetensors"), "{err}");

    assert_eq!(
        std::fs::read(&model).unwrap(),
        before,
        "a failed export changed the model"
    );
    let extra = leftovers(
        &dir,
        &[
            "good.safetensors",
            "model.onnx",
            "garbage.bin",
            "foreign.safetensors",
            "broken.safetensors",
        ],
    );
    assert!(extra.is_empty(), "left behind: {extra:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unwritable_destinations_fail_before_any_work() {
    let dir = scratch("export-errors-dest");
    let cfg = tiny();
    let good = dir.join("good.safetensors");
    write(&good, &tensors(&cfg), backbone_meta(&cfg));
    let g = s(&good);
    let no_dir = s(&dir.join("no/such/folder/model.onnx"));
    let err = export_err(&["--checkpoint", &g, "--to", &no_dir]);
    assert!(
        err.contains("cannot write") && err.contains("folder does not exist"),
        "{err}"
    );
    let err = export_err(&["--checkpoint", &g, "--to", &s(&dir)]);
    assert!(err.contains("it is a folder"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn training_checkpoints_export_their_teacher() {
    let dir = scratch("export-errors-ckpt");
    let cfg = tiny();
    let mut t = BTreeMap::new();
    for (k, v) in tensors(&cfg) {
        t.insert(format!("{}{k}", st::PREFIX_TEACHER_BACKBONE), v.clone());
        t.insert(format!("{}{k}", st::PREFIX_STUDENT_BACKBONE), v);
    }
    let ckpt = dir.join("checkpoint.safetensors");
    write(
        &ckpt,
        &t,
        st::backbone_metadata(&cfg, None, None, st::KIND_CHECKPOINT),
    );
    let (a, b) = (dir.join("a.onnx"), dir.join("b.onnx"));
    let good = dir.join("teacher.safetensors");
    write(&good, &tensors(&cfg), backbone_meta(&cfg));
    export_ok(&["--checkpoint", &s(&ckpt), "--to", &s(&a)]);
    export_ok(&["--checkpoint", &s(&good), "--to", &s(&b)]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_says_what_the_model_takes_and_gives() {
    let text = export_ok(&["--help"]);
    for needle in [
        "--checkpoint",
        "--precision",
        "float32",
        "fp16",
        "dino-export import",
        "Examples",
    ] {
        assert!(text.contains(needle), "{needle} not in --help");
    }
}
