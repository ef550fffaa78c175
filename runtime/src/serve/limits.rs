//! Reading requests within limits: body size (413), images per request, pixels per image
//! (413, from the header before decoding), query parameters and the bearer token. Images
//! come as the raw body (one) or as multipart parts (several); nothing is ever read from a
//! path named by a request.

use std::io::Cursor;
use std::str::FromStr;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{HeaderMap, StatusCode, header};
use image::RgbImage;

use super::reply::ApiError;
use super::state::App;
use crate::pipeline::prepare;

/// One uploaded image: its name (multipart file or field name, else `image`) and bytes.
pub struct Upload {
    pub name: String,
    pub bytes: Bytes,
}

fn too_large(what: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", what)
}

/// The request's body, at most `max_body` bytes.
async fn read_body(
    app: &App,
    req: Request,
) -> Result<(axum::http::request::Parts, Bytes), ApiError> {
    let max = app.opts.max_body;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(format!("the body exceeds {max} bytes")));
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
        let why = e.to_string();
        if why.contains("length limit") {
            too_large(format!("the body exceeds {max} bytes"))
        } else {
            ApiError::bad_request(format!("cannot read the body: {why}"))
        }
    })?;
    Ok((parts, bytes))
}

/// The images of a request: the parts of a `multipart/form-data` body, else the body.
pub async fn read_images(app: &App, req: Request) -> Result<Vec<Upload>, ApiError> {
    let (parts, bytes) = read_body(app, req).await?;
    let multipart = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let uploads = if multipart {
        let bad = |e: axum::extract::multipart::MultipartError| {
            ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
        };
        let req = Request::from_parts(parts, Body::from(bytes));
        let mut m = Multipart::from_request(req, &()).await.map_err(|e| {
            ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
        })?;
        let mut v = Vec::new();
        while let Some(field) = m.next_field().await.map_err(bad)? {
            let name = field
                .file_name()
                .or(field.name())
                .unwrap_or("image")
                .to_string();
            v.push(Upload {
                name,
                bytes: field.bytes().await.map_err(bad)?,
            });
        }
        v
    } else {
        vec![Upload {
            name: "image".into(),
            bytes,
        }]
    };
    if uploads.is_empty() || uploads.iter().any(|u| u.bytes.is_empty()) {
        return Err(ApiError::bad_request(
            "no image: the body or a part is empty",
        ));
    }
    if uploads.len() > app.opts.max_batch.max(app.opts.max_queue) {
        return Err(too_large(format!(
            "{} images in one request",
            uploads.len()
        )));
    }
    Ok(uploads)
}

/// Decodes one upload (pixels checked from its header first) and preprocesses it as the
/// CLI does: the eval crop and the model's input tensor.
pub fn decode(
    u: &Upload,
    eval: &dino_core::EvalTransform,
    max_pixels: u64,
) -> Result<(RgbImage, Vec<f32>), ApiError> {
    let bad = |why: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_image",
            format!("{}: {why}", u.name),
        )
    };
    let (w, h) = image::ImageReader::new(Cursor::new(&u.bytes[..]))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?
        .into_dimensions()
        .map_err(|e| bad(format!("not a readable image ({e})")))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(too_large(format!(
            "{}: {w}x{h} pixels, more than the {max_pixels} allowed",
            u.name
        )));
    }
    let img = dino_core::image_io::decode_rgb(&u.bytes, std::path::Path::new(&u.name))
        .map_err(|e| bad(e.to_string()))?;
    Ok(prepare(&img, eval))
}

/// The query string's `key=value` pairs.
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(query: Option<&str>) -> Self {
        Self(
            query
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (p.to_string(), "true".to_string()),
                })
                .collect(),
        )
    }

    /// The value of `key`, or `default`; a 400 naming the key when it does not parse.
    pub fn get<T: FromStr>(&self, key: &str, default: T) -> Result<T, ApiError> {
        match self.0.iter().rev().find(|(k, _)| k == key) {
            Some((_, v)) => v.parse().map_err(|_| {
                ApiError::bad_request(format!("query parameter `{key}`: cannot parse `{v}`"))
            }),
            None => Ok(default),
        }
    }
}

/// Whether the request carries the bearer token (always, when none is configured).
pub fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let Some(token) = &app.opts.token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare every byte, so the time taken does not tell how much of a guess was right.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}
