//! Prometheus text exposition of the server's counters, written by hand (a handful of
//! series; a metrics crate would add more code than it saves).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Request latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Batch size buckets, images.
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (c, b) in self.counts.iter_mut().zip(self.bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (c, b) in self.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Everything /metrics reports besides the gauges read at scrape time.
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    batches: Mutex<Histogram>,
    images: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            latency: Mutex::default(),
            batches: Mutex::new(Histogram::new(&BATCH_BUCKETS)),
            images: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }
}

/// The gauges of the moment.
pub struct Gauges {
    pub queue_depth: usize,
    pub inflight: usize,
    pub generation: u64,
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_string(), status))
            .or_default() += 1;
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
            .observe(seconds);
    }

    pub fn batch(&self, images: usize) {
        self.images.fetch_add(images as u64, Ordering::Relaxed);
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(images as f64);
    }

    pub fn reloaded(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::new();
        o.push_str("# HELP dino_requests_total HTTP requests by route and status.\n");
        o.push_str("# TYPE dino_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                o,
                "dino_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        o.push_str("# HELP dino_request_seconds Request latency by route.\n");
        o.push_str("# TYPE dino_request_seconds histogram\n");
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            h.write(
                &mut o,
                "dino_request_seconds",
                &format!("route=\"{route}\""),
            );
        }
        o.push_str("# HELP dino_batch_size Images per model batch.\n");
        o.push_str("# TYPE dino_batch_size histogram\n");
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(&mut o, "dino_batch_size", "");
        let counters = [
            (
                "dino_images_total",
                "Images run through the model.",
                self.images.load(Ordering::Relaxed),
            ),
            (
                "dino_reloads_total",
                "Successful reloads (SIGHUP).",
                self.reloads_ok.load(Ordering::Relaxed),
            ),
            (
                "dino_reload_failures_total",
                "Failed reloads (the old model stays).",
                self.reloads_failed.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let gauges = [
            (
                "dino_queue_depth",
                "Images waiting for the model.",
                g.queue_depth as u64,
            ),
            (
                "dino_inflight_requests",
                "Requests being handled.",
                g.inflight as u64,
            ),
            (
                "dino_model_generation",
                "0 at start, +1 per reload.",
                g.generation,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.request("/v1/embed", 200, 0.003);
        m.request("/v1/embed", 200, 0.2);
        m.batch(3);
        let text = m.render(&Gauges {
            queue_depth: 2,
            inflight: 1,
            generation: 0,
        });
        assert!(text.contains("dino_requests_total{route=\"/v1/embed\",status=\"200\"} 2"));
        assert!(text.contains("dino_request_seconds_bucket{route=\"/v1/embed\",le=\"0.005\"} 1"));
        assert!(text.contains("dino_request_seconds_bucket{route=\"/v1/embed\",le=\"+Inf\"} 2"));
        assert!(text.contains("dino_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("dino_queue_depth 2"));
    }
}
