//! `main_dino.py` command lines as the official README and training logs write them, given
//! to `dino-train train --print-config`: the printed TOML is parsed and compared key by key
//! with what the official flags mean (the `deit_*` aliases, `--use_fp16` as the precision,
//! `bool_flag` spellings, space-separated pairs, the accepted launcher flags). Architectures
//! dino-train cannot train, and launcher values it cannot honour, are refused saying what is
//! supported.

use std::process::{Command, Output};

use dino_tests::bin;

fn dino_train(args: &[&str]) -> Output {
    Command::new(bin("dino-train"))
        .arg("train")
        .args(args)
        .arg("--print-config")
        .output()
        .expect("run dino-train")
}

/// The resolved configuration of the official command-line tail `args`.
fn resolve(args: &str) -> toml::Table {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = dino_train(&args);
    assert!(
        out.status.success(),
        "{args:?} refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .parse()
        .expect("the printed config is TOML")
}

/// The error of the official command-line tail `args`.
fn refused(args: &str) -> String {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = dino_train(&args);
    assert!(!out.status.success(), "{args:?} accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `cfg[key]` equals the TOML literal `want` (`"vit_small"`, `0.07`, `[0.25, 1.0]`, `false`).
#[track_caller]
fn check(cfg: &toml::Table, expected: &[(&str, &str)]) {
    for (key, want) in expected {
        let want: toml::Table = format!("v = {want}").parse().expect("TOML literal");
        assert_eq!(cfg.get(*key), want.get("v"), "`{key}`");
    }
}

#[test]
fn readme_vanilla_command_line() {
    // python -m torch.distributed.launch --nproc_per_node=8 main_dino.py <this tail>
    let cfg = resolve(
        "--arch vit_small --data_path /path/to/imagenet/train --output_dir /path/to/saving_dir",
    );
    check(
        &cfg,
        &[
            ("arch", r#""vit_small""#),
            ("data_path", r#""/path/to/imagenet/train""#),
            ("output_dir", r#""/path/to/saving_dir""#),
            // The official defaults of everything else.
            ("patch_size", "16"),
            ("out_dim", "65536"),
            ("norm_last_layer", "true"),
            ("momentum_teacher", "0.996"),
            ("teacher_temp", "0.04"),
            ("lr", "0.0005"),
            ("batch_size", "64"),
            ("epochs", "100"),
            ("global_crops_scale", "[0.4, 1.0]"),
            ("local_crops_scale", "[0.05, 0.4]"),
            ("local_crops_number", "8"),
            ("clip_grad", "3.0"),
            ("saveckp_freq", "20"),
        ],
    );
    // The launcher's own flag, as torch.distributed.launch passes it, and the default URL.
    let again = resolve(
        "--local_rank=3 --dist_url env:// --arch vit_small --data_path /path/to/imagenet/train --output_dir /path/to/saving_dir",
    );
    assert_eq!(again, cfg);
}

#[test]
fn vit_small_full_recipe() {
    // The arguments of the released ViT-S/16 800-epoch run (its args.txt), submitit's own
    // flags left out.
    let cfg = resolve(
        "--arch vit_small --patch_size 16 --out_dim 65536 --norm_last_layer false \
         --warmup_teacher_temp 0.04 --teacher_temp 0.07 --warmup_teacher_temp_epochs 30 \
         --use_fp16 false --weight_decay 0.04 --weight_decay_end 0.4 --clip_grad 0 \
         --batch_size_per_gpu 64 --epochs 800 --freeze_last_layer 1 --lr 0.0005 \
         --warmup_epochs 10 --min_lr 1e-05 --global_crops_scale 0.25 1.0 \
         --local_crops_scale 0.05 0.25 --local_crops_number 10 --seed 0 --num_workers 10 \
         --optimizer adamw --momentum_teacher 0.996 --use_bn_in_head false --drop_path_rate 0.1 \
         --data_path /path/to/imagenet/train --output_dir /path/to/saving_dir --saveckp_freq 20 \
         --dist_url env://",
    );
    check(
        &cfg,
        &[
            ("arch", r#""vit_small""#),
            ("patch_size", "16"),
            ("norm_last_layer", "false"),
            ("teacher_temp", "0.07"),
            ("warmup_teacher_temp_epochs", "30"),
            ("precision", r#""fp32""#),
            ("clip_grad", "0.0"),
            ("batch_size", "64"),
            ("epochs", "800"),
            ("min_lr", "1e-05"),
            ("global_crops_scale", "[0.25, 1.0]"),
            ("local_crops_scale", "[0.05, 0.25]"),
            ("local_crops_number", "10"),
            ("num_workers", "10"),
            ("optimizer", r#""adamw""#),
            ("use_bn_in_head", "false"),
            ("drop_path_rate", "0.1"),
        ],
    );
}

#[test]
fn readme_boosted_and_deit_command_lines() {
    // "Boosting DINO performance", full command.
    let cfg = resolve(
        "--arch vit_small --epochs 300 --teacher_temp 0.07 --warmup_teacher_temp_epochs 30 \
         --norm_last_layer false --data_path /path/to/imagenet/train --output_dir /path/to/saving_dir",
    );
    check(
        &cfg,
        &[
            ("epochs", "300"),
            ("teacher_temp", "0.07"),
            ("warmup_teacher_temp_epochs", "30"),
            ("norm_last_layer", "false"),
        ],
    );
    // The vanilla run under its log's name: deit_small is vit_small, deit_tiny vit_tiny.
    let cfg = resolve("--arch deit_small --patch_size 16 --use_fp16 true --data_path d");
    check(
        &cfg,
        &[("arch", r#""vit_small""#), ("precision", r#""fp16""#)],
    );
    let cfg = resolve("--arch deit_tiny --patch_size 8 --global_crops_scale 0.14 1. --data_path d");
    check(
        &cfg,
        &[
            ("arch", r#""vit_tiny""#),
            ("patch_size", "8"),
            ("global_crops_scale", "[0.14, 1.0]"),
        ],
    );
}

#[test]
fn boolean_spellings_of_bool_flag() {
    for (text, want) in [
        ("True", "true"),
        ("False", "false"),
        ("true", "true"),
        ("false", "false"),
        ("1", "true"),
        ("0", "false"),
        ("on", "true"),
        ("off", "false"),
    ] {
        let cfg = resolve(&format!("--norm_last_layer {text} --use_bn_in_head {text}"));
        check(&cfg, &[("norm_last_layer", want), ("use_bn_in_head", want)]);
        let precision = if want == "true" {
            "\"fp16\""
        } else {
            "\"fp32\""
        };
        check(
            &resolve(&format!("--use_fp16 {text}")),
            &[("precision", precision)],
        );
    }
    // Not in bool_flag's sets.
    let e = refused("--norm_last_layer yes");
    assert!(e.contains("norm_last_layer") && e.contains("yes"), "{e}");
}

#[test]
fn pairs_as_separate_values_or_one() {
    for tail in [
        "--global_crops_scale 0.14 1 --local_crops_scale 0.05 0.4",
        "--global_crops_scale 0.14,1 --local_crops_scale [0.05,0.4]",
    ] {
        check(
            &resolve(tail),
            &[
                ("global_crops_scale", "[0.14, 1.0]"),
                ("local_crops_scale", "[0.05, 0.4]"),
            ],
        );
    }
    check(
        &resolve("--mean 0.5 0.5 0.5 --std 0.25 0.25 0.25"),
        &[("mean", "[0.5, 0.5, 0.5]"), ("std", "[0.25, 0.25, 0.25]")],
    );
    let e = refused("--global_crops_scale 0.14 0.5 1");
    assert!(e.contains("global_crops_scale"), "{e}");
}

#[test]
fn unsupported_networks_and_launch_values_say_what_is_supported() {
    for (arch, what) in [
        ("resnet50", "torchvision"),
        ("vgg16", "torchvision"),
        ("xcit", "XCiT"),
        ("xcit_small_12_p16", "XCiT"),
    ] {
        let e = refused(&format!("--arch {arch} --data_path d"));
        assert!(
            e.contains(arch)
                && e.contains(what)
                && e.contains("vit_small")
                && e.contains("deit_small"),
            "{arch}: {e}"
        );
    }
    // The README's ResNet-50 command line.
    let e = refused(
        "--arch resnet50 --optimizer sgd --lr 0.03 --weight_decay 1e-4 --weight_decay_end 1e-4 \
         --global_crops_scale 0.14 1 --local_crops_scale 0.05 0.14 --data_path d --output_dir o",
    );
    assert!(e.contains("resnet50") && e.contains("not supported"), "{e}");
    let e = refused("--dist_url tcp://10.0.0.1:23456");
    assert!(e.contains("dist_url") && e.contains("env://"), "{e}");
    let e = refused("--use_fp16 true --precision bf16");
    assert!(e.contains("use_fp16") && e.contains("precision"), "{e}");
}
