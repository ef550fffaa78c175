use super::*;

fn flags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The keys of a flat TOML document, in order.
fn keys(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_string()))
        .collect()
}

#[test]
fn print_order_is_the_option_table_order() {
    // Every option set, so that none is left out as None.
    let all_set = [
        ("embed_dim", "64"),
        ("depth", "2"),
        ("num_heads", "2"),
        ("img_size", "32"),
        ("knn_train", "a"),
        ("knn_val", "b"),
        ("knn_resize", "32"),
        ("knn_crop", "32"),
        ("pretrained_weights", "w.pth"),
    ];
    let cfg = TrainConfig::resolve(None, &flags(&all_set)).unwrap();
    // init_from and pretrained_weights exclude each other.
    let table: Vec<&str> = options()
        .map(|o| o.key)
        .filter(|k| *k != "init_from")
        .collect();
    assert_eq!(keys(&cfg.to_toml()), table);
    // And the printed file reads back as the same configuration.
    let again: TrainConfig = toml::from_str(&cfg.to_toml()).unwrap();
    assert_eq!(again, cfg);
}

#[test]
fn flags_override_the_file_and_keep_their_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "lr = 0.001\nepochs = 3\n").unwrap();
    let cfg = TrainConfig::resolve(
        Some(&file),
        &flags(&[
            ("epochs", "5"),
            ("momentum_teacher", "0.99"),
            ("global_crops_scale", "0.3,1.0"),
            ("local_crops_scale", "[0.05, 0.3]"),
            ("precision", "fp32"),
            ("optimizer", "sgd"),
            ("device", "cuda:1"),
            ("photometric", "device"),
            ("norm_last_layer", "false"),
            ("knn_train", "123"),
        ]),
    )
    .unwrap();
    assert_eq!((cfg.optim.lr, cfg.optim.epochs), (0.001, 5));
    assert_eq!(cfg.teacher.momentum_teacher, 0.99);
    assert_eq!(cfg.augment.global_crops_scale, [0.3, 1.0]);
    assert_eq!(cfg.augment.local_crops_scale, [0.05, 0.3]);
    assert_eq!(cfg.optim.precision, crate::device::PrecisionSpec::Fp32);
    assert_eq!(cfg.optim.optimizer, crate::optim::OptimizerKind::Sgd);
    assert_eq!(cfg.run.device, crate::device::DeviceSpec::Cuda(Some(1)));
    assert_eq!(cfg.run.photometric, crate::data::PhotometricSpec::Device);
    assert!(!cfg.model.norm_last_layer);
    assert_eq!(cfg.knn.knn_train, Some(PathBuf::from("123")));
    assert!(cfg.to_toml().contains("device = \"cuda:1\"\n"));
}

