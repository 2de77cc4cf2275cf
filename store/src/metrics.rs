//! What the store measures beyond its own counters: batch write latency and what retention
//! deleted or failed to. Created by whoever serves `/metrics` and handed to the writer
//! ([`WriterOptions::metrics`](crate::writer::WriterOptions)) and to retention
//! ([`RetentionOptions::metrics`](crate::RetentionOptions)); the defaults are fresh,
//! unregistered metrics.

use luthien_telemetry::metrics as shared;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug)]
pub struct StoreMetrics {
    pub batch_latency: Histogram,
    /// Calls (and, below, their events) deleted by retention.
    pub retention_deleted_calls: Counter,
    pub retention_deleted_events: Counter,
    /// Retention runs cut short by a database error.
    pub retention_failures: Counter,
    /// Calls marked `abandoned` because their control plane stopped (see `liveness`).
    pub abandoned_swept: Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            batch_latency: Histogram::new(shared::latency_buckets()),
            retention_deleted_calls: Counter::default(),
            retention_deleted_events: Counter::default(),
            retention_failures: Counter::default(),
            abandoned_swept: Counter::default(),
        }
    }
}

impl StoreMetrics {
    /// Adds the metrics to `registry` (shared, not copied).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "luthien_event_batch_duration_seconds",
            "Time successful event batches took to write",
            self.batch_latency.clone(),
        );
        registry.register(
            "luthien_store_retention_deleted_calls",
            "Calls deleted by event-store retention (--retention), with their events",
            self.retention_deleted_calls.clone(),
        );
        registry.register(
            "luthien_store_retention_deleted_events",
            "Events deleted by event-store retention with their calls",
            self.retention_deleted_events.clone(),
        );
        registry.register(
            "luthien_store_retention_failures",
            "Event-store retention runs cut short by a database error (retried at the next interval)",
            self.retention_failures.clone(),
        );
        registry.register(
            "luthien_store_abandoned_calls",
            "Calls left in progress by a control plane that stopped, marked abandoned by the sweep",
            self.abandoned_swept.clone(),
        );
    }
}
