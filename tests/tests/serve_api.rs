//! `dino-run serve` over real HTTP on loopback: every endpoint answers what the CLI
//! answers for the same images (bit for bit), 32 concurrent clients are all answered
//! correctly, and bad requests get 4xx JSON errors while the server keeps serving.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dino_tests::http::{self, Response};
use dino_tests::runtime::{dino_run, json};
use dino_tests::serve::{Server, model_and_gallery};
use dino_tests::{output_ok, photos, s, scratch};
use serde_json::Value;

struct Fixture {
    dir: PathBuf,
    model: PathBuf,
    gallery: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = scratch("serve-api");
        let (model, gallery) = model_and_gallery(&dir, "0");
        Fixture {
            dir,
            model,
            gallery,
        }
    })
}

fn start(extra: &[&str]) -> Server {
    let f = fixture();
    let mut args = vec!["--model", f.model.to_str().unwrap()];
    args.extend(["--gallery", f.gallery.to_str().unwrap()]);
    args.extend(extra);
    Server::start(&f.dir, &["--threads", "2"], &args)
}

/// `dino-run <cmd> --json` on `images` with the fixture's model (and gallery).
fn cli(cmd: &str, extra: &[&str], images: &[PathBuf]) -> Value {
    let f = fixture();
    let mut c = dino_run(&f.dir);
    c.args(["--threads", "2", cmd, "--json", "--model"])
        .arg(&f.model);
    if cmd != "embed" {
        c.arg("--gallery").arg(&f.gallery);
    }
    c.args(extra).args(images);
    json(&output_ok(&mut c, "dino-run"))
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// POSTs every photo as one multipart request.
fn post_photos(srv: &Server, path: &str) -> Response {
    let files: Vec<(String, Vec<u8>)> = photos()
        .iter()
        .map(|p| (file_name(p), std::fs::read(p).unwrap()))
        .collect();
    let parts: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
    let (ct, body) = http::multipart(&parts);
    let r = http::request(srv.addr, "POST", path, &[("Content-Type", &ct)], &body).unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r
}

/// The server's items equal the CLI's but for `image` (a part name, not a path).
fn assert_same_items(server: &Value, cli: &Value, key: &str) {
    let (a, b) = (server.as_array().unwrap(), cli.as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        let name = file_name(Path::new(y["image"].as_str().unwrap()));
        assert_eq!(x["image"].as_str().unwrap(), name);
        assert_eq!(x[key], y[key], "{key} of {name} differs from the CLI's");
    }
}

#[test]
fn every_endpoint_equals_the_cli() {
    let srv = start(&[]);
    let images = photos();
    let r = post_photos(&srv, "/v1/embed");
    assert_same_items(&r.json(), &cli("embed", &[], &images), "embedding");
    let r = post_photos(&srv, "/v1/embed?raw");
    assert_same_items(&r.json(), &cli("embed", &["--raw"], &images), "embedding");
    let r = post_photos(&srv, "/v1/classify?k=10&temperature=0.1&topk=3");
    let want = cli(
        "classify",
        &["--k", "10", "--temperature", "0.1", "--topk", "3"],
        &images,
    );
    assert_same_items(&r.json(), &want, "top");
    let r = post_photos(&srv, "/v1/search?topk=4");
    let want = cli("search", &["--topk", "4"], &images);
    assert_same_items(&r.json(), &want, "neighbours");
    assert_eq!(r.json()[0]["neighbours"].as_array().unwrap().len(), 4);

    // Attention: the same PNG bytes as `dino-run attention`, raw body this time.
    let f = fixture();
    for p in &images[..2] {
        let r = http::post(srv.addr, "/v1/attention", &std::fs::read(p).unwrap()).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("image/png"));
        let out = f.dir.join("attn.png");
        let mut c = dino_run(&f.dir);
        c.args(["attention", "--model"])
            .arg(&f.model)
            .arg(p)
            .arg("--out")
            .arg(&out);
        output_ok(&mut c, "dino-run attention");
        assert!(
            r.body == std::fs::read(&out).unwrap(),
            "{}: PNG differs",
            s(p)
        );
    }

    let h = http::get(srv.addr, "/healthz").unwrap();
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));
    let ready = http::get(srv.addr, "/readyz").unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["gallery_rows"], 200);
    let page = http::get(srv.addr, "/").unwrap();
    assert!(page.text().contains("/v1/classify"), "{}", page.text());
    let m = http::get(srv.addr, "/metrics").unwrap().text();
    for series in [
        "dino_requests_total{route=\"/v1/embed\",status=\"200\"} 2",
        "dino_request_seconds_bucket{route=\"/v1/search\",le=\"+Inf\"} 1",
        "dino_batch_size_count",
        "dino_queue_depth 0",
        "dino_images_total",
    ] {
        assert!(m.contains(series), "/metrics lacks {series}:\n{m}");
    }
}

