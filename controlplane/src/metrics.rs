//! `GET /metrics` of the control plane (Prometheus/OpenMetrics text): calls,
//! policy latency, the health of recording (event queue, writer, retention,
//! activity bus) and the calls in flight.
//!
//! Latencies are histograms shared by the whole process ([`global`]), fed
//! where the work happens with one label lookup and an atomic update. The
//! writer's and the activity bus's counters live in those components and
//! are read as snapshots at scrape time, so scraping never contends with
//! the request path. Policy names are bounded labels (see
//! `luthien_telemetry::metrics::BoundedLabels`).

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use luthien_policy::PolicyMetrics;
use luthien_store::StoreMetrics;
use luthien_telemetry::metrics::{self as shared, BoundedLabels, Label};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio_util::task::TaskTracker;

use crate::activity::ActivityBus;
use luthien_store::EventSink;
use luthien_store::events::TokenUsage;

/// `token_type` follows the GenAI conventions' `gen_ai.token.type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub api: &'static str,
    pub model: Label,
    pub token_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub api: &'static str,
    pub outcome: &'static str,
}

/// Process-wide control-plane metrics.
#[derive(Debug)]
pub struct Global {
    /// Handed to every chain the control plane runs.
    pub policy: Arc<PolicyMetrics>,
    pub calls: Family<CallLabels, Counter>,
    pub model_names: BoundedLabels,
    pub tokens: Family<TokenLabels, Counter>,
    /// Handed to the event writer and retention.
    pub store: Arc<StoreMetrics>,
    /// Policy reloads refused, and 1 while the file on disk is one that was refused.
    pub policy_reload_failures: Counter,
    pub policy_reload_failing: Gauge,
    /// Calls whose request a data plane sent upstream before its decision while their chain
    /// inspects requests (a reload had not yet reached that data plane).
    pub request_decisions_skipped: Counter,
}

/// The process's metrics.
pub fn global() -> &'static Global {
    static GLOBAL: OnceLock<Global> = OnceLock::new();
    GLOBAL.get_or_init(|| Global {
        policy: Arc::default(),
        calls: Family::default(),
        model_names: BoundedLabels::new(shared::MAX_MODEL_LABELS),
        tokens: Family::default(),
        store: Arc::default(),
        policy_reload_failures: Counter::default(),
        policy_reload_failing: Gauge::default(),
        request_decisions_skipped: Counter::default(),
    })
}

impl Global {
    /// Counts the tokens a provider reported for one call.
    pub fn tokens(&self, api: &'static str, model: &str, usage: TokenUsage) {
        for (token_type, count) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
        ] {
            if let Some(count) = count {
                let labels = TokenLabels {
                    api,
                    model: self.model_names.get(model),
                    token_type,
                };
                self.tokens.get_or_create(&labels).inc_by(count);
            }
        }
    }
}

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

async fn metrics(
    State(sources): State<MetricsSources>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = shared::respond(accept, render(&sources));
    ([(header::CONTENT_TYPE, content_type)], body)
}

/// The exposition, as OpenMetrics text.
pub fn render(sources: &MetricsSources) -> String {
    let global = global();
    let mut registry = Registry::default();
    registry.register(
        "luthien_control_plane_calls",
        "Calls the control plane saw end, by API and outcome",
        global.calls.clone(),
    );
    registry.register(
        "luthien_policy_reload_failures",
        "Policy reloads refused (the previous chain stayed active)",
        global.policy_reload_failures.clone(),
    );
    registry.register(
        "luthien_policy_reload_failing",
        "1 while the policy file on disk is one a reload refused, else 0",
        global.policy_reload_failing.clone(),
    );
    registry.register(
        "luthien_request_decisions_skipped",
        "Calls a data plane sent upstream before their request decision while their chain inspects requests (a reload that had not reached it yet); their request was not policed",
        global.request_decisions_skipped.clone(),
    );
    registry.register(
        "luthien_tokens",
        "Tokens the provider reported, by API, requested model and token_type (input, output). Streamed calls count only when the event store is on (their usage comes from reconstruction)",
        global.tokens.clone(),
    );
    global.policy.register(&mut registry);
    global.store.register(&mut registry);
    registry.register_collector(Box::new(Snapshots(sources.clone())));
    let mut text = shared::encode(&registry);
    // Remote policies keep their own counters and render them in the same
    // text format; they go before the exposition's closing `# EOF`.
    let mut remote = String::new();
    global.policy.render_remote(&mut remote);
    if !remote.is_empty() {
        let end = text.rfind("# EOF").unwrap_or(text.len());
        text.insert_str(end, &remote);
    }
    text
}

/// Counters owned by the writer and the activity bus, read at scrape time.
struct Snapshots(MetricsSources);

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshots")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Snapshots {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sources = &self.0;
        gauge(
            &mut encoder,
            "luthien_control_plane_open_calls",
            "Calls whose stream is open on this control plane.",
            sources.calls.len() as u64,
        )?;
        if let Some(sink) = &sources.sink {
            let stats = sink.stats();
            let e = &mut encoder;
            counter(
                e,
                "luthien_events_written",
                "Records stored by the event writer.",
                stats.written,
            )?;
            counter(
                e,
                "luthien_events_dropped",
                "Records dropped because the event queue was full or the writer stopped.",
                stats.dropped,
            )?;
            counter(
                e,
                "luthien_events_rejected",
                "Records the database refused.",
                stats.rejected,
            )?;
            counter(
                e,
                "luthien_event_batch_failures",
                "Event batch writes that failed (each is retried with backoff).",
                stats.failed_batches,
            )?;
            counter(
                e,
                "luthien_event_batches",
                "Event batches stored.",
                stats.batches,
            )?;
            gauge(
                e,
                "luthien_event_queue_depth",
                "Records waiting in the event queue.",
                stats.queue_depth,
            )?;
            gauge(
                e,
                "luthien_event_last_batch_microseconds",
                "Time the last successful event batch took to write.",
                stats.last_batch_micros,
            )?;
            gauge(
                e,
                "luthien_event_writer_retry_backoff_microseconds",
                "While event writes fail, the pause before the next attempt (doubling per failure; 0 while the store keeps up).",
                stats.retry_backoff_micros,
            )?;
        }
        let activity = sources.activity.stats();
        let e = &mut encoder;
        counter(
            e,
            "luthien_activity_published",
            "Activity messages published.",
            activity.published,
        )?;
        counter(
            e,
            "luthien_activity_dropped",
            "Activity messages dropped before publishing (queue full).",
            activity.dropped,
        )?;
        counter(
            e,
            "luthien_activity_publish_failures",
            "Activity messages Redis did not take.",
            activity.publish_failures,
        )?;
        Ok(())
    }
}
