//! `dino-run serve` under load and signals, on loopback: overload is refused with 503 and
//! Retry-After at flat memory, SIGTERM lets in-flight requests finish and refuses new
//! ones, SIGHUP swaps the model and gallery under load without a failed request. Every
//! loop is bounded in count and time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dino_tests::http;
use dino_tests::runtime::{dino_run, json};
use dino_tests::serve::{Server, model_and_gallery};
use dino_tests::{output_ok, photos, scratch};
use serde_json::Value;

fn embeddings(dir: &Path, model: &Path) -> Vec<Value> {
    let mut c = dino_run(dir);
    c.args(["embed", "--json", "--model"])
        .arg(model)
        .args(photos());
    let v = json(&output_ok(&mut c, "dino-run embed"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["embedding"].clone())
        .collect()
}

fn photo_bytes() -> Vec<Vec<u8>> {
    photos().iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn metric(srv: &Server, name: &str) -> f64 {
    let m = http::get(srv.addr, "/metrics").unwrap().text();
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("/metrics lacks {name}:\n{m}"))
}

/// Polls `cond` every 20 ms for at most `limit`.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn overload_gets_503_with_retry_after_at_flat_memory() {
    let dir = scratch("serve-overload");
    let (model, _) = model_and_gallery(&dir, "0");
    let want = embeddings(&dir, &model);
    let srv = Server::start(
        &dir,
        &["--threads", "2"],
        &[
            "--model",
            model.to_str().unwrap(),
            "--max-queue",
            "8",
            "--max-inflight",
            "12",
            "--max-batch",
            "8",
        ],
    );
    let bytes = photo_bytes();
    let parts: Vec<(&str, &[u8])> = bytes[..4].iter().map(|b| ("p", &b[..])).collect();
    let (ct, body) = http::multipart(&parts);
    let mut rss = Vec::new();
    let (mut ok, mut refused) = (0, 0);
    for _wave in 0..3 {
        // 48 clients x 6 requests of 4 images, each client stopping after 60 s at most.
        let results: Vec<(u16, Value, Option<String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..48)
                .map(|_| {
                    let (ct, body, addr) = (&ct, &body, srv.addr);
                    scope.spawn(move || {
                        let t = Instant::now();
                        let mut out = Vec::new();
                        for _ in 0..6 {
                            if t.elapsed() > Duration::from_secs(60) {
                                break;
                            }
                            let h = [("Content-Type", ct.as_str())];
                            let r = http::request(addr, "POST", "/v1/embed", &h, body).unwrap();
                            let retry = r.header("retry-after").map(String::from);
                            out.push((r.status, r.json(), retry));
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        for (status, v, retry) in results {
            match status {
                200 => {
                    for (i, item) in v.as_array().unwrap().iter().enumerate() {
                        assert_eq!(item["embedding"], want[i]);
                    }
                    ok += 1;
                }
                503 => {
                    assert_eq!(v["error"]["code"], "overloaded", "{v}");
                    assert_eq!(retry.as_deref(), Some("1"));
                    refused += 1;
                }
                s => panic!("status {s}: {v}"),
            }
        }
        rss.push(srv.rss_kib());
    }
    eprintln!("{ok} answered, {refused} refused with 503; RSS after each wave (KiB): {rss:?}");
    assert!(ok > 0 && refused > 0, "{ok} answered, {refused} refused");
    // Flat: the later waves hold no more than the first (allocator noise aside).
    let growth = rss[2].saturating_sub(rss[0]);
    assert!(growth < 32 * 1024, "RSS grew by {growth} KiB: {rss:?}");
    assert_eq!(metric(&srv, "dino_queue_depth"), 0.0);
    drop(srv);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sigterm_drains_in_flight_requests_and_refuses_new_ones() {
    let dir = scratch("serve-drain");
    let (model, _) = model_and_gallery(&dir, "0");
    let want = embeddings(&dir, &model);
    let mut srv = Server::start(&dir, &[], &["--model", model.to_str().unwrap()]);
    let image = &photo_bytes()[2];
    // 6 requests whose bodies are half sent: in flight when SIGTERM comes.
    let mut socks: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(srv.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let head = format!(
                "POST /v1/embed HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                image.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&image[..image.len() / 2]).unwrap();
            s
        })
        .collect();
    wait_for(Duration::from_secs(10), "6 requests in flight", || {
        metric(&srv, "dino_inflight_requests") == 6.0
    });
    srv.signal("TERM");
    wait_for(Duration::from_secs(10), "the listener to close", || {
        TcpStream::connect(srv.addr).is_err()
    });
    for s in &mut socks {
        s.write_all(&image[image.len() / 2..]).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let r = http::parse(&raw).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()[0]["embedding"], want[2]);
    }
    let status = srv.wait(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    assert!(srv.logged("draining"));
    drop(srv);
    std::fs::remove_dir_all(&dir).ok();
}

/// Replaces `to` by a copy of `from` in one rename.
fn swap_in(from: &Path, to: &Path) {
    let tmp: PathBuf = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn sighup_swaps_model_and_gallery_under_load_without_a_failed_request() {
    let dir = scratch("serve-reload");
    let (model_a, gallery_a) = model_and_gallery(&dir, "0");
    let (model_b, gallery_b) = model_and_gallery(&dir, "1");
    let (want_a, want_b) = (embeddings(&dir, &model_a), embeddings(&dir, &model_b));
    assert_ne!(want_a[0], want_b[0]);
    let (model, gallery) = (dir.join("serving.onnx"), dir.join("serving.dgal"));
    swap_in(&model_a, &model);
    swap_in(&gallery_a, &gallery);
    let srv = Server::start(
        &dir,
        &["--threads", "2"],
        &[
            "--model",
            model.to_str().unwrap(),
            "--gallery",
            gallery.to_str().unwrap(),
        ],
    );
    let bytes = photo_bytes();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (seen_a, seen_b) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let (bytes, want_a, want_b, stop, addr) =
                    (&bytes, &want_a, &want_b, &stop, srv.addr);
                scope.spawn(move || {
                    let (mut a, mut b) = (0, 0);
                    let t = Instant::now();
                    // At most 400 requests or 90 s per client.
                    for n in 0..400 {
                        if stop.load(std::sync::atomic::Ordering::SeqCst)
                            || t.elapsed() > Duration::from_secs(90)
                        {
                            break;
                        }
                        let i = (c + n) % bytes.len();
                        let r = http::post(addr, "/v1/classify", &bytes[i]).unwrap();
                        assert_eq!(r.status, 200, "{}", r.text());
                        let r = http::post(addr, "/v1/embed", &bytes[i]).unwrap();
                        assert_eq!(r.status, 200, "{}", r.text());
                        let e = &r.json()[0]["embedding"];
                        if *e == want_a[i] {
                            a += 1;
                        } else {
                            assert_eq!(*e, want_b[i], "neither model's embedding");
                            b += 1;
                        }
                    }
                    (a, b)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        swap_in(&model_b, &model);
        swap_in(&gallery_b, &gallery);
        srv.signal("HUP");
        wait_for(Duration::from_secs(60), "the reload", || {
            http::get(srv.addr, "/readyz").unwrap().json()["generation"] == 1
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        clients
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |x, y| (x.0 + y.0, x.1 + y.1))
    });
    eprintln!("{seen_a} answers of the old model, {seen_b} of the new one, none failed");
    assert!(seen_a > 0 && seen_b > 0);
    assert_eq!(metric(&srv, "dino_reloads_total"), 1.0);
    // After the reload, classification uses the new gallery: as the CLI with model B.
    let photo = &photos()[0];
    let mut c = dino_run(&dir);
    c.args(["classify", "--json", "--model"])
        .arg(&model_b)
        .arg("--gallery")
        .arg(&gallery_b)
        .arg(photo);
    let cli = json(&output_ok(&mut c, "dino-run classify"));
    let r = http::post(srv.addr, "/v1/classify", &bytes[0]).unwrap();
    assert_eq!(r.json()[0]["top"], cli[0]["top"]);
    drop(srv);
    std::fs::remove_dir_all(&dir).ok();
}
