//! Every file in `configs/` is a valid dino-train configuration: unknown keys are errors, so a
//! renamed option would otherwise break a shipped recipe unnoticed until someone trains it.

use std::process::Command;

use dino_tests::{bin, root, run_ok};

#[test]
fn every_shipped_config_resolves() {
    let mut seen = 0;
    let mut files: Vec<_> = std::fs::read_dir(root().join("configs"))
        .expect("configs/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for path in files {
        let text = run_ok(
            Command::new(bin("dino-train"))
                .args(["train", "--print-config", "--config"])
                .arg(&path)
                .current_dir(root()),
            &format!(
                "dino-train train --print-config --config {}",
                path.display()
            ),
        );
        // The resolved configuration names every option, including the ones the file leaves
        // at their defaults.
        for key in ["arch = ", "out_dim = ", "teacher_temp = ", "epochs = "] {
            assert!(
                text.contains(key),
                "{}: no `{key}` in\n{text}",
                path.display()
            );
        }
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} configs found");
}
