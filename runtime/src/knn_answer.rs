//! Answers of `dino-run classify`/`search` and the server's `/v1/classify` and
//! `/v1/search`: classes by the weighted k-NN vote of `dino_core::knn` against a gallery
//! or by the softmax of a linear probe's `logits`, and the nearest gallery rows. Callers
//! only see [`ClassScore`]s, whatever the [`ClassSource`].

use dino_core::knn;
use dino_core::linear::LinearHeadConfig;
use serde::Serialize;

use crate::error::RuntimeError;
use crate::gallery::Gallery;

/// One class of a prediction; `share` is its part of the summed scores (for a linear
/// probe both are the softmax probability).
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
    /// The softmax of the model's `logits` (a linear probe exported with the backbone).
    Linear(&'a LinearHeadConfig),
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
    /// The `topk` best classes of one image: `values` is its L2-normalised embedding for
    /// [`ClassSource::Knn`], its `logits` for [`ClassSource::Linear`].
    pub fn top(&self, values: &[f32], topk: usize) -> Result<Vec<ClassScore>, RuntimeError> {
        match self {
            ClassSource::Linear(c) => linear_top(c, values, topk),
            ClassSource::Knn(g, p) => {
                g.require_labels()?;
                check_dim(g, values)?;
                let kg = g.knn();
                let neighbours = knn::nearest_neighbours(&kg, values, p.k);
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

/// Classes by softmax probability, best first (ties by class index).
fn linear_top(
    c: &LinearHeadConfig,
    logits: &[f32],
    topk: usize,
) -> Result<Vec<ClassScore>, RuntimeError> {
    if logits.len() != c.num_classes() {
        return Err(RuntimeError::ClassCount {
            logits: logits.len(),
            classes: c.num_classes(),
        });
    }
    let p = softmax(logits);
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    Ok(order
        .into_iter()
        .take(topk)
        .map(|i| ClassScore {
            class: c.classes[i].clone(),
            index: i,
            score: p[i],
            share: p[i],
        })
        .collect())
}

/// exp(x - max) / sum, so large logits do not overflow.
fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = x.iter().map(|&v| f64::from(v - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| (v / sum) as f32).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_ranks_by_softmax() {
        let c = LinearHeadConfig {
            classes: vec!["a".into(), "b".into(), "c".into()],
            embed_dim: 1,
            n_last_blocks: 1,
            avgpool_patchtokens: false,
            backbone_fingerprint: String::new(),
        };
        let top = ClassSource::Linear(&c).top(&[1.0, 3.0, 2.0], 2).unwrap();
        let names: Vec<_> = top.iter().map(|s| s.class.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        // softmax([1, 3, 2])[1] = e^3 / (e + e^3 + e^2)
        let want = 3f32.exp() / (1f32.exp() + 3f32.exp() + 2f32.exp());
        assert!((top[0].share - want).abs() < 1e-6, "{}", top[0].share);
        assert!(ClassSource::Linear(&c).top(&[1.0; 4], 2).is_err());
        let big = ClassSource::Linear(&c).top(&[1e4, 0.0, -1e4], 3).unwrap();
        assert_eq!(big[0].share, 1.0);
    }
}
