//! The official weighted k-NN vote of DINO (`eval_knn.py`, Caron et al. 2021).
//!
//! For each query: cosine similarity to every gallery row (rows and queries L2-normalised,
//! so a dot product), the `k` most similar rows, each voting for its label with weight
//! `exp(similarity / T)`; classes are ranked by their summed weight. Top-1 is the best
//! class, top-5 counts a hit among the first `min(5, k)` classes.
//!
//! Ties are broken deterministically: among equal similarities the lower gallery row wins,
//! among equal scores the lower class index comes first.
//!
//! Work is blocked so that memory stays bounded for any number of queries: queries go in
//! chunks, each chunk is compared to the gallery in blocks of rows (in parallel with
//! rayon), keeping only a running top-k per query. One query against a 50,000 x 384
//! gallery takes a few milliseconds.

use rayon::prelude::*;

use crate::error::CoreError;

/// Queries compared together against one gallery row (the row is read once per block).
const QUERY_BLOCK: usize = 8;
/// Gallery rows per parallel task.
const ROW_BLOCK: usize = 2048;
/// Queries voted at once by `knn_accuracy`, bounding its memory.
const ACCURACY_CHUNK: usize = 1024;

/// A gallery of L2-normalised rows with their labels, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct Gallery<'a> {
    pub features: &'a [f32],
    pub labels: &'a [usize],
    pub dim: usize,
    pub num_classes: usize,
}

impl<'a> Gallery<'a> {
    /// Checks the shapes and labels.
    pub fn new(
        features: &'a [f32],
        labels: &'a [usize],
        dim: usize,
        num_classes: usize,
    ) -> Result<Self, CoreError> {
        let bad = |why: String| Err(CoreError::InvalidConfig(format!("k-NN gallery: {why}")));
        if dim == 0 || features.len() != labels.len() * dim {
            return bad(format!(
                "{} values are not {} rows of dimension {dim}",
                features.len(),
                labels.len()
            ));
        }
        if let Some(l) = labels.iter().find(|&&l| l >= num_classes) {
            return bad(format!(
                "label {l} is not below the number of classes {num_classes}"
            ));
        }
        Ok(Self {
            features,
            labels,
            dim,
            num_classes,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Scales every row of `x` (rows of `dim` values) to unit L2 norm (zero rows stay zero),
/// as `torch.nn.functional.normalize(x, dim=1, p=2)` with its epsilon of 1e-12.
pub fn l2_normalize_rows(x: &mut [f32], dim: usize) {
    for row in x.chunks_exact_mut(dim) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= n);
    }
}

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The best `k` `(similarity, row)` pairs seen so far, best first.
#[derive(Clone, Debug)]
struct TopK {
    k: usize,
    items: Vec<(f32, usize)>,
}

/// `a` ranks before `b`: higher similarity, then lower row. NaN ranks last.
fn better(a: (f32, usize), b: (f32, usize)) -> bool {
    let (sa, sb) = (
        if a.0.is_nan() { f32::NEG_INFINITY } else { a.0 },
        if b.0.is_nan() { f32::NEG_INFINITY } else { b.0 },
    );
    sa > sb || (sa == sb && a.1 < b.1)
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            items: Vec::with_capacity(k + 1),
        }
    }

    #[inline]
    fn push(&mut self, item: (f32, usize)) {
        if self.items.len() == self.k {
            if !better(item, self.items[self.k - 1]) {
                return;
            }
            self.items.pop();
        }
        let pos = self.items.partition_point(|&x| better(x, item));
        self.items.insert(pos, item);
    }

    fn merge(mut self, other: Self) -> Self {
        other.items.into_iter().for_each(|i| self.push(i));
        self
    }
}

/// Running top-k of `queries` (a block) over gallery rows `rows`.
#[inline(always)]
fn scan_block_generic(
    g: &Gallery,
    queries: &[f32],
    rows: std::ops::Range<usize>,
    k: usize,
) -> Vec<TopK> {
    let d = g.dim;
    let mut tops = vec![TopK::new(k); queries.len() / d];
    for r in rows {
        let row = &g.features[r * d..(r + 1) * d];
        for (q, top) in queries.chunks_exact(d).zip(tops.iter_mut()) {
            top.push((dot_generic(row, q), r));
        }
    }
    tops
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scan_block_avx2(
    g: &Gallery,
    queries: &[f32],
    rows: std::ops::Range<usize>,
    k: usize,
) -> Vec<TopK> {
    scan_block_generic(g, queries, rows, k)
}

fn scan_block(g: &Gallery, queries: &[f32], rows: std::ops::Range<usize>, k: usize) -> Vec<TopK> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { scan_block_avx2(g, queries, rows, k) };
    }
    scan_block_generic(g, queries, rows, k)
}

