//! Every preset at every patch size (ViT-B at its official 8 and 16: at 4 it has 3,136
//! tokens and tests nothing ViT-T and ViT-S at 4 do not) exports to a model that
//! `onnx.checker.check_model(full_check=True)` accepts (strict shape inference included),
//! with all three outputs; so do fp16, int8 and the non-default opsets.

use dino_tests::export::{REF, export_ok, weights, weights_each};
use dino_tests::{run_python, s, scratch};

#[test]
fn checker_accepts_every_preset_and_patch_size() {
    for (arch, patches) in [
        ("vit_tiny", &[4, 8, 16][..]),
        ("vit_small", &[4, 8, 16]),
        ("vit_base", &[8, 16]),
    ] {
        let dir = scratch(&format!("export-check-{arch}"));
        let mut models = Vec::new();
        for (&patch, w) in patches
            .iter()
            .zip(weights_each(&dir, arch, patches, 224, &[]))
        {
            let m = dir.join(format!("{arch}-p{patch}.onnx"));
            export_ok(&[
                "--checkpoint",
                &s(&w),
                "--to",
                &s(&m),
                "--outputs",
                "patch_tokens,attention",
            ]);
            std::fs::remove_file(&w).unwrap();
            models.push(s(&m));
        }
        let mut args = vec!["check"];
        args.extend(models.iter().map(String::as_str));
        let out = run_python(REF, &args);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .matches("full_check ok")
                .count(),
            patches.len()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn checker_accepts_fp16_int8_and_every_opset_variant() {
    let dir = scratch("export-check-variants");
    let w = weights(&dir, "vit_tiny", 16, 224, &[]);
    let mut models = Vec::new();
    for (tag, extra) in [
        ("fp16", vec!["--precision", "fp16"]),
        ("fp16-opset13", vec!["--precision", "fp16", "--opset", "13"]),
        ("int8", vec!["--precision", "int8"]),
        ("int8-opset13", vec!["--precision", "int8", "--opset", "13"]),
        (
            "int8-reduced-opset21",
            vec![
                "--precision",
                "int8",
                "--int8-range",
                "reduced",
                "--opset",
                "21",
            ],
        ),
        ("opset13", vec!["--opset", "13"]),
        ("opset20", vec!["--opset", "20"]),
        ("opset21", vec!["--opset", "21"]),
        ("size96", vec!["--img-size", "96"]),
        ("embedding-only", vec![]),
    ] {
        let m = dir.join(format!("{tag}.onnx"));
        let (ws, ms) = (s(&w), s(&m));
        let mut args = vec!["--checkpoint", &ws, "--to", &ms];
        if tag != "embedding-only" {
            args.extend(["--outputs", "patch_tokens,attention"]);
        }
        args.extend(extra);
        export_ok(&args);
        models.push(ms);
    }
    let mut args = vec!["check"];
    args.extend(models.iter().map(String::as_str));
    run_python(REF, &args);
    std::fs::remove_dir_all(&dir).unwrap();
}
