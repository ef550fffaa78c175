//! The page at `/`: plain HTML and JavaScript compiled into the binary (no build step).
//! `/?sample` makes it submit the image given with `--page-sample`, which the server holds
//! in memory, as if it had been dropped on the page (how a headless browser drives it).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::reply::ApiError;
use super::state::App;

type AppState = State<std::sync::Arc<App>>;

const INDEX: &str = include_str!("page/index.html");

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

pub async fn sample(State(app): AppState) -> Response {
    match &app.opts.page_sample {
        Some(b) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            b.clone(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no_sample",
            "started without --page-sample",
        )
        .into_response(),
    }
}
