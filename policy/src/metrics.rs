//! What a chain measures: each policy hook's latency and failures, by policy name and phase.
//!
//! Created by whoever serves `/metrics` (the control plane), registered there, and handed to
//! the chains it runs ([`Chain::with_metrics`](crate::Chain::with_metrics)); a chain without
//! one measures nothing (replays, `luthien policy check`, tests).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use luthien_telemetry::metrics::{self as shared, BoundedLabels, Label};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::remote::stats::{Registered, RemoteStats, live_stats, render_prometheus};

/// Most distinct policy names labelled; later ones are counted as `other`.
const MAX_POLICY_LABELS: usize = 200;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: Label,
    phase: &'static str,
}

/// The policy metrics of a process; shared by every chain it loads, so hot reloads keep
/// counting in the same series.
pub struct PolicyMetrics {
    names: BoundedLabels,
    latency: Family<PolicyLabels, Histogram, fn() -> Histogram>,
    errors: Family<PolicyLabels, Counter>,
    /// Remote policy entries of the chains measured here, with counters of their own.
    remote: Mutex<Vec<Registered>>,
}

impl fmt::Debug for PolicyMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyMetrics").finish_non_exhaustive()
    }
}

fn histogram() -> Histogram {
    Histogram::new(shared::overhead_buckets())
}

impl Default for PolicyMetrics {
    fn default() -> Self {
        Self {
            names: BoundedLabels::new(MAX_POLICY_LABELS),
            latency: Family::new_with_constructor(histogram),
            errors: Family::default(),
            remote: Mutex::default(),
        }
    }
}

impl PolicyMetrics {
    /// Adds the metrics to `registry` (its families are shared, not copied).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "luthien_policy_duration_seconds",
            "Time one policy took on one hook, by policy and phase (request, response, stream_event, stream_end)",
            self.latency.clone(),
        );
        registry.register(
            "luthien_policy_errors",
            "Policy hooks that failed, by policy and phase",
            self.errors.clone(),
        );
    }

    /// Appends the remote policy entries' counters, in the Prometheus text format (they keep
    /// their own, see `remote::stats`).
    pub fn render_remote(&self, out: &mut String) {
        if let Ok(mut registry) = self.remote.lock() {
            render_prometheus(&live_stats(&mut registry), out);
        }
    }

    pub(crate) fn register_remote(
        &self,
        policy: &str,
        endpoints: &[String],
        stats: &Arc<RemoteStats>,
    ) {
        if let Ok(mut registry) = self.remote.lock() {
            registry.retain(|entry| entry.stats.strong_count() > 0);
            registry.push(Registered {
                policy: policy.to_owned(),
                endpoints: endpoints.to_vec(),
                stats: Arc::downgrade(stats),
            });
        }
    }

    /// The bounded label for a policy name.
    pub(crate) fn label(&self, policy: &str) -> Label {
        self.names.get(policy)
    }

    /// Records one hook's run.
    pub(crate) fn observe(
        &self,
        policy: &Label,
        phase: &'static str,
        took: Duration,
        failed: bool,
    ) {
        let labels = PolicyLabels {
            policy: policy.clone(),
            phase,
        };
        self.latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if failed {
            self.errors.get_or_create(&labels).inc();
        }
    }
}
