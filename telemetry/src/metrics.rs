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

/// The two text expositions `/metrics` speaks: the classic Prometheus format (0.0.4), for a
/// scraper that asks for `text/plain` or nothing in particular, and OpenMetrics for one that
/// asks for it (Prometheus does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    Classic,
    OpenMetrics,
}

impl Exposition {
    /// The one the `Accept` header asks for.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => {
                Exposition::OpenMetrics
            }
            _ => Exposition::Classic,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

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

/// The registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(8 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// A `/metrics` answer: the content type and the exposition the `Accept` header asks for, from
/// OpenMetrics text.
pub fn respond(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    let format = Exposition::negotiate(accept);
    (format.content_type(), exposition(openmetrics, format))
}

/// OpenMetrics text (from [`encode`]) as `format` asks.
pub fn exposition(openmetrics: String, format: Exposition) -> String {
    match format {
        Exposition::OpenMetrics => openmetrics,
        Exposition::Classic => classic(&openmetrics),
    }
}

/// OpenMetrics text as the classic format: a counter's family is named like its `_total`
/// sample (what classic parsers match samples by), and the `# UNIT` and `# EOF` lines, which
/// the classic format does not have, go.
fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.insert(name.to_owned());
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
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
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn the_classic_exposition_names_counters_by_their_total_sample() {
        let mut registry = Registry::default();
        let calls = Counter::<u64>::default();
        calls.inc_by(3);
        registry.register("luthien_calls", "Calls seen", calls);
        registry.register("luthien_open", "Open now", Gauge::<i64>::default());
        let classic = exposition(encode(&registry), Exposition::Classic);
        assert!(
            classic.contains("# HELP luthien_calls_total Calls seen.\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE luthien_calls_total counter\n"),
            "{classic}"
        );
        assert!(classic.contains("\nluthien_calls_total 3\n"), "{classic}");
        assert!(classic.contains("# TYPE luthien_open gauge\n"), "{classic}");
        assert!(!classic.contains("# EOF"), "{classic}");
        let open = exposition(encode(&registry), Exposition::OpenMetrics);
        assert!(open.contains("# TYPE luthien_calls counter\n") && open.ends_with("# EOF\n"));
        assert_eq!(Exposition::negotiate(None), Exposition::Classic);
        assert_eq!(
            Exposition::negotiate(Some("text/plain")),
            Exposition::Classic
        );
        let prometheus =
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4";
        assert_eq!(
            Exposition::negotiate(Some(prometheus)),
            Exposition::OpenMetrics
        );
    }

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
