//! The training images of a folder, labelled (an ImageFolder) or not (see
//! [`dino_core::image_set`] for the rule), whose unreadable files are found, reported and
//! counted rather than fatal. DINO needs no labels; they are kept for evaluation only.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dino_core::CoreError;
use dino_core::image_io::decode_rgb;
use dino_core::image_set::{ImageSet, Labels};
use image::RgbImage;
use rayon::prelude::*;

use super::DataError;

/// How much of every file to check when the dataset is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    /// Decode every image once (in parallel): every bad file is known before training.
    #[default]
    Full,
    /// Only read headers (format and size): fast on very large sets; files that fail later
    /// are skipped and counted when the loader meets them.
    Header,
}

/// A file left out of training, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub reason: String,
}

/// The label of an image of an unlabelled folder.
pub const NO_LABEL: i64 = -1;

/// The readable images of a folder: an ImageFolder (`root/<class>/<file>`, sorted as
/// torchvision) or, without class folders, every image found ([`NO_LABEL`] each).
#[derive(Debug)]
pub struct ImageDataset {
    root: PathBuf,
    labels: Labels,
    samples: Vec<(PathBuf, i64)>,
    skipped: Mutex<Vec<SkippedFile>>,
}

/// Full decode check (the one policy of `decode_rgb`, truncated JPEGs included),
/// returning the reason without the path on failure.
fn check_decode(bytes: &[u8], path: &Path) -> Result<RgbImage, String> {
    decode_rgb(bytes, path).map_err(|e| match e {
        CoreError::Image { why, .. } => why,
        e => e.to_string(),
    })
}

fn read_and_decode(path: &Path) -> Result<RgbImage, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    check_decode(&bytes, path)
}

fn check(path: &Path, verify: Verify) -> Result<(), String> {
    match verify {
        Verify::Full => read_and_decode(path).map(drop),
        Verify::Header => image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| e.to_string())?
            .into_dimensions()
            .map(drop)
            .map_err(|e| e.to_string()),
    }
}

impl std::fmt::Display for SkippedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

fn warn(s: &SkippedFile) {
    eprintln!("warning: skipping unreadable image {s}");
}

impl ImageDataset {
    /// Scans `root`, checks every file as `verify` says (in parallel on the global rayon
    /// pool), and keeps the readable ones; each skipped file is warned about on stderr and
    /// listed in [`ImageDataset::skipped`]. An empty or entirely unreadable folder is an error.
    pub fn open(root: &Path, verify: Verify) -> Result<Self, DataError> {
        let folder = ImageSet::scan(root)?;
        let total = folder.samples.len();
        let results: Vec<Result<(), String>> = folder
            .samples
            .par_iter()
            .map(|(p, _)| check(p, verify))
            .collect();
        let mut samples = Vec::with_capacity(total);
        let mut skipped = Vec::new();
        for ((path, class), r) in folder.samples.into_iter().zip(results) {
            match r {
                Ok(()) => samples.push((path, class.map_or(NO_LABEL, |c| c as i64))),
                Err(reason) => {
                    let s = SkippedFile { path, reason };
                    warn(&s);
                    skipped.push(s);
                }
            }
        }
        if samples.is_empty() {
            return Err(DataError::NoReadableImages {
                root: root.to_path_buf(),
                total,
                skipped: skipped.len(),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            labels: folder.labels,
            samples,
            skipped: Mutex::new(skipped),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names (first-level folder names, sorted); labels index into this. Empty for an
    /// unlabelled folder.
    pub fn classes(&self) -> &[String] {
        match &self.labels {
            Labels::Classes(c) => c,
            Labels::Unlabelled { .. } => &[],
        }
    }

    /// Whether the folder is an ImageFolder (every image in a class folder).
    pub fn is_labelled(&self) -> bool {
        matches!(self.labels, Labels::Classes(_))
    }

    /// What the folder is (labelled or not, how many readable images), for the start-up
    /// line.
    pub fn describe(&self) -> String {
        self.labels.describe(self.samples.len())
    }

    /// Number of readable images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn path(&self, index: usize) -> &Path {
        &self.samples[index].0
    }

    pub fn label(&self, index: usize) -> i64 {
        self.samples[index].1
    }

    /// Files skipped so far (at open, and later by the loader with [`Verify::Header`]).
    pub fn skipped(&self) -> Vec<SkippedFile> {
        self.skipped.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// How many files were skipped so far, for the training log.
    pub fn skipped_count(&self) -> usize {
        self.skipped.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Decodes sample `index` to RGB8.
    pub fn load(&self, index: usize) -> Result<RgbImage, DataError> {
        let path = self.path(index);
        read_and_decode(path).map_err(|why| DataError::Image {
            path: path.to_path_buf(),
            why,
        })
    }

    /// Loads `index`, or, if it fails at run time, the next readable sample (deterministic
    /// for a given dataset, so batches stay reproducible); the failure is warned about and
    /// counted once per file. Returns the index actually used.
    pub(crate) fn load_or_next(&self, index: usize) -> Result<(usize, RgbImage), DataError> {
        let n = self.len();
        let mut last_err = None;
        for k in 0..n.min(64) {
            let i = (index + k) % n;
            match self.load(i) {
                Ok(img) => return Ok((i, img)),
                Err(e) => {
                    self.record_failure(&e);
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| DataError::Config("empty dataset".into())))
    }

    fn record_failure(&self, e: &DataError) {
        let DataError::Image { path, why } = e else {
            return;
        };
        if let Ok(mut s) = self.skipped.lock()
            && !s.iter().any(|f| &f.path == path)
        {
            let f = SkippedFile {
                path: path.clone(),
                reason: why.clone(),
            };
            warn(&f);
            s.push(f);
        }
    }
}
