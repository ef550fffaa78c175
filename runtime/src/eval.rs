//! `dino-run eval`: k-NN accuracy of a labelled ImageFolder against a gallery, the
//! protocol of `dino-train knn` (`eval_knn.py`) with the gallery as the train set.
//!
//! The folder's classes are matched to the gallery's by name (the folder may hold a subset
//! of them, in any order); a folder class the gallery lacks is an error, since its images
//! could never be classified right. The vote is `dino_core::knn`, several k from one search.

use std::path::{Path, PathBuf};

use dino_core::image_set::ImageSet;
use dino_core::knn::{KnnHits, knn_hits};

use crate::error::RuntimeError;
use crate::gallery::Gallery;

/// The official `--nb_knn` default of `eval_knn.py`.
pub const DEFAULT_NB_KNN: [usize; 4] = [10, 20, 100, 200];

/// The images of a labelled folder, each with the index of its class in the gallery.
#[derive(Clone, Debug)]
pub struct EvalSet {
    pub root: PathBuf,
    pub paths: Vec<PathBuf>,
    /// Gallery class index of each image.
    pub labels: Vec<usize>,
}

impl EvalSet {
    /// Scans `root` (an ImageFolder) and maps its classes onto the gallery's, by name.
    pub fn scan(root: &Path, gallery: &Gallery, gallery_path: &Path) -> Result<Self, RuntimeError> {
        gallery.require_labels()?;
        let set = ImageSet::scan(root)?;
        let Some(classes) = set.classes() else {
            return Err(RuntimeError::Core(dino_core::CoreError::Image {
                path: root.to_path_buf(),
                why: format!(
                    "not an ImageFolder ({}): eval needs labels, every image in a class folder \
                     (<dir>/<class>/<image>)",
                    set.describe()
                ),
            }));
        };
        let known = &gallery.header.classes;
        let to_gallery: Vec<Option<usize>> = classes
            .iter()
            .map(|c| known.iter().position(|k| k == c))
            .collect();
        let missing: Vec<&str> = classes
            .iter()
            .zip(&to_gallery)
            .filter(|(_, m)| m.is_none())
            .map(|(c, _)| c.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(RuntimeError::BadGallery {
                path: gallery_path.to_path_buf(),
                why: format!(
                    "the classes {missing:?} of {} are not among the gallery's {known:?}",
                    root.display()
                ),
            });
        }
        let (paths, labels) = set
            .samples
            .into_iter()
            .filter_map(|(p, l)| Some((p, to_gallery[l?]?)))
            .unzip();
        Ok(Self {
            root: root.to_path_buf(),
            paths,
            labels,
        })
    }
}

/// The hits of each `k` for the embedded images (`None`: skipped as unreadable), and the
/// number of images voted.
pub fn evaluate(
    gallery: &Gallery,
    set: &EvalSet,
    embeddings: &[Option<Vec<f32>>],
    ks: &[usize],
    temperature: f32,
) -> Result<Vec<KnnHits>, RuntimeError> {
    let dim = gallery.header.dim;
    let (mut queries, mut labels) = (Vec::new(), Vec::new());
    for (e, &l) in embeddings.iter().zip(&set.labels) {
        if let Some(e) = e {
            if e.len() != dim {
                return Err(RuntimeError::DimensionMismatch {
                    embedding: e.len(),
                    gallery: dim,
                });
            }
            queries.extend_from_slice(e);
            labels.push(l);
        }
    }
    if labels.is_empty() {
        return Err(RuntimeError::Core(dino_core::CoreError::Image {
            path: set.root.clone(),
            why: format!("none of the {} images could be embedded", set.paths.len()),
        }));
    }
    let kg = gallery.knn();
    Ok(knn_hits(
        kg.features,
        kg.labels,
        dim,
        kg.num_classes,
        &queries,
        &labels,
        ks,
        temperature,
    )?)
}

/// The image counts of an evaluation, for its report.
#[derive(Clone, Copy, Debug)]
pub struct Counts {
    /// Gallery rows.
    pub gallery: usize,
    /// Images voted.
    pub images: usize,
    /// Images skipped as unreadable.
    pub skipped: usize,
}

/// One k's line: text, or a JSON object with the keys of `dino-train knn --json`.
pub fn report(h: &KnnHits, temperature: f64, c: Counts, json: bool) -> String {
    if json {
        return serde_json::json!({
            "k": h.k, "temperature": temperature,
            "top1": h.top1_percent(), "top5": h.top5_percent(),
            "top1_correct": h.top1, "top5_correct": h.top5,
            "train_images": c.gallery, "val_images": c.images, "skipped": c.skipped,
        })
        .to_string();
    }
    format!(
        "k-NN (k={}, T={temperature}): top-1 {:.2}% ({}/{n})  top-5 {:.2}% ({}/{n})  \
         ({} gallery / {n} images, {} skipped)",
        h.k,
        h.top1_percent(),
        h.top1,
        h.top5_percent(),
        h.top5,
        c.gallery,
        c.skipped,
        n = c.images,
    )
}