/// The `k` nearest gallery rows of each query, `(similarity, row)` best first
/// (fewer when the gallery is smaller than `k`). Queries must be L2-normalised.
pub fn nearest_neighbours(g: &Gallery, queries: &[f32], k: usize) -> Vec<Vec<(f32, usize)>> {
    let k = k.min(g.len()).max(1);
    let blocks = g.len().div_ceil(ROW_BLOCK);
    queries
        .par_chunks(QUERY_BLOCK * g.dim)
        .flat_map_iter(|qb| {
            let nq = qb.len() / g.dim;
            (0..blocks)
                .into_par_iter()
                .map(|b| scan_block(g, qb, b * ROW_BLOCK..((b + 1) * ROW_BLOCK).min(g.len()), k))
                .reduce(
                    || vec![TopK::new(k); nq],
                    |a, b| a.into_iter().zip(b).map(|(x, y)| x.merge(y)).collect(),
                )
                .into_iter()
                .map(|t| t.items)
        })
        .collect()
}

/// The vote of one query's neighbours: every class with its summed `exp(sim / T)`, best
/// first (ties: lower class first).
pub fn vote(
    neighbours: &[(f32, usize)],
    labels: &[usize],
    num_classes: usize,
    temperature: f32,
) -> Vec<(usize, f32)> {
    let mut scores = vec![0f32; num_classes];
    for &(sim, row) in neighbours {
        scores[labels[row]] += (sim / temperature).exp();
    }
    let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
}

fn check_params(g: &Gallery, queries: &[f32], k: usize, temperature: f32) -> Result<(), CoreError> {
    if g.is_empty()
        || k == 0
        || temperature.is_nan()
        || temperature <= 0.0
        || !queries.len().is_multiple_of(g.dim)
    {
        return Err(CoreError::InvalidConfig(format!(
            "k-NN: need a non-empty gallery, k > 0, temperature > 0 and queries of dimension {} \
             (gallery rows {}, k {k}, temperature {temperature}, {} query values)",
            g.dim,
            g.len(),
            queries.len()
        )));
    }
    Ok(())
}

/// Classifies L2-normalised `queries` (rows of `dim`) against the gallery: for each query,
/// all classes with their vote scores, best first.
pub fn knn_classify(
    train: &[f32],
    train_labels: &[usize],
    dim: usize,
    num_classes: usize,
    queries: &[f32],
    k: usize,
    temperature: f32,
) -> Result<Vec<Vec<(usize, f32)>>, CoreError> {
    let g = Gallery::new(train, train_labels, dim, num_classes)?;
    check_params(&g, queries, k, temperature)?;
    Ok(nearest_neighbours(&g, queries, k)
        .iter()
        .map(|n| vote(n, g.labels, num_classes, temperature))
        .collect())
}

/// The hits of one `k`: queries whose label is the best class (top-1) or among the first
/// `min(5, k)` classes (top-5), out of `queries`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnnHits {
    pub k: usize,
    pub top1: usize,
    pub top5: usize,
    pub queries: usize,
}

impl KnnHits {
    /// Top-1 accuracy in percent.
    pub fn top1_percent(&self) -> f64 {
        self.top1 as f64 * 100.0 / self.queries.max(1) as f64
    }

    /// Top-5 accuracy in percent.
    pub fn top5_percent(&self) -> f64 {
        self.top5 as f64 * 100.0 / self.queries.max(1) as f64
    }
}

/// The hits of each `k` of `ks`, from one search of the `max(ks)` nearest rows per query:
/// the `k` nearest are a prefix of them (the order is total), so every `k` gets exactly
/// what a search of its own would give, and the gallery is scanned once.
#[allow(clippy::too_many_arguments)]
pub fn knn_hits(
    train: &[f32],
    train_labels: &[usize],
    dim: usize,
    num_classes: usize,
    queries: &[f32],
    query_labels: &[usize],
    ks: &[usize],
    temperature: f32,
) -> Result<Vec<KnnHits>, CoreError> {
    let g = Gallery::new(train, train_labels, dim, num_classes)?;
    let k_max = ks.iter().copied().max().unwrap_or(0);
    check_params(
        &g,
        queries,
        ks.iter().copied().min().unwrap_or(0),
        temperature,
    )?;
    if queries.len() != query_labels.len() * dim || query_labels.is_empty() {
        return Err(CoreError::InvalidConfig(format!(
            "k-NN: {} query values are not {} labelled rows of dimension {dim}",
            queries.len(),
            query_labels.len()
        )));
    }
    let mut hits: Vec<KnnHits> = ks
        .iter()
        .map(|&k| KnnHits {
            k,
            top1: 0,
            top5: 0,
            queries: query_labels.len(),
        })
        .collect();
    for (qs, ls) in queries
        .chunks(ACCURACY_CHUNK * dim)
        .zip(query_labels.chunks(ACCURACY_CHUNK))
    {
        for (n, &label) in nearest_neighbours(&g, qs, k_max).iter().zip(ls) {
            for h in hits.iter_mut() {
                let ranked = vote(&n[..h.k.min(n.len())], g.labels, num_classes, temperature);
                h.top1 += usize::from(ranked[0].0 == label);
                h.top5 += usize::from(ranked.iter().take(h.k.min(5)).any(|c| c.0 == label));
            }
        }
    }
    Ok(hits)
}

