//! `--pretrained_weights` / `--checkpoint_key`: the student backbone (and so the teacher)
//! starts from an official backbone `.pth`, its position embedding resized to the
//! configuration's image size as the official `interpolate_pos_encoding` does.
//! `python/pretrained_interp.py` saves the backbone learned at 32 px and, for 48 px (up),
//! 20 px (down) and 32 px (unchanged), the official interpolated embedding and the official
//! backbone's output tokens on two images (it interpolates on the fly). dino-train's student must hold that
//! embedding and give that output within 1e-5. Bad files and keys are refused naming the
//! file.

mod algo_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use algo_common::{Reference, max_abs, values};
use dino_core::testing::assert_close;
use dino_models::io::named_raw;
use dino_tests::run_python;
use dino_train::config::{Arch, AugmentConfig, ModelConfig, RunConfig, TrainConfig};
use dino_train::device::DeviceSpec;
use dino_train::pretrained::start_weights;
use dino_train::step::DinoStep;
use tch::Device;

const ATOL: f32 = 1e-5;
const NATIVE: usize = 32;
/// Up, down, and the native size (taken as it is).
const SIZES: [usize; 3] = [48, 20, NATIVE];

fn config(img: usize, pretrained: &Path) -> TrainConfig {
    let mut cfg = TrainConfig {
        model: ModelConfig {
            arch: Arch::Custom,
            patch_size: 4,
            embed_dim: Some(24),
            depth: Some(2),
            num_heads: Some(2),
            out_dim: 64,
            head_hidden_dim: 48,
            head_bottleneck_dim: 16,
            ..ModelConfig::default()
        },
        augment: AugmentConfig {
            global_crop_size: img,
            local_crop_size: 8,
            ..AugmentConfig::default()
        },
        run: RunConfig {
            device: DeviceSpec::Cpu,
            ..RunConfig::default()
        },
        ..TrainConfig::default()
    };
    cfg.init.pretrained_weights = Some(pretrained.to_path_buf());
    cfg
}

/// The official backbone `.pth` and the reference at [`SIZES`].
fn official_backbone() -> (PathBuf, Reference) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args: Vec<String> = vec![dir.path().display().to_string()];
    args.extend(["24", "2", "2", "4"].map(String::from));
    args.push(NATIVE.to_string());
    args.extend(SIZES.map(|s| s.to_string()));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    run_python("train/tests/python/pretrained_interp.py", &args);
    let pth = dir.path().join("backbone.pth");
    (pth, Reference::open(dir, "reference.safetensors"))
}

/// A step whose weights start from `cfg`'s pretrained file.
fn started(cfg: &TrainConfig) -> Result<DinoStep, String> {
    tch::manual_seed(0);
    let mut run = DinoStep::new(cfg, 1, Device::Cpu).map_err(|e| e.to_string())?;
    let w = start_weights(cfg)
        .map_err(|e| e.to_string())?
        .expect("weights to start from");
    run.start_from(&w).map_err(|e| e.to_string())?;
    Ok(run)
}

#[test]
fn pretrained_backbone_is_interpolated_as_the_official_code_does() {
    let (pth, r) = official_backbone();
    for size in SIZES {
        let run = started(&config(size, &pth)).expect("start");
        let vars = run.student().vs.variables();
        let (ours, theirs) = (
            values(&vars["backbone.pos_embed"]),
            r.f32s(&format!("pos_embed_{size}")),
        );
        let pe = max_abs(&ours, &theirs);
        assert_close(&ours, &theirs, ATOL, 0.0);
        // The teacher starts as the student's copy; the heads are fresh and equal.
        for name in ["backbone.pos_embed", "head.last_layer.weight_v"] {
            let t = values(&run.teacher().vs.variables()[name]);
            assert_eq!(t, values(&vars[name]), "teacher {name}");
        }
        let image = r.tensor(&format!("image_{size}"));
        let tokens = tch::no_grad(|| run.student().backbone.forward_tokens(&image, false));
        let (ours, theirs) = (values(&tokens), r.f32s(&format!("tokens_{size}")));
        let out = max_abs(&ours, &theirs);
        assert_close(&ours, &theirs, ATOL, 0.0);
        eprintln!("{NATIVE} px -> {size} px: pos_embed max abs diff {pe:e}, output tokens {out:e}");
    }
}

#[test]
fn bad_files_and_keys_are_refused_naming_the_file() {
    let (pth, _r) = official_backbone();
    let name = "backbone.pth";
    let mut wrong_width = config(NATIVE, &pth);
    wrong_width.model.embed_dim = Some(32);
    let mut wrong_patch = config(NATIVE, &pth);
    wrong_patch.model.patch_size = 8;
    let mut wrong_key = config(NATIVE, &pth);
    wrong_key.init.checkpoint_key = "foo".into();
    for (cfg, want) in [
        (wrong_width, "embed_dim 32"),
        (wrong_patch, "custom/8"),
        (wrong_key, "no entry `foo`"),
    ] {
        let e = started(&cfg).err().expect("refused");
        assert!(e.contains(name) && e.contains(want), "{want}: {e}");
    }

    // A backbone with a key missing (official keys, written as a foreign safetensors file).
    let run = started(&config(NATIVE, &pth)).expect("start");
    let mut tensors: BTreeMap<_, _> = named_raw(&run.student().vs, "")
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("backbone.")?.to_string(), v)))
        .collect();
    tensors.remove("norm.bias");
    let dir = tempfile::tempdir().expect("temp dir");
    let partial = dir.path().join("partial.safetensors");
    dino_core::st::write_atomic(&partial, &tensors, Default::default()).expect("write");
    let e = started(&config(NATIVE, &partial)).err().expect("refused");
    assert!(
        e.contains("partial.safetensors") && e.contains("missing key `norm.bias`"),
        "{e}"
    );
}
