//! The HTTP routes, their guards (token, in-flight limit, timeout, metrics) and the
//! listening loop with its signals.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dino_core::knn::l2_normalize_rows;
use dino_core::onnx_meta::OUTPUT_ATTENTION;
use image::RgbImage;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use super::ServeError;
use super::batch::{Inferred, Job, Refused, Want};
use super::limits::{Params, Upload, authorized, decode, read_images};
use super::metrics::Gauges;
use super::page;
use super::reply::ApiError;
use super::state::{App, Loaded};
use crate::attention::{DEFAULT_THRESHOLD, check_threshold, montage_png};
use crate::knn_answer::{ClassSource, KnnParams, nearest_images};

type AppState = State<Arc<App>>;

/// Listens on `opts.bind` until SIGTERM or Ctrl-C, then lets in-flight requests finish.
pub async fn serve(app: Arc<App>) -> Result<(), ServeError> {
    let addr = app.opts.bind;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Start)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServeError::Start)?;
    let reloader = app.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reloader.reload().await {
                Ok(g) => eprintln!("dino-run serve: reloaded the model (generation {g})"),
                Err(e) => eprintln!("dino-run serve: reload failed, serving the old model: {e}"),
            }
        }
    });
    let loaded = app.current();
    eprintln!(
        "dino-run serve: listening on http://{local} (model {}, {})",
        loaded.info.path.display(),
        match (&loaded.gallery, &loaded.info.linear) {
            (Some(g), _) => format!("gallery of {} images", g.header.rows),
            (None, Some(c)) => format!("no gallery, linear probe of {} classes", c.num_classes()),
            (None, None) => "no gallery".into(),
        }
    );
    drop(loaded);
    let drain = app.clone();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        drain.draining.store(true, Ordering::SeqCst);
        eprintln!("dino-run serve: draining in-flight requests, then exiting");
    };
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve)
}

fn router(app: Arc<App>) -> Router {
    let guarded = Router::new()
        .route("/v1/embed", post(embed))
        .route("/v1/classify", post(classify))
        .route("/v1/search", post(search))
        .route("/v1/attention", post(attention))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), guard));
    Router::new()
        .merge(guarded)
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/", get(page::index))
        .route("/sample", get(page::sample))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(app.clone(), record))
        // Bodies are read under `--max-body` by `limits`, multipart ones included.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

/// Counts every request by route and status, with its latency.
async fn record(State(app): AppState, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |m| m.as_str())
        .to_string();
    let t = Instant::now();
    let r = next.run(req).await;
    app.metrics
        .request(&route, r.status().as_u16(), t.elapsed().as_secs_f64());
    r
}

/// The token, then (for /v1/*) a permit among `max_inflight` and the time limit.
async fn guard(State(app): AppState, req: Request, next: Next) -> Response {
    if !authorized(&app, req.headers()) {
        let e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        );
        let mut r = e.into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let Ok(_permit) = app.inflight.clone().try_acquire_owned() else {
        return ApiError::overloaded(format!("{} requests in flight", app.opts.max_inflight))
            .into_response();
    };
    match tokio::time::timeout(app.opts.timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("not answered within {} ms", app.opts.timeout.as_millis()),
        )
        .into_response(),
    }
}

async fn readyz(State(app): AppState) -> Response {
    if app.is_draining() {
        let body = json!({"status": "draining"});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let l = app.current();
    axum::Json(json!({
        "status": "ready",
        "generation": l.generation,
        "fingerprint": l.info.fingerprint,
        "gallery_rows": l.gallery.as_ref().map(|g| g.header.rows),
    }))
    .into_response()
}

async fn metrics(State(app): AppState) -> Response {
    let g = Gauges {
        queue_depth: app.queue.depth(),
        inflight: app.opts.max_inflight - app.inflight.available_permits(),
        generation: app.current().generation,
    };
    let ct = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, ct)], app.metrics.render(&g)).into_response()
}

/// One image after the model: its name, eval crop and outputs.
struct Done {
    name: String,
    crop: RgbImage,
    out: Inferred,
}

fn internal(why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        why.to_string(),
    )
}