#[test]
fn unknown_keys_and_bad_values_name_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "bogus = 1\n").unwrap();
    let e = TrainConfig::resolve(Some(&file), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.toml") && e.contains("bogus"), "{e}");
    // The file's own error is reported even when flags are given too.
    let e = TrainConfig::resolve(Some(&file), &flags(&[("lr", "0.1")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.toml") && e.contains("bogus"), "{e}");
    std::fs::write(&file, "optimizer = \"adam\"\n").unwrap();
    let e = TrainConfig::resolve(Some(&file), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.toml") && e.contains("adamw, sgd, lars"),
        "{e}"
    );
    // A flag fixes a bad value of the file.
    let cfg = TrainConfig::resolve(Some(&file), &flags(&[("optimizer", "lars")])).unwrap();
    assert_eq!(cfg.optim.optimizer, crate::optim::OptimizerKind::Lars);
    for (key, text, want) in [
        ("bogus", "1", "unknown option `bogus`"),
        ("lr", "abc", "--lr abc"),
        ("patch_size", "1.5", "patch_size"),
        ("device", "tpu", "expected auto, cpu, cuda or cuda:N"),
        ("global_crops_scale", "0.4", "global_crops_scale"),
    ] {
        let e = TrainConfig::resolve(None, &flags(&[(key, text)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "--{key} {text}: {e}");
    }
}

#[test]
fn validation_keeps_every_check() {
    for (key, text) in [
        ("batch_size", "0"),
        ("epochs", "0"),
        ("global_crops_scale", "0.5,0.4"),
        ("local_crops_scale", "0,0.4"),
        ("global_blur_prob", "1.5,0.1"),
        ("local_blur_prob", "-0.1"),
        ("solarization_prob", "0,2"),
        ("blur_sigma", "0,2"),
        ("knn_freq", "1"),
        ("arch", "custom"),
    ] {
        assert!(
            TrainConfig::resolve(None, &flags(&[(key, text)])).is_err(),
            "--{key} {text} passed"
        );
    }
}

#[test]
fn enum_names_are_their_value_enum_names() {
    use clap::ValueEnum;
    fn check<T: ValueEnum + std::fmt::Display + std::str::FromStr + PartialEq + std::fmt::Debug>() {
        for v in T::value_variants() {
            let name = v.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(v.to_string(), name);
            assert!(name.parse::<T>().ok().as_ref() == Some(v));
        }
    }
    check::<Arch>();
    check::<crate::optim::OptimizerKind>();
    check::<crate::device::PrecisionSpec>();
    check::<crate::data::PhotometricSpec>();
    assert_eq!(Arch::VitSmall.to_string(), "vit_small");
    assert_eq!(crate::optim::OptimizerKind::AdamW.to_string(), "adamw");
    // Every preset name is one core knows.
    for a in [Arch::VitTiny, Arch::VitSmall, Arch::VitBase] {
        assert!(VitConfig::preset(&a.to_string(), 16).is_ok(), "{a}");
    }
}

#[test]
fn official_spellings_resolve() {
    // Booleans as main_dino.py's bool_flag reads them.
    for (text, want) in [
        ("True", true),
        ("false", false),
        ("0", false),
        ("1", true),
        ("on", true),
        ("OFF", false),
    ] {
        let cfg = TrainConfig::resolve(None, &flags(&[("norm_last_layer", text)])).unwrap();
        assert_eq!(cfg.model.norm_last_layer, want, "{text}");
    }
    assert!(TrainConfig::resolve(None, &flags(&[("norm_last_layer", "yes")])).is_err());
    // Pairs as separate values (joined by the command line), Python float syntax.
    let cfg = TrainConfig::resolve(
        None,
        &flags(&[("global_crops_scale", "0.14,1."), ("lr", ".001")]),
    )
    .unwrap();
    assert_eq!(cfg.augment.global_crops_scale, [0.14, 1.0]);
    assert_eq!(cfg.optim.lr, 0.001);
    let cfg = TrainConfig::resolve(None, &flags(&[("local_crops_scale", "0.05 0.4")])).unwrap();
    assert_eq!(cfg.augment.local_crops_scale, [0.05, 0.4]);
    // deit_* are the official aliases of vit_*; use_fp16 is the precision.
    let cfg = TrainConfig::resolve(
        None,
        &flags(&[("arch", "deit_tiny"), ("use_fp16", "false")]),
    )
    .unwrap();
    assert_eq!(cfg.model.arch, Arch::VitTiny);
    assert_eq!(cfg.optim.precision, crate::device::PrecisionSpec::Fp32);
    let e = TrainConfig::resolve(None, &flags(&[("arch", "resnet50")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("torchvision") && e.contains("vit_small"), "{e}");
}

#[test]
fn official_keys_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "use_fp16 = true\ndist_url = \"env://\"\narch = \"deit_small\"\n",
    )
    .unwrap();
    let cfg = TrainConfig::resolve(Some(&file), &[]).unwrap();
    assert_eq!(cfg.optim.precision, crate::device::PrecisionSpec::Fp16);
    assert_eq!(cfg.model.arch, Arch::VitSmall);
    std::fs::write(&file, "use_fp16 = true\nprecision = \"bf16\"\n").unwrap();
    let e = TrainConfig::resolve(Some(&file), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("c.toml") && e.contains("twice"), "{e}");
    std::fs::write(
        &file,
        "init_from = \"a.pth\"\npretrained_weights = \"b.pth\"\n",
    )
    .unwrap();
    assert!(TrainConfig::resolve(Some(&file), &[]).is_err());
}

#[test]
fn values_outside_their_domain_are_refused_at_start() {
    for (key, value, says) in [
        ("lr", "-0.001", "lr -0.001 must be >= 0"),
        ("weight_decay", "-1", "weight_decay"),
        ("clip_grad", "-3", "clip_grad"),
        (
            "momentum_teacher",
            "1.5",
            "momentum_teacher 1.5 must be in [0, 1]",
        ),
        ("momentum_teacher", "-0.1", "momentum_teacher"),
        ("center_momentum", "2", "center_momentum"),
        ("teacher_temp", "0", "teacher_temp 0 must be > 0"),
        ("student_temp", "nan", "student_temp"),
        ("knn_k", "0", "knn_k 0 must be >= 1"),
        ("drop_path_rate", "1", "drop_path_rate"),
    ] {
        let e = TrainConfig::resolve(None, &flags(&[(key, value)]))
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(e.contains(says), "--{key} {value}: `{e}`");
    }
    assert!(TrainConfig::resolve(None, &flags(&[("momentum_teacher", "1")])).is_ok());
    assert!(TrainConfig::resolve(None, &flags(&[("clip_grad", "0")])).is_ok());
}
