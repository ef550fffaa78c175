//! Every preset at every patch size exports to a model that
//! `onnx.checker.check_model(full_check=True)` accepts (strict shape inference included),
//! with all three outputs; so do fp16, int8 and the non-default opsets.

use dino_tests::export::{REF, export_ok, weights};
use dino_tests::{run_python, s, scratch};

#[test]
fn checker_accepts_every_preset_and_patch_size() {
    for arch in ["vit_tiny", "vit_small", "vit_base"] {
        let dir = scratch(&format!("export-check-{arch}"));
        let mut models = Vec::new();
        for patch in [4, 8, 16] {
            let w = weights(&dir, arch, patch, 224, &[]);
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
            3
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
