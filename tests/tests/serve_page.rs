//! The page at `/` in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/sysdeps.sh`) loads `/?sample`, which submits the server's in-memory sample
//! photo exactly as a dropped file; the rendered page must show the class the CLI gives
//! and the attention montage. Without Chromium the test says by name that it was skipped.

use std::path::Path;
use std::process::Command;

use dino_core::heatmap::colour;
use dino_tests::runtime::{dino_run, json};
use dino_tests::serve::{Server, model_and_gallery};
use dino_tests::{data_dir, output_ok, s, scratch};

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Headless Chromium on `url` with a fresh profile in `dir`; `mode` is `--dump-dom` or
/// `--screenshot=PATH`. The virtual time budget lets the page's fetches finish first.
fn browse(browser: &str, dir: &Path, url: &str, mode: &str) -> String {
    let profile = dir.join(format!("profile-{}", mode.len()));
    let mut c = Command::new("timeout");
    c.args(["120", browser])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,800",
            "--virtual-time-budget=20000",
        ])
        .arg(format!("--user-data-dir={}", s(&profile)))
        .arg(mode)
        .arg(url);
    let out = output_ok(&mut c, "headless chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn page_shows_class_and_attention_in_headless_chromium() {
    let Some(browser) = chromium() else {
        eprintln!("page_shows_class_and_attention_in_headless_chromium: SKIPPED (no chromium)");
        return;
    };
    let dir = scratch("serve-page");
    let (model, gallery) = model_and_gallery(&dir, "0");
    let photo = data_dir().join("photos/chelsea.png");
    let mut c = dino_run(&dir);
    c.args(["classify", "--json", "--model"])
        .arg(&model)
        .arg("--gallery")
        .arg(&gallery)
        .arg(&photo);
    let want = json(&output_ok(&mut c, "dino-run classify"));
    let class = want[0]["top"][0]["class"].as_str().unwrap().to_string();

    let srv = Server::start(
        &dir,
        &[],
        &[
            "--model",
            &s(&model),
            "--gallery",
            &s(&gallery),
            "--page-sample",
            &s(&photo),
        ],
    );
    let url = format!("http://{}/?sample", srv.addr);
    let dom = browse(browser, &dir, &url, "--dump-dom");
    assert!(
        dom.contains(&format!("<div id=\"class\">{class}</div>")),
        "class {class} not shown:\n{dom}"
    );
    assert!(
        dom.contains("<div id=\"error\"></div>"),
        "the page shows an error:\n{dom}"
    );
    assert!(dom.contains("src=\"blob:"), "no attention image:\n{dom}");

    let shot = dir.join("page.png");
    browse(browser, &dir, &url, &format!("--screenshot={}", s(&shot)));
    let img = dino_core::image_io::load_rgb(&shot).unwrap();
    // The montage's heatmaps reach the top of the colour map (each map's maximum).
    let top = colour(1.0);
    let hot = img.pixels().filter(|p| **p == top).count();
    eprintln!(
        "screenshot {} ({}x{}): {hot} pixels of the colour map's top",
        shot.display(),
        img.width(),
        img.height()
    );
    assert!(
        hot >= 4 * 16 * 16,
        "no attention heatmaps in the screenshot ({hot} pixels)"
    );
    drop(srv);
    std::fs::remove_dir_all(&dir).ok();
}
