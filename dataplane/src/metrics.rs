//! `GET /metrics` of the data plane (Prometheus/OpenMetrics text).
//!
//! Every observation is a label lookup plus an atomic update: labels are
//! `&'static str`s, status codes and [`Label`]s (shared model names, bounded
//! by [`BoundedLabels`]: the first `MAX_MODEL_LABELS` distinct models keep
//! their name, later ones are counted as `other`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use luthien_telemetry::metrics::{self as shared, BoundedLabels, Label};
use luthien_telemetry::prometheus_client::encoding::EncodeLabelSet;
use luthien_telemetry::prometheus_client::metrics::counter::Counter;
use luthien_telemetry::prometheus_client::metrics::family::Family;
use luthien_telemetry::prometheus_client::metrics::gauge::Gauge;
use luthien_telemetry::prometheus_client::metrics::histogram::Histogram;
use luthien_telemetry::prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub api: &'static str,
    pub model: Label,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: &'static str,
}

/// Auxiliary endpoints passed straight through: `api` is the provider
/// (`openai`, `anthropic`), `endpoint` one of a fixed few.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassthroughLabels {
    pub api: &'static str,
    pub endpoint: &'static str,
    pub status: u16,
}

/// One control plane, by address. Discovery removes the series of an address that leaves, so
/// the set stays as bounded as the fleet.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: Label,
}

/// The calls let through without policies (see `spool`): kept for a control plane, recorded
/// by one, or dropped because the spool was full.
#[derive(Clone, Debug, Default)]
pub struct SpoolMetrics {
    pub spooled: Counter,
    pub recorded: Counter,
    pub dropped: Counter,
}

/// What the data plane counts of its control planes.
#[derive(Clone, Debug, Default)]
pub struct ControlMetrics {
    pub open_streams: Gauge,
    /// Call streams opened, by control plane.
    pub streams: Family<EndpointLabels, Counter>,
    /// Failures real calls saw on a control plane: it could not take the stream, or the
    /// stream broke or went silent.
    pub failures: Family<EndpointLabels, Counter>,
    /// Times a control plane was taken out of rotation for a back-off.
    pub ejections: Family<EndpointLabels, Counter>,
    /// Calls moved to another control plane, and moves the retry budget refused.
    pub retries: Counter,
    pub retries_refused: Counter,
    /// Calls sent upstream at the same time as their `CallStart`, the chain needing no
    /// request decision.
    pub sent_before_decision: Counter,
    /// 1 while a control plane reports SERVING, else 0.
    pub serving: Family<EndpointLabels, Gauge>,
}

type Histograms = Family<ApiLabels, Histogram, fn() -> Histogram>;

/// The data plane's metrics.
pub struct Metrics {
    registry: Registry,
    pub models: BoundedLabels,
    pub calls: Family<CallLabels, Counter>,
    pub passthrough: Family<PassthroughLabels, Counter>,
    pub overhead: Histograms,
    pub upstream: Histograms,
    pub first_chunk: Histograms,
    pub chunks: Family<ApiLabels, Counter>,
    pub control: ControlMetrics,
    pub spool: SpoolMetrics,
}

fn overhead_histogram() -> Histogram {
    Histogram::new(shared::overhead_buckets())
}

fn latency_histogram() -> Histogram {
    Histogram::new(shared::latency_buckets())
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "luthien_calls",
            "Calls handled, by API, model (bounded, see the docs) and HTTP status",
            calls.clone(),
        );
        let passthrough = Family::<PassthroughLabels, Counter>::default();
        registry.register(
            "luthien_passthrough",
            "Auxiliary requests passed to the provider without the control plane (count_tokens, models), by API, endpoint and HTTP status",
            passthrough.clone(),
        );
        let overhead = Histograms::new_with_constructor(overhead_histogram);
        registry.register(
            "luthien_overhead_seconds",
            "Latency Luthien added to a call: its duration minus waiting for upstream and for the client",
            overhead.clone(),
        );
        let upstream = Histograms::new_with_constructor(latency_histogram);
        registry.register(
            "luthien_upstream_duration_seconds",
            "Time until the upstream provider answered with response headers",
            upstream.clone(),
        );
        let first_chunk = Histograms::new_with_constructor(latency_histogram);
        registry.register(
            "luthien_time_to_first_chunk_seconds",
            "Streamed calls: time from the request to the first byte sent to the client",
            first_chunk.clone(),
        );
        let chunks = Family::<ApiLabels, Counter>::default();
        registry.register(
            "luthien_stream_chunks",
            "Upstream stream chunks moved to clients",
            chunks.clone(),
        );
        let control = ControlMetrics::default();
        registry.register(
            "luthien_data_plane_open_control_streams",
            "Control-plane call streams open on this data plane",
            control.open_streams.clone(),
        );
        registry.register(
            "luthien_control_plane_streams",
            "Call streams opened, by control plane",
            control.streams.clone(),
        );
        registry.register(
            "luthien_control_plane_failures",
            "Failures calls saw on a control plane (stream refused, broken or silent), by control plane",
            control.failures.clone(),
        );
        registry.register(
            "luthien_control_plane_ejections",
            "Times a control plane was taken out of rotation for a back-off, by control plane",
            control.ejections.clone(),
        );
        registry.register(
            "luthien_control_plane_retries",
            "Calls moved to another control plane because the one chosen could not take them",
            control.retries.clone(),
        );
        registry.register(
            "luthien_control_plane_retries_refused",
            "Moves to another control plane the retry budget refused (the fail mode applied)",
            control.retries_refused.clone(),
        );
        registry.register(
            "luthien_requests_sent_before_decision",
            "Calls sent upstream at the same time as their CallStart, because the control plane's last decision said its chain does not inspect requests",
            control.sent_before_decision.clone(),
        );
        registry.register(
            "luthien_control_plane_serving",
            "1 while a control plane reports SERVING on grpc.health.v1, else 0",
            control.serving.clone(),
        );
        let spool = SpoolMetrics::default();
        registry.register(
            "luthien_unpoliced_calls_spooled",
            "Calls let through without policies (fail-open, no control plane took them), kept for a control plane to record",
            spool.spooled.clone(),
        );
        registry.register(
            "luthien_unpoliced_calls_recorded",
            "Unpoliced calls a control plane recorded",
            spool.recorded.clone(),
        );
        registry.register(
            "luthien_unpoliced_calls_dropped",
            "Unpoliced calls dropped because the spool was full (--unpoliced-spool-bytes); they are not recorded",
            spool.dropped.clone(),
        );
        Self {
            spool,
            registry,
            models: BoundedLabels::new(shared::MAX_MODEL_LABELS),
            calls,
            passthrough,
            overhead,
            upstream,
            first_chunk,
            chunks,
            control,
        }
    }

    pub fn observe(family: &Histograms, api: &'static str, duration: Duration) {
        family
            .get_or_create(&ApiLabels { api })
            .observe(duration.as_secs_f64());
    }

    pub fn render(&self) -> String {
        shared::encode(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements the open-streams gauge when a call's stream goes away.
pub struct OpenStream(Gauge);

impl OpenStream {
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = shared::respond(accept, state.metrics.render());
    ([(header::CONTENT_TYPE, content_type)], body)
}