/// Top-1 and top-5 accuracy in percent of one `k`, as `eval_knn.py` reports them.
#[allow(clippy::too_many_arguments)]
pub fn knn_accuracy(
    train: &[f32],
    train_labels: &[usize],
    dim: usize,
    num_classes: usize,
    queries: &[f32],
    query_labels: &[usize],
    k: usize,
    temperature: f32,
) -> Result<(f64, f64), CoreError> {
    let h = knn_hits(
        train,
        train_labels,
        dim,
        num_classes,
        queries,
        query_labels,
        &[k],
        temperature,
    )?;
    Ok((h[0].top1_percent(), h[0].top5_percent()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(g: &Gallery, q: &[f32], k: usize) -> Vec<(f32, usize)> {
        let mut all: Vec<(f32, usize)> = g
            .features
            .chunks_exact(g.dim)
            .enumerate()
            .map(|(i, r)| (r.iter().zip(q).map(|(a, b)| a * b).sum(), i))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        all.truncate(k);
        all
    }

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn blocked_search_matches_brute_force() {
        let (n, d) = (9000, 24);
        let mut train = lcg(n * d, 1);
        l2_normalize_rows(&mut train, d);
        let labels: Vec<usize> = (0..n).map(|i| i % 7).collect();
        let g = Gallery::new(&train, &labels, d, 7).unwrap();
        let mut q = lcg(11 * d, 2);
        l2_normalize_rows(&mut q, d);
        let got = nearest_neighbours(&g, &q, 20);
        for (i, qq) in q.chunks_exact(d).enumerate() {
            let want = brute(&g, qq, 20);
            let rows: Vec<usize> = got[i].iter().map(|x| x.1).collect();
            let want_rows: Vec<usize> = want.iter().map(|x| x.1).collect();
            assert_eq!(rows, want_rows);
        }
    }

    #[test]
    fn vote_weights_and_accuracy() {
        // Two classes along two axes; a query near axis 0.
        let train = [1.0, 0.0, 0.0, 1.0, 0.8, 0.6];
        let labels = [0, 1, 1];
        let q = [1.0, 0.0];
        let r = knn_classify(&train, &labels, 2, 3, &q, 5, 0.1).unwrap();
        let s1 = (0.0f32 / 0.1).exp() + (0.8f32 / 0.1).exp();
        assert_eq!((r[0][0].0, r[0][1].0), (0, 1));
        assert!((r[0][0].1 - 10f32.exp()).abs() < 1e-3 * 10f32.exp());
        assert!((r[0][1].1 - s1).abs() < 1e-3 * s1);
        assert_eq!(r[0][2], (2, 0.0));
        let (t1, t5) = knn_accuracy(&train, &labels, 2, 3, &q, &[0], 1, 0.1).unwrap();
        assert_eq!((t1, t5), (100.0, 100.0));
        assert!(knn_classify(&train, &labels, 2, 1, &q, 5, 0.1).is_err());
        assert!(knn_classify(&train, &labels, 2, 3, &q, 0, 0.1).is_err());
    }

    #[test]
    fn several_k_in_one_search_equal_separate_searches() {
        let (n, d, nc) = (3000, 16, 5);
        let mut train = lcg(n * d, 3);
        l2_normalize_rows(&mut train, d);
        let labels: Vec<usize> = (0..n).map(|i| (i * 7 + i / 13) % nc).collect();
        let mut q = lcg(40 * d, 4);
        l2_normalize_rows(&mut q, d);
        let ql: Vec<usize> = (0..40).map(|i| i % nc).collect();
        let ks = [1, 3, 10, 20, 100, 5000];
        let all = knn_hits(&train, &labels, d, nc, &q, &ql, &ks, 0.07).unwrap();
        for (h, &k) in all.iter().zip(&ks) {
            let one = knn_hits(&train, &labels, d, nc, &q, &ql, &[k], 0.07).unwrap();
            assert_eq!(*h, one[0]);
            let (t1, t5) = knn_accuracy(&train, &labels, d, nc, &q, &ql, k, 0.07).unwrap();
            assert_eq!((t1, t5), (h.top1_percent(), h.top5_percent()));
        }
        assert!(knn_hits(&train, &labels, d, nc, &q, &ql, &[], 0.07).is_err());
        assert!(knn_hits(&train, &labels, d, nc, &q, &ql, &[0, 5], 0.07).is_err());
    }
}
