//! `GET /metrics` of the control plane, in the Prometheus text format: the
//! health of recording (event queue, writer, activity bus) and the calls in
//! flight. The counters live where the work happens; this module only reads
//! snapshots of them, so scraping never contends with the request path.

use std::fmt::Write;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::task::TaskTracker;

use crate::activity::ActivityBus;
use crate::store::EventSink;

/// What `/metrics` reads from.
#[derive(Clone)]
pub struct MetricsSources {
    pub sink: Option<EventSink>,
    pub activity: ActivityBus,
    pub calls: TaskTracker,
}

pub fn router(sources: MetricsSources) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(sources)
}

async fn metrics(State(sources): State<MetricsSources>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&sources),
    )
}

/// The exposition text.
pub fn render(sources: &MetricsSources) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    metric(
        "luthien_control_plane_open_calls",
        "gauge",
        "Calls whose stream is open on this control plane.",
        sources.calls.len() as u64,
    );
    if let Some(sink) = &sources.sink {
        let stats = sink.stats();
        metric(
            "luthien_events_written_total",
            "counter",
            "Records stored by the event writer.",
            stats.written,
        );
        metric(
            "luthien_events_dropped_total",
            "counter",
            "Records dropped because the event queue was full or the writer stopped.",
            stats.dropped,
        );
        metric(
            "luthien_events_rejected_total",
            "counter",
            "Records the database refused.",
            stats.rejected,
        );
        metric(
            "luthien_event_batch_failures_total",
            "counter",
            "Event batch writes that failed (each is retried with backoff).",
            stats.failed_batches,
        );
        metric(
            "luthien_event_batches_total",
            "counter",
            "Event batches stored.",
            stats.batches,
        );
        metric(
            "luthien_event_queue_depth",
            "gauge",
            "Records waiting in the event queue.",
            stats.queue_depth,
        );
        metric(
            "luthien_event_last_batch_microseconds",
            "gauge",
            "Time the last successful event batch took to write.",
            stats.last_batch_micros,
        );
    }
    let activity = sources.activity.stats();
    metric(
        "luthien_activity_published_total",
        "counter",
        "Activity messages published.",
        activity.published,
    );
    metric(
        "luthien_activity_dropped_total",
        "counter",
        "Activity messages dropped before publishing (queue full).",
        activity.dropped,
    );
    metric(
        "luthien_activity_publish_failures_total",
        "counter",
        "Activity messages Redis did not take.",
        activity.publish_failures,
    );
    out
}