#[test]
fn thirty_two_concurrent_clients_are_all_answered_correctly() {
    let images = photos();
    let want = cli("embed", &[], &images);
    let srv = start(&["--max-batch", "16", "--max-wait-ms", "20"]);
    let bytes: Vec<Vec<u8>> = images.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let t = std::time::Instant::now();
    std::thread::scope(|scope| {
        for c in 0..32 {
            let (bytes, want, addr) = (&bytes, &want, srv.addr);
            scope.spawn(move || {
                // 4 requests per client: 128 in all, each bounded by the client's timeout.
                for r in 0..4 {
                    let i = (c + r) % bytes.len();
                    let resp = http::post(addr, "/v1/embed", &bytes[i]).unwrap();
                    assert_eq!(resp.status, 200, "{}", resp.text());
                    assert_eq!(resp.json()[0]["embedding"], want[i]["embedding"]);
                }
            });
        }
    });
    eprintln!("128 requests of 32 clients in {:?}", t.elapsed());
    let m = http::get(srv.addr, "/metrics").unwrap().text();
    assert!(m.contains("dino_images_total 128"), "{m}");
    // Concurrent requests were batched: fewer batches than images.
    let batches: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("dino_batch_size_count "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!("{batches} batches for 128 images");
    assert!(batches < 128, "no batching: {batches} batches");
}

/// A PNG claiming `w` x `h` pixels (IHDR, an empty IDAT, IEND): tiny, but a decoder that
/// trusted it would allocate `3 * w * h` bytes.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut c = !0u32;
        for &byte in &out[start..] {
            c ^= u32::from(byte);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        out.extend_from_slice(&(!c).to_be_bytes());
    }
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut b, b"IHDR", &ihdr);
    chunk(&mut b, b"IDAT", &[]);
    chunk(&mut b, b"IEND", &[]);
    b
}

/// What is sent, to which path, with which headers and body, and the status expected.
type BadCase<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16);

#[test]
fn bad_requests_get_json_errors_and_the_server_keeps_serving() {
    let srv = start(&["--max-body", "2000000", "--max-pixels", "1000000"]);
    let good = std::fs::read(&photos()[0]).unwrap();
    let (ct, mp) = http::multipart(&[("a.png", &good)]);
    let bad_mp = mp[..mp.len() / 2].to_vec();
    let truncated_png = good[..good.len() / 3].to_vec();
    let huge = vec![0u8; 3_000_000];
    let cases: Vec<BadCase> = vec![
        (
            "non-image",
            "/v1/embed",
            vec![],
            b"hello, not an image".to_vec(),
            422,
        ),
        ("empty", "/v1/embed", vec![], vec![], 400),
        ("truncated png", "/v1/classify", vec![], truncated_png, 422),
        ("huge body", "/v1/embed", vec![], huge, 413),
        (
            "huge image",
            "/v1/embed",
            vec![],
            png_header(40_000, 40_000),
            413,
        ),
        (
            "malformed multipart",
            "/v1/embed",
            vec![("Content-Type", ct.as_str())],
            bad_mp,
            400,
        ),
        ("bad k", "/v1/classify?k=0", vec![], good.clone(), 400),
        (
            "bad threshold",
            "/v1/attention?threshold=2",
            vec![],
            good.clone(),
            400,
        ),
        ("unknown route", "/v1/nothing", vec![], good.clone(), 404),
    ];
    for (what, path, headers, body, status) in cases {
        let r = http::request(srv.addr, "POST", path, &headers, &body).unwrap();
        assert_eq!(r.status, status, "{what}: {}", r.text());
        let e = r.json();
        assert!(
            e["error"]["code"].is_string() && e["error"]["message"].is_string(),
            "{what}: {e}"
        );
        eprintln!("{what}: {status} {}", e["error"]);
        // Still serving.
        let ok = http::post(srv.addr, "/v1/embed", &good).unwrap();
        assert_eq!(ok.status, 200, "after {what}: {}", ok.text());
    }
    // A body cut off mid-way by the client.
    {
        use std::io::Write;
        let mut sock = std::net::TcpStream::connect(srv.addr).unwrap();
        let head = format!(
            "POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            good.len()
        );
        sock.write_all(head.as_bytes()).unwrap();
        sock.write_all(&good[..100]).unwrap();
    }
    let m = http::get(srv.addr, "/metrics").unwrap().text();
    assert!(m.contains("status=\"413\"} 2"), "{m}");
    assert_eq!(http::get(srv.addr, "/healthz").unwrap().status, 200);
}

