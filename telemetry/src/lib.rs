//! Logging, tracing and metrics set-up shared by every Luthien binary, so
//! all of them read the same flags, `RUST_LOG` and `OTEL_*` variables the
//! same way.
//!
//! * Logs: human-readable by default, `--log-format json` for machines. A
//!   call's lines carry its span fields (`luthien.call_id`, `trace_id`). A
//!   line is formatted where it is logged and written to stdout by a
//!   background thread, so no call waits on a slow pipe or terminal; the
//!   hand-off is bounded (past it lines are dropped, never waited for), and
//!   [`shutdown`] writes out what is left.
//! * Traces: exported by OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER(_ARG)` are read by
//!   the OpenTelemetry SDK as the specification defines them. When unset no
//!   OpenTelemetry layer is installed at all.
//! * Trace context: W3C `traceparent`/`tracestate` ([`propagation`]).
//! * Metrics: the Prometheus registry helpers in [`metrics`].

pub mod metrics;
pub mod propagation;

use std::sync::{Mutex, OnceLock};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use opentelemetry;
pub use prometheus_client;
pub use tracing_opentelemetry;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging flags, flattened into each binary's command line.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long = "log-format", env = "LUTHIEN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The shared token of the data plane ⇄ control plane channel, flattened once into each
/// binary's command line (`luthien up` runs both planes and gives both the same value).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ChannelTokenArgs {
    /// Token the control plane requires on every call stream and the data plane presents
    /// (`authorization: Bearer`); unset, the channel is not authenticated. Comma-separated,
    /// the control plane accepts any of them and the data plane presents the first: a
    /// rotation adds the new token to the control planes, moves the data planes to it, then
    /// drops the old one.
    #[arg(
        long = "control-plane-token",
        env = "LUTHIEN_CONTROL_PLANE_TOKEN",
        hide_env_values = true
    )]
    pub control_plane_token: Option<String>,
}

/// A listen address as flags take it: `ADDRESS:PORT`, or `NAME:PORT` with the name resolved
/// (`localhost:8080`), as other servers accept.
pub fn listen_address(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|error| format!("{text:?} is not ADDRESS:PORT or NAME:PORT: {error}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// The tokens of a `--control-plane-token` value, in order: comma-separated, blanks ignored.
pub fn channel_tokens(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// The tracer provider, kept to flush spans at shutdown.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Keeps the log writer's thread; dropping it writes out the lines still queued.
static LOG_WRITER: Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> = Mutex::new(None);

/// Installs the global subscriber; `RUST_LOG` filters (default `info`).
/// Traces are exported when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, under the
/// service name `luthien` unless `OTEL_SERVICE_NAME` says otherwise.
pub fn init(args: &LogArgs) {
    init_service(args, "luthien");
}

/// Like [`init`], with the service name used when neither
/// `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
pub fn init_service(args: &LogArgs, default_service_name: &str) {
    let configured = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()));
    let sdk_disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value == "true");
    let provider = if configured && !sdk_disabled {
        match tracer_provider(None, default_service_name) {
            Ok(provider) => Some(provider),
            Err(error) => {
                eprintln!("OpenTelemetry export disabled: {error}");
                None
            }
        }
    } else {
        None
    };
    install(args.log_format, provider);
}

/// Installs the global subscriber with span export to the OTLP/gRPC
/// `endpoint`, whatever the environment says (the other `OTEL_*` variables
/// still apply). For embedding and tests.
pub fn init_with_otlp_endpoint(
    format: LogFormat,
    endpoint: &str,
    service_name: &str,
) -> Result<(), String> {
    let provider = tracer_provider(Some(endpoint.to_owned()), service_name)?;
    install(format, Some(provider));
    Ok(())
}

/// Flushes and stops span export; call before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
        let _ = provider.shutdown();
    }
    let writer = LOG_WRITER
        .lock()
        .map(|mut writer| writer.take())
        .unwrap_or_default();
    drop(writer);
}

/// Exports the spans finished so far (tests use it before asserting).
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
}

/// True when spans are exported.
pub fn tracing_enabled() -> bool {
    PROVIDER.get().is_some()
}

fn install(format: LogFormat, provider: Option<SdkTracerProvider>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // 8 Ki lines of hand-off: seconds of a busy access log, a few hundred KiB (the crate's
    // default, 128 Ki lines, is allocated up front and made the data plane 3.5 MiB larger).
    // The writer thread flushes whenever it has emptied the hand-off; the buffer makes that one
    // `write` per batch of lines instead of one per line (stdout alone is line-buffered).
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(8 * 1024)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    // Colour only for a person at a terminal: a log file or collector gets plain text.
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(writer.clone())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .with_current_span(true)
            // Every enclosing span: the call's root carries the call id
            // and trace id also for lines logged in a child span.
            .with_span_list(true)
    });
    let otel = provider.map(|provider| {
        let tracer = provider.tracer("luthien");
        let _ = PROVIDER.set(provider);
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        // Only Luthien's own spans: the exporter's gRPC client must not
        // trace itself, and library internals are noise in a call's trace.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                metadata.target().starts_with("luthien")
            }))
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel)
        .try_init();
    // A second install (tests) leaves the first subscriber and its writer in place.
    if installed.is_ok()
        && let Ok(mut held) = LOG_WRITER.lock()
    {
        *held = Some(guard);
    }
}

fn tracer_provider(
    endpoint: Option<String>,
    default_service_name: &str,
) -> Result<SdkTracerProvider, String> {
    let exporter = exporter_on_own_runtime(endpoint)?;
    let mut resource = Resource::builder().build();
    let named = resource
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if !named {
        resource = Resource::builder()
            .with_service_name(default_service_name.to_owned())
            .build();
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Builds the OTLP/gRPC exporter on a small runtime of its own, so export
/// never competes with request handling and outlives any runtime the
/// caller (or a test) drops.
fn exporter_on_own_runtime(
    endpoint: Option<String>,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let (built, receive) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("otel-export".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = built.send(Err(error.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                let _ = built.send(builder.build().map_err(|error| error.to_string()));
                std::future::pending::<()>().await;
            });
        })
        .map_err(|error| error.to_string())?;
    receive
        .recv()
        .map_err(|_| "exporter thread stopped".to_owned())?
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM, the signals that ask a service
/// to drain and stop. A second one exits at once: whoever asked twice does
/// not want to wait for the drain.
pub async fn cancel_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    next_signal().await;
    tracing::info!("shutdown requested; a second signal exits at once");
    shutdown.cancel();
    next_signal().await;
    tracing::warn!("second shutdown signal: exiting without finishing the drain");
    flush();
    std::process::exit(130);
}

async fn next_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_names_too() {
        assert_eq!(
            listen_address("0.0.0.0:8080").unwrap().to_string(),
            "0.0.0.0:8080"
        );
        let local = listen_address("localhost:8080").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 8080, "{local}");
        assert!(listen_address("localhost").is_err(), "the port is required");
        assert!(listen_address("no-such-host.invalid:80").is_err());
    }

    #[test]
    fn channel_tokens_split_on_commas() {
        let tokens: Vec<&str> = channel_tokens(" old, new ,,").collect();
        assert_eq!(tokens, ["old", "new"]);
    }
}
