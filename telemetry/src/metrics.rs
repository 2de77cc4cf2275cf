//! Prometheus helpers shared by both planes: bounded label values, the
//! exposition, bucket layouts.
//!
//! Label values that come from clients (model names) are unbounded; a
//! [`BoundedLabels`] admits the first [`MAX_MODEL_LABELS`] distinct values it
//! sees (each at most [`MAX_LABEL_LEN`] bytes) and maps every later one to
//! `other`, so a client cannot grow the exposition without bound. Admitted
//! values are shared `Arc<str>`s: observing a metric costs a read-locked
//! hash lookup, no allocation.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::registry::Registry;

/// Distinct model label values per process; later ones become `other`.
pub const MAX_MODEL_LABELS: usize = 100;
/// Longest label value kept; longer ones become `other`.
pub const MAX_LABEL_LEN: usize = 128;

/// `Content-Type` of the exposition (OpenMetrics text, which Prometheus
/// scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label value shared between observations without copying.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label(Arc<str>);

impl Label {
    pub fn new(value: &str) -> Self {
        Self(Arc::from(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// Admits a bounded number of distinct label values (see the module docs).
#[derive(Debug)]
pub struct BoundedLabels {
    max: usize,
    seen: RwLock<HashSet<Arc<str>>>,
    other: Label,
    empty: Label,
}

impl BoundedLabels {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: RwLock::new(HashSet::new()),
            other: Label::new("other"),
            empty: Label::new("unknown"),
        }
    }

    /// The label for `value`: itself while there is room, else `other`.
    pub fn get(&self, value: &str) -> Label {
        if value.is_empty() {
            return self.empty.clone();
        }
        if value.len() > MAX_LABEL_LEN {
            return self.other.clone();
        }
        if let Ok(seen) = self.seen.read() {
            if let Some(found) = seen.get(value) {
                return Label(Arc::clone(found));
            }
            if seen.len() >= self.max {
                return self.other.clone();
            }
        }
        let Ok(mut seen) = self.seen.write() else {
            return self.other.clone();
        };
        if let Some(found) = seen.get(value) {
            return Label(Arc::clone(found));
        }
        if seen.len() >= self.max {
            return self.other.clone();
        }
        let admitted: Arc<str> = Arc::from(value);
        seen.insert(Arc::clone(&admitted));
        Label(admitted)
    }
}

/// The registry as exposition text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(8 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// Latency buckets in seconds, 0.5 ms to about 65 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 18)
}

/// Buckets for Luthien's own added latency, in seconds: 50 µs to about 3 s.
pub fn overhead_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        let labels = BoundedLabels::new(2);
        assert_eq!(labels.get("a").as_str(), "a");
        assert_eq!(labels.get("b").as_str(), "b");
        assert_eq!(labels.get("c").as_str(), "other");
        assert_eq!(labels.get("a").as_str(), "a");
        assert_eq!(labels.get("").as_str(), "unknown");
        assert_eq!(labels.get(&"x".repeat(500)).as_str(), "other");
    }
}