/// Decodes the uploads on a decode thread, queues them for `loaded`'s model and waits.
async fn infer(
    app: &Arc<App>,
    loaded: &Arc<Loaded>,
    uploads: Vec<Upload>,
    want: Want,
) -> Result<Vec<Done>, ApiError> {
    let preparing = app.queue.preparing();
    let permit = app
        .decoders
        .clone()
        .acquire_owned()
        .await
        .map_err(internal)?;
    let (eval, max_pixels) = (loaded.info.eval.clone(), app.opts.max_pixels);
    let prepared = tokio::task::spawn_blocking(move || {
        uploads
            .into_iter()
            .map(|u| decode(&u, &eval, max_pixels).map(|(c, t)| (u.name, c, t)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(internal)??;
    drop(permit);
    let (mut jobs, mut waits) = (Vec::new(), Vec::new());
    for (name, crop, input) in prepared {
        let (tx, rx) = tokio::sync::oneshot::channel();
        jobs.push(Job {
            loaded: loaded.clone(),
            input,
            want,
            reply: tx,
        });
        waits.push((name, crop, rx));
    }
    app.queue.submit(jobs).map_err(|r| match r {
        Refused::Full => ApiError::overloaded(format!(
            "the queue holds {} images already",
            app.opts.max_queue
        )),
        Refused::Closed => ApiError::overloaded("the server is shutting down"),
    })?;
    drop(preparing);
    let mut done = Vec::with_capacity(waits.len());
    for (name, crop, rx) in waits {
        let out = rx
            .await
            .map_err(|_| internal("the inference thread stopped"))?
            .map_err(internal)?;
        done.push(Done { name, crop, out });
    }
    Ok(done)
}

/// Runs the request's images and answers one JSON item per image: `{"image", key: ...}`,
/// the shape of the CLI's `--json` output. `check` refuses the request or says which
/// outputs besides the embedding `each` needs.
async fn answer<T: serde::Serialize>(
    app: &Arc<App>,
    req: Request,
    key: &str,
    check: impl FnOnce(&Loaded, &Params) -> Result<Want, ApiError>,
    each: impl Fn(&Loaded, &Params, Inferred) -> Result<T, ApiError>,
) -> Result<Response, ApiError> {
    let params = Params::parse(req.uri().query());
    // The body is read first, so the client is not cut off mid-upload by an early answer.
    let uploads = read_images(app, req).await?;
    let loaded = app.current();
    let want = check(&loaded, &params)?;
    let mut items = Vec::new();
    for d in infer(app, &loaded, uploads, want).await? {
        items.push(json!({"image": d.name, key: each(&loaded, &params, d.out)?}));
    }
    Ok(axum::Json(Value::Array(items)).into_response())
}

fn normalized(mut e: Vec<f32>) -> Vec<f32> {
    let dim = e.len();
    l2_normalize_rows(&mut e, dim);
    e
}

async fn embed(State(app): AppState, req: Request) -> Result<Response, ApiError> {
    answer(
        &app,
        req,
        "embedding",
        |_, p| p.get("raw", false).map(|_| Want::default()),
        |_, p, out| {
            Ok(if p.get("raw", false)? {
                out.embedding
            } else {
                normalized(out.embedding)
            })
        },
    )
    .await
}

/// The gallery of `l`, or a 409 saying none is loaded.
fn gallery_of(l: &Loaded) -> Result<&crate::gallery::Gallery, ApiError> {
    l.gallery.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_gallery",
            "no gallery is loaded (start the server with --gallery)",
        )
    })
}

fn knn_params(p: &Params) -> Result<KnnParams, ApiError> {
    let kp = KnnParams {
        k: p.get("k", 20)?,
        temperature: p.get("temperature", 0.07)?,
    };
    kp.check().map_err(ApiError::bad_request)?;
    Ok(kp)
}

/// k-NN against the gallery when one is loaded, else the softmax of the model's `logits`
/// (a linear probe exported with the backbone); a 409 when there is neither.
async fn classify(State(app): AppState, req: Request) -> Result<Response, ApiError> {
    let check = |l: &Loaded, p: &Params| {
        p.get("topk", 5usize)?;
        match (&l.gallery, &l.info.linear) {
            (Some(g), _) if g.header.unlabelled => Err(ApiError::new(
                StatusCode::CONFLICT,
                "unlabelled_gallery",
                crate::RuntimeError::UnlabelledGallery.to_string(),
            )),
            (Some(_), _) => knn_params(p).map(|_| Want::default()),
            (None, Some(_)) => Ok(Want {
                logits: true,
                ..Want::default()
            }),
            (None, None) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "no_gallery",
                "no gallery is loaded and the model has no `logits` output (start the server \
                 with --gallery, or export the model with dino-export --linear-head)",
            )),
        }
    };
    answer(&app, req, "top", check, |l, p, out| {
        let topk = p.get("topk", 5)?;
        let top = match (&l.gallery, &l.info.linear, out.logits) {
            (Some(g), _, _) => {
                ClassSource::Knn(g, knn_params(p)?).top(&normalized(out.embedding), topk)
            }
            (None, Some(c), Some(logits)) => ClassSource::Linear(c).top(&logits, topk),
            _ => return Err(internal("no gallery and no logits")),
        };
        top.map_err(|e| internal(e.to_string()))
    })
    .await
}

async fn search(State(app): AppState, req: Request) -> Result<Response, ApiError> {
    let check = |l: &Loaded, p: &Params| {
        let g = gallery_of(l)?;
        p.get("topk", 5usize)?;
        if g.paths.is_none() {
            let why = crate::RuntimeError::NoPaths.to_string();
            return Err(ApiError::new(StatusCode::CONFLICT, "no_paths", why));
        }
        Ok(Want::default())
    };
    answer(&app, req, "neighbours", check, |l, p, out| {
        nearest_images(
            gallery_of(l)?,
            &normalized(out.embedding),
            p.get("topk", 5)?,
        )
        .map_err(|e| internal(e.to_string()))
    })
    .await
}

/// The attention montage of one image, as PNG.
async fn attention(State(app): AppState, req: Request) -> Result<Response, ApiError> {
    let params = Params::parse(req.uri().query());
    let uploads = read_images(&app, req).await?;
    let threshold: f32 = params.get("threshold", DEFAULT_THRESHOLD)?;
    check_threshold(threshold).map_err(ApiError::bad_request)?;
    let loaded = app.current();
    if !loaded.info.has_output(OUTPUT_ATTENTION) {
        let why = loaded
            .info
            .require_output(OUTPUT_ATTENTION)
            .err()
            .map(|e| e.to_string());
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_attention",
            why.unwrap_or_default(),
        ));
    }
    if uploads.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "one image per request, got {}",
            uploads.len()
        )));
    }
    let want = Want {
        attention: true,
        ..Want::default()
    };
    let d = infer(&app, &loaded, uploads, want)
        .await?
        .pop()
        .ok_or_else(|| internal("no result"))?;
    let (att, heads) = d
        .out
        .attention
        .ok_or_else(|| internal("no attention returned"))?;
    let png = montage_png(&att, heads, loaded.info.vit.patch_size, &d.crop, threshold)
        .map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}
