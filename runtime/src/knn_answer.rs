//! Answers against a gallery, the same for `dino-run classify`/`search` and the server's
//! `/v1/classify` and `/v1/search`: the weighted k-NN vote of `dino_core::knn` and the
//! nearest gallery rows.
//!
//! A model with a linear head (a `logits` output) would be one more [`ClassSource`]
//! variant, ranked by softmax; callers only see [`ClassScore`]s.

use dino_core::knn;
use serde::Serialize;

use crate::error::RuntimeError;
use crate::gallery::Gallery;

/// One class of a prediction; `share` is its part of the summed scores.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassScore {
    pub class: String,
    pub index: usize,
    pub score: f32,
    pub share: f32,
}

/// One nearest gallery image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Neighbour {
    /// Its class name and index.
    pub class: String,
    pub index: usize,
    /// Its path as stored by `dino-run index`.
    pub path: String,
    /// Its row in the gallery.
    pub row: usize,
    /// Cosine similarity to the query.
    pub similarity: f32,
}

/// The parameters of the k-NN vote.
#[derive(Clone, Copy, Debug)]
pub struct KnnParams {
    pub k: usize,
    pub temperature: f32,
}

impl KnnParams {
    pub fn check(&self) -> Result<(), String> {
        if self.k == 0 || self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err(format!(
                "k must be positive and temperature greater than 0 (k {}, temperature {})",
                self.k, self.temperature
            ));
        }
        Ok(())
    }
}

/// Where classes come from.
pub enum ClassSource<'a> {
    /// The weighted k-NN vote against a gallery.
    Knn(&'a Gallery, KnnParams),
}

fn check_dim(g: &Gallery, embedding: &[f32]) -> Result<(), RuntimeError> {
    if embedding.len() != g.header.dim {
        return Err(RuntimeError::DimensionMismatch {
            embedding: embedding.len(),
            gallery: g.header.dim,
        });
    }
    Ok(())
}

impl ClassSource<'_> {
    /// The `topk` best classes of one L2-normalised embedding.
    pub fn top(&self, embedding: &[f32], topk: usize) -> Result<Vec<ClassScore>, RuntimeError> {
        match self {
            ClassSource::Knn(g, p) => {
                g.require_labels()?;
                check_dim(g, embedding)?;
                let kg = g.knn();
                let neighbours = knn::nearest_neighbours(&kg, embedding, p.k);
                let ranked = knn::vote(&neighbours[0], kg.labels, kg.num_classes, p.temperature);
                let total: f32 = ranked.iter().map(|c| c.1).sum();
                Ok(ranked
                    .iter()
                    .take(topk)
                    .map(|&(c, s)| ClassScore {
                        class: g.header.classes[c].clone(),
                        index: c,
                        score: s,
                        share: s / total,
                    })
                    .collect())
            }
        }
    }
}

/// The `topk` gallery images nearest to one L2-normalised embedding, best first; an error
/// when the gallery keeps no paths (built before version 2).
pub fn nearest_images(
    g: &Gallery,
    embedding: &[f32],
    topk: usize,
) -> Result<Vec<Neighbour>, RuntimeError> {
    check_dim(g, embedding)?;
    let paths = g.paths.as_ref().ok_or(RuntimeError::NoPaths)?;
    let kg = g.knn();
    let n = knn::nearest_neighbours(&kg, embedding, topk.max(1));
    Ok(n[0]
        .iter()
        .take(topk)
        .map(|&(similarity, row)| Neighbour {
            class: g.header.classes[g.labels[row]].clone(),
            index: g.labels[row],
            path: paths[row].clone(),
            row,
            similarity,
        })
        .collect())
}
