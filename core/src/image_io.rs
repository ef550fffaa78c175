//! Image decoding shared by training, evaluation and the runtime.
//!
//! Every format the `image` crate decodes (JPEG, PNG, WebP) becomes 8-bit RGB: grayscale is
//! replicated, alpha is dropped (as PIL's `convert("RGB")` does), 16-bit is scaled down.

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

/// Decodes in-memory bytes (format guessed from content); `path` is only for messages.
///
/// One policy for every tool, Pillow's: a damaged file is an error, never a partly grey
/// image. The `image` JPEG decoder pads a truncated scan instead of failing, so a JPEG
/// must also end with its end-of-image marker (up to 4 KiB of trailing data allowed).
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage, CoreError> {
    let bad = |why: String| CoreError::Image {
        path: path.to_path_buf(),
        why,
    };
    let img =
        image::load_from_memory(bytes).map_err(|e| bad(format!("cannot decode image: {e}")))?;
    // In entropy-coded data 0xFF is always stuffed, so 0xFF 0xD9 near the end is the EOI.
    if bytes.starts_with(&[0xFF, 0xD8])
        && !bytes.windows(2).rev().take(4096).any(|w| w == [0xFF, 0xD9])
    {
        return Err(bad("truncated JPEG (no end-of-image marker)".into()));
    }
    Ok(img.to_rgb8())
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