#[test]
fn token_file_guards_the_api() {
    let f = fixture();
    let token = f.dir.join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let srv = start(&["--token-file", token.to_str().unwrap()]);
    let good = std::fs::read(&photos()[0]).unwrap();
    let r = http::post(srv.addr, "/v1/embed", &good).unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    let wrong = [("Authorization", "Bearer s3cret-tokeX")];
    assert_eq!(
        http::request(srv.addr, "POST", "/v1/embed", &wrong, &good)
            .unwrap()
            .status,
        401
    );
    assert_eq!(http::get(srv.addr, "/metrics").unwrap().status, 401);
    let auth = [("Authorization", "Bearer s3cret-token")];
    let r = http::request(srv.addr, "POST", "/v1/embed", &auth, &good).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Liveness and the page stay open.
    assert_eq!(http::get(srv.addr, "/healthz").unwrap().status, 200);
    assert_eq!(http::get(srv.addr, "/").unwrap().status, 200);
}

#[test]
fn search_needs_a_gallery_with_paths() {
    let f = fixture();
    // Without a gallery, classify and search say so.
    let srv = Server::start(&f.dir, &[], &["--model", f.model.to_str().unwrap()]);
    let good = std::fs::read(&photos()[0]).unwrap();
    for path in ["/v1/classify", "/v1/search"] {
        let r = http::post(srv.addr, path, &good).unwrap();
        assert_eq!(r.status, 409, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "no_gallery");
    }
}

#[test]
fn requests_past_the_time_limit_get_504_and_the_server_keeps_serving() {
    // 1 ms: decoding a photo alone takes longer.
    let srv = start(&["--timeout-ms", "1"]);
    let photo = std::fs::read(&photos()[0]).unwrap();
    let r = http::post(srv.addr, "/v1/embed", &photo).unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "timeout");
    assert_eq!(http::get(srv.addr, "/healthz").unwrap().status, 200);
    assert_eq!(http::get(srv.addr, "/readyz").unwrap().status, 200);
}

#[test]
fn classify_with_an_unlabelled_gallery_is_409_and_search_answers() {
    let f = fixture();
    let dir = f.dir.join("unlabelled");
    let flat = dir.join("photos");
    std::fs::create_dir_all(&flat).unwrap();
    // A folder of images with no class folders: a gallery of no classes.
    for p in photos() {
        std::fs::copy(&p, flat.join(file_name(&p))).unwrap();
    }
    let gallery = dir.join("u.dgal");
    output_ok(
        dino_run(&dir)
            .args(["index", "--model"])
            .arg(&f.model)
            .arg("--images")
            .arg(&flat)
            .arg("--out")
            .arg(&gallery),
        "dino-run index",
    );
    let srv = Server::start(
        &dir,
        &[],
        &["--model", &s(&f.model), "--gallery", &s(&gallery)],
    );
    let good = std::fs::read(&photos()[0]).unwrap();
    let r = http::post(srv.addr, "/v1/classify", &good).unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unlabelled_gallery");
    let r = http::post(srv.addr, "/v1/search", &good).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Its nearest image is itself.
    let text = r.text();
    assert!(text.contains(&file_name(&photos()[0])), "{text}");
}
