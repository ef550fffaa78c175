//! The images of a folder, labelled or not: training needs no labels, evaluation does.
//!
//! The rule ([`ImageSet::scan`]):
//!
//! * **labelled** (an ImageFolder, as torchvision's): the root holds no image file itself,
//!   and every image file found lies exactly one level down, in a class folder
//!   (`root/<class>/<image>`). As [`ImageFolder::scan`], every file of a class folder is a
//!   sample, image extension or not, so that unreadable files are reported and counted
//!   (class folders holding only files without an image extension count as labelled too).
//! * **unlabelled** otherwise: a flat folder of images, or images nested at any depth; every
//!   file with an image extension found recursively is a sample, without a label.
//!
//! Hidden entries (names starting with `.`) are ignored everywhere. Recursion follows
//! symbolic links but visits each real folder once (a link loop ends there) and stops at
//! [`MAX_DEPTH`] levels.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::CoreError;
use crate::image_io::{ImageFolder, has_image_extension};

/// Folder levels searched below the root of an unlabelled set.
pub const MAX_DEPTH: usize = 32;

/// How the samples of a set are labelled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Labels {
    /// An ImageFolder: each sample's label indexes these class names (sorted).
    Classes(Vec<String>),
    /// No class structure: every sample's label is `None`.
    Unlabelled {
        /// Whether images were found below the root (not only directly in it).
        nested: bool,
    },
}

/// The samples of a folder: `(path, label)`, sorted by path within each class.
#[derive(Clone, Debug)]
pub struct ImageSet {
    pub root: PathBuf,
    pub labels: Labels,
    pub samples: Vec<(PathBuf, Option<usize>)>,
}

/// The visible entries of `dir`, sorted.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, CoreError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| CoreError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Every image file below `dir` (recursively, bounded) with its depth (1: directly in
/// `root`), in sorted order.
fn walk(
    dir: &Path,
    depth: usize,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<(PathBuf, usize)>,
) -> Result<(), CoreError> {
    let real = dir.canonicalize().map_err(|e| CoreError::io(dir, e))?;
    if depth > MAX_DEPTH || !seen.insert(real) {
        return Ok(());
    }
    for p in entries(dir)? {
        if p.is_dir() {
            walk(&p, depth + 1, seen, out)?;
        } else if p.is_file() && has_image_extension(&p) {
            out.push((p, depth + 1));
        }
    }
    Ok(())
}

impl ImageSet {
    /// Scans `root` by the rule of this module; a folder without any image is an error.
    pub fn scan(root: &Path) -> Result<Self, CoreError> {
        if !root.is_dir() {
            return Err(CoreError::Image {
                path: root.to_path_buf(),
                why: "not a folder".into(),
            });
        }
        let mut found = Vec::new();
        walk(root, 0, &mut HashSet::new(), &mut found)?;
        if found.is_empty() {
            // Class folders of files none of which looks like an image: an ImageFolder whose
            // every file will be reported unreadable, rather than "no images".
            if let Ok(f) = ImageFolder::scan(root) {
                return Ok(Self::labelled(root, f));
            }
            return Err(CoreError::Image {
                path: root.to_path_buf(),
                why: format!(
                    "no images found (looked for {} files, {MAX_DEPTH} folder levels deep)",
                    crate::image_io::IMAGE_EXTENSIONS.join("/")
                ),
            });
        }
        if found.iter().all(|(_, d)| *d == 2) {
            return Ok(Self::labelled(root, ImageFolder::scan(root)?));
        }
        Ok(Self {
            root: root.to_path_buf(),
            labels: Labels::Unlabelled {
                nested: found.iter().any(|(_, d)| *d > 1),
            },
            samples: found.into_iter().map(|(p, _)| (p, None)).collect(),
        })
    }

    fn labelled(root: &Path, f: ImageFolder) -> Self {
        Self {
            root: root.to_path_buf(),
            labels: Labels::Classes(f.classes),
            samples: f.samples.into_iter().map(|(p, l)| (p, Some(l))).collect(),
        }
    }

    /// The class names of a labelled set.
    pub fn classes(&self) -> Option<&[String]> {
        match &self.labels {
            Labels::Classes(c) => Some(c),
            Labels::Unlabelled { .. } => None,
        }
    }

    /// What was found, for start-up lines (see [`Labels::describe`]).
    pub fn describe(&self) -> String {
        self.labels.describe(self.samples.len())
    }
}

impl Labels {
    /// `ImageFolder, 10 classes, 5000 images` or `unlabelled (nested folders, no class
    /// folders), 120 images`, for `n` images.
    pub fn describe(&self, n: usize) -> String {
        match self {
            Labels::Classes(c) => format!("ImageFolder, {} classes, {n} images", c.len()),
            Labels::Unlabelled { nested } => format!(
                "unlabelled ({}, no class folders), {n} images",
                if *nested {
                    "nested folders"
                } else {
                    "flat folder"
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn labelled_flat_and_nested_folders() {
        let dir = std::env::temp_dir().join(format!("image-set-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (folder, flat, nested) = (dir.join("folder"), dir.join("flat"), dir.join("nested"));
        for f in ["cat/1.jpg", "cat/notes.txt", "dog/2.png", ".hidden/3.jpg"] {
            touch(&folder.join(f));
        }
        for f in ["b.jpg", "a.PNG", "readme.txt", ".x.jpg"] {
            touch(&flat.join(f));
        }
        for f in ["top.jpg", "x/y/deep.webp", "x/1.jpg"] {
            touch(&nested.join(f));
        }
        std::os::unix::fs::symlink(&nested, nested.join("x/loop")).unwrap();

        let s = ImageSet::scan(&folder).unwrap();
        assert_eq!(s.classes().unwrap(), ["cat", "dog"]);
        let labels: Vec<Option<usize>> = s.samples.iter().map(|x| x.1).collect();
        assert_eq!(labels, [Some(0), Some(0), Some(1)]);

        let s = ImageSet::scan(&flat).unwrap();
        assert_eq!(s.labels, Labels::Unlabelled { nested: false });
        let names: Vec<&str> = s
            .samples
            .iter()
            .map(|x| x.0.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.PNG", "b.jpg"]);

        // The link back to the root is visited once only: three images, not a loop.
        let s = ImageSet::scan(&nested).unwrap();
        assert_eq!(s.labels, Labels::Unlabelled { nested: true });
        assert_eq!(s.samples.len(), 3, "{:?}", s.samples);
        assert!(s.samples.iter().all(|x| x.1.is_none()));

        // Images deeper than MAX_DEPTH levels are not searched for.
        let deep = dir.join("deep");
        let mut d = deep.clone();
        for i in 0..=MAX_DEPTH {
            d = d.join(format!("{i}"));
            if i == MAX_DEPTH - 2 {
                touch(&d.join("found.jpg"));
            }
        }
        touch(&d.join("too-deep.jpg"));
        let s = ImageSet::scan(&deep).unwrap();
        let names: Vec<_> = s.samples.iter().map(|x| x.0.file_name().unwrap()).collect();
        assert_eq!(names, ["found.jpg"]);

        let empty = dir.join("empty");
        std::fs::create_dir_all(empty.join("sub")).unwrap();
        let e = ImageSet::scan(&empty).unwrap_err().to_string();
        assert!(e.contains("no images found"), "{e}");
        assert!(ImageSet::scan(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
