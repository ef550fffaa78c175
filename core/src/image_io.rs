//! Image decoding shared by training, evaluation and the runtime.
//!
//! Every format becomes 8-bit RGB as PIL's `convert("RGB")` makes it: grayscale is
//! replicated, alpha is dropped, 16-bit is scaled down. JPEGs are decoded by libjpeg-turbo's
//! decoder (as built into the `mozjpeg` crate, from source, no system library), the decoder
//! Pillow uses, with its defaults (integer DCT, fancy upsampling): decoded pixels are
//! identical to Pillow's (tested on the shared photos, CIFAR and Imagenette JPEGs).
//! CMYK JPEGs, which libjpeg does not convert, and the other formats go through the
//! `image` crate.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::CoreError;

/// File extensions treated as images when scanning folders.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// Decodes `path` to RGB8, with an error naming the file and the reason.
pub fn load_rgb(path: &Path) -> Result<RgbImage, CoreError> {
    let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
    decode_rgb(&bytes, path)
}

/// Largest decoded image accepted, in bytes of RGB (the `image` crate's default limit):
/// a JPEG header may claim 65,535 x 65,535 pixels (12 GiB) in a few hundred bytes.
pub const MAX_DECODED_BYTES: usize = 512 << 20;

/// Decodes in-memory bytes (format guessed from content); `path` is only for messages.
///
/// One policy for every tool, Pillow's: a damaged file is an error, never a partly grey
/// image. JPEG decoders pad a truncated scan instead of failing, so a JPEG must also end
/// with its end-of-image marker (up to 4 KiB of trailing data allowed).
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage, CoreError> {
    let bad = |why: String| CoreError::Image {
        path: path.to_path_buf(),
        why,
    };
    if bytes.starts_with(&[0xFF, 0xD8]) {
        // In entropy-coded data 0xFF is always stuffed, so 0xFF 0xD9 near the end is the EOI.
        if !bytes.windows(2).rev().take(4096).any(|w| w == [0xFF, 0xD9]) {
            return Err(bad("truncated JPEG (no end-of-image marker)".into()));
        }
        if let Some(img) =
            decode_jpeg(bytes).map_err(|why| bad(format!("cannot decode JPEG: {why}")))?
        {
            return Ok(img);
        }
    }
    let img =
        image::load_from_memory(bytes).map_err(|e| bad(format!("cannot decode image: {e}")))?;
    Ok(img.to_rgb8())
}

/// libjpeg-turbo's decode to RGB, or `None` for colour spaces it does not convert (CMYK,
/// YCCK). libjpeg reports errors by unwinding, which is caught here and becomes the message.
fn decode_jpeg(bytes: &[u8]) -> Result<Option<RgbImage>, String> {
    use mozjpeg::ColorSpace;
    let run = || -> std::io::Result<Option<RgbImage>> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        if matches!(d.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK) {
            return Ok(None);
        }
        let (w, h) = d.size();
        if w.checked_mul(h)
            .and_then(|n| n.checked_mul(3))
            .is_none_or(|n| n > MAX_DECODED_BYTES)
        {
            return Err(std::io::Error::other(format!(
                "{w} x {h} pixels exceed the decoding limit of {} MiB",
                MAX_DECODED_BYTES >> 20
            )));
        }
        let mut started = d.rgb()?;
        let data: Vec<u8> = started.read_scanlines()?;
        started.finish()?;
        let (w, h) = (u32::try_from(w), u32::try_from(h));
        match (w, h) {
            (Ok(w), Ok(h)) => Ok(RgbImage::from_raw(w, h, data)),
            _ => Ok(None),
        }
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(Some(img))) => Ok(Some(img)),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => Err(e.to_string()),
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg error".into())),
    }
}

pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// An ImageFolder: `root/<class>/<file>`, classes and files in sorted order (as torchvision).
#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    /// `(path, class index)`; every file under a class folder, image extension or not, so
    /// that unreadable ones are reported and counted rather than silently ignored.
    pub samples: Vec<(PathBuf, usize)>,
}

impl ImageFolder {
    pub fn scan(root: &Path) -> Result<Self, CoreError> {
        let entries = |dir: &Path| -> Result<Vec<PathBuf>, CoreError> {
            let mut v = std::fs::read_dir(dir)
                .map_err(|e| CoreError::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect::<Vec<_>>();
            v.sort();
            Ok(v)
        };
        let mut classes = Vec::new();
        let mut samples = Vec::new();
        for dir in entries(root)?.into_iter().filter(|p| p.is_dir()) {
            let idx = classes.len();
            classes.push(
                dir.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
            for f in entries(&dir)?.into_iter().filter(|p| p.is_file()) {
                samples.push((f, idx));
            }
        }
        if samples.is_empty() {
            return Err(CoreError::Image {
                path: root.to_path_buf(),
                why: "no images found: expected an ImageFolder, <root>/<class>/<image files>"
                    .into(),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            classes,
            samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_jpegs_are_refused_whole_ones_decode() {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let mut jpeg = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        let p = Path::new("x.jpg");
        assert_eq!(decode_rgb(&jpeg, p).unwrap().dimensions(), (64, 48));
        let e = decode_rgb(&jpeg[..jpeg.len() * 7 / 10], p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.jpg") && e.contains("truncated JPEG"), "{e}");
    }
}
