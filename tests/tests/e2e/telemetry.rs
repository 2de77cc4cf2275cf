//! Traces and metrics end to end, against a real data plane + control plane.
//!
//! Telemetry is process-global, so this suite installs the OTLP exporter once
//! per test process, pointed at an in-process test receiver: the collector's
//! gRPC `TraceService`, served with tonic on port 0. Spans of other suites in
//! the same process reach it too; every check here selects its own calls.
//! The tests then check what a real run emits: one trace per call across both
//! planes, its parent/child structure and attributes, the `/metrics` of both
//! planes, and that the Grafana dashboards only query names the code emits.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use luthien_proto::policy::v1::policy_request::Message as ToServer;
use luthien_proto::policy::v1::policy_request_result::Action;
use luthien_proto::policy::v1::policy_response::Message as FromServer;
use luthien_proto::policy::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use luthien_proto::policy::v1::{
    DescribeRequest, Phase, PolicyContinue, PolicyDescription, PolicyRequest, PolicyRequestResult,
    PolicyResponse,
};
use luthien_store::{Store, StoreOptions};
use luthien_telemetry::LogFormat;
use luthien_tests::client::{Client, TestResponse};
use luthien_tests::databases::TestDatabase;
use luthien_tests::stack::{Stack, StackOptions};
use luthien_tests::wait;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;

/// The test OTLP receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts the receiver (on a runtime of its own, which outlives every test's
/// runtime) and installs the exporter, once per process.
fn receiver() -> &'static Receiver {
    static RECEIVER: OnceLock<Receiver> = OnceLock::new();
    RECEIVER.get_or_init(|| {
        let receiver = Receiver::default();
        let service = receiver.clone();
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                address_tx.send(listener.local_addr().unwrap()).unwrap();
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(service))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await
                    .unwrap();
            });
        });
        let address = address_rx.recv().unwrap();
        luthien_telemetry::init_with_otlp_endpoint(
            LogFormat::Text,
            &format!("http://{address}"),
            "luthien-e2e",
        )
        .unwrap();
        receiver
    })
}

impl Receiver {
    /// Flushes the exporter until `done` holds for the spans received.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            tokio::task::spawn_blocking(luthien_telemetry::flush)
                .await
                .unwrap();
            let spans = self.spans.lock().unwrap().clone();
            if done(&spans) {
                return spans;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not received in 20 s; got {:#?}",
                spans
                    .iter()
                    .map(|span| (&span.name, hex(&span.trace_id)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// An attribute as text (strings, integers, booleans, arrays joined by `,`).
fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(text(value))
}

fn text(value: &Value) -> String {
    match value {
        Value::StringValue(text) => text.clone(),
        Value::IntValue(number) => number.to_string(),
        Value::BoolValue(flag) => flag.to_string(),
        Value::DoubleValue(number) => number.to_string(),
        Value::ArrayValue(array) => array
            .values
            .iter()
            .filter_map(|value| value.value.as_ref())
            .map(text)
            .collect::<Vec<_>>()
            .join(","),
        other => format!("{other:?}"),
    }
}

fn with_call_id<'a>(spans: &'a [Span], name: &str, call_id: &str) -> Option<&'a Span> {
    spans
        .iter()
        .find(|span| span.name == name && attr(span, "luthien.call_id").as_deref() == Some(call_id))
}

fn children<'a>(spans: &'a [Span], parent: &Span, name: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|span| {
            span.name == name
                && span.trace_id == parent.trace_id
                && span.parent_span_id == parent.span_id
        })
        .collect()
}

async fn database_stack(yaml: &str, database: &TestDatabase) -> Stack {
    Stack::start(StackOptions {
        database_url: Some(database.url.clone()),
        ..StackOptions::yaml(yaml)
    })
    .await
}

async fn store(database: &TestDatabase) -> Store {
    Store::open(
        &database.url,
        StoreOptions {
            migrate: false,
            ..StoreOptions::default()
        },
    )
    .await
    .expect("open store")
}

/// A request-side policy and a response-side one.
const TRANSFORMING: &str = "policies:
  - {type: string_replace, config: {replacements: [{from: zebra, to: okapi}], apply_to: request}}
  - {type: all_caps}
";
const CLIENT_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN_ID: &str = "b7ad6b7169203331";

#[tokio::test]
async fn a_call_is_one_trace_across_both_planes_continuing_the_clients() {
    let receiver = receiver();
    let database = TestDatabase::sqlite().await;
    let stack = database_stack(TRANSFORMING, &database).await;
    let traceparent = format!("00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01");
    let body = json!({
        "model": "gpt-4o-mini",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "secret body text fox?"}],
    });
    let response = Client::new()
        .post(
            &stack.openai_url(),
            &[("traceparent", &traceparent)],
            body.to_string(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let call_id = response.header("x-luthien-call-id").unwrap().to_owned();

    let spans = receiver
        .wait_for("both planes' spans of the call", |spans| {
            with_call_id(spans, "chat gpt-4o-mini", &call_id).is_some()
                && with_call_id(spans, "luthien.control_plane.call", &call_id).is_some()
        })
        .await;

    // The data plane's root span continues the client's trace.
    let root = with_call_id(&spans, "chat gpt-4o-mini", &call_id).unwrap();
    assert_eq!(hex(&root.trace_id), CLIENT_TRACE_ID);
    assert_eq!(hex(&root.parent_span_id), CLIENT_SPAN_ID);
    assert_eq!(root.kind, 2, "SPAN_KIND_SERVER");
    for (key, expected) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o-mini"),
        ("gen_ai.request.stream", "false"),
        ("gen_ai.request.max_tokens", "64"),
        ("http.response.status_code", "200"),
        ("trace_id", CLIENT_TRACE_ID),
    ] {
        assert_eq!(attr(root, key).as_deref(), Some(expected), "{key}");
    }

    // Its children: the upstream call and the waits for the control plane.
    let upstream = children(&spans, root, "luthien.upstream");
    assert_eq!(upstream.len(), 1, "one upstream span under the root");
    assert_eq!(upstream[0].kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(
        children(&spans, root, "luthien.control_plane.request").len(),
        1
    );
    assert_eq!(
        children(&spans, root, "luthien.control_plane.response").len(),
        1,
        "a transforming chain is waited for on the response too"
    );

    // The control plane joined the same trace, under the data plane's root.
    let control = with_call_id(&spans, "luthien.control_plane.call", &call_id).unwrap();
    assert_eq!(control.trace_id, root.trace_id);
    assert_eq!(control.parent_span_id, root.span_id);
    for (key, expected) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o-mini"),
        ("luthien.outcome", "COMPLETED"),
    ] {
        assert_eq!(attr(control, key).as_deref(), Some(expected), "{key}");
    }
    assert!(attr(control, "gen_ai.response.model").is_some());
    assert!(attr(control, "gen_ai.response.finish_reasons").is_some());
    assert!(attr(control, "gen_ai.usage.input_tokens").is_some());
    assert!(attr(control, "gen_ai.usage.output_tokens").is_some());

    // One span per policy hook that runs, under the control plane's span:
    // all_caps only looks at responses, so its request hook is skipped (the
    // response hooks of a transforming chain all run).
    let policies = children(&spans, control, "luthien.policy");
    let hooks: BTreeSet<(String, String)> = policies
        .iter()
        .map(|span| {
            (
                attr(span, "luthien.policy.name").unwrap(),
                attr(span, "luthien.policy.phase").unwrap(),
            )
        })
        .collect();
    let expected = [
        ("string_replace", "request"),
        ("string_replace", "response"),
        ("all_caps", "response"),
    ];
    assert_eq!(
        hooks,
        expected
            .iter()
            .map(|(name, phase)| (name.to_string(), phase.to_string()))
            .collect()
    );

    // The upstream provider got the trace context of the upstream span.
    let forwarded = stack.mock.requests().last().unwrap().clone();
    let upstream_traceparent = forwarded.header("traceparent").unwrap();
    assert_eq!(
        upstream_traceparent,
        format!("00-{CLIENT_TRACE_ID}-{}-01", hex(&upstream[0].span_id))
    );

    // The call's record names its trace.
    let (recorded, _) = wait::ended_call(&store(&database).await, &call_id).await;
    assert_eq!(recorded.trace_id.as_deref(), Some(CLIENT_TRACE_ID));

    // Bodies never become attributes.
    for span in spans.iter().filter(|span| span.trace_id == root.trace_id) {
        for kv in &span.attributes {
            let value = kv.value.as_ref().and_then(|v| v.value.as_ref()).map(text);
            assert!(
                !value.unwrap_or_default().contains("secret body text"),
                "{} carries a body in {}",
                span.name,
                kv.key
            );
        }
    }
}

#[tokio::test]
async fn a_streamed_call_without_client_context_starts_its_own_trace() {
    let receiver = receiver();
    let database = TestDatabase::sqlite().await;
    let stack = database_stack("policies: [{type: noop}]", &database).await;
    let body = json!({
        "model": "claude-test",
        "max_tokens": 32,
        "stream": true,
        "messages": [{"role": "user", "content": "hi"}],
    });
    let (response, _) = Client::new()
        .post_frames(
            &stack.anthropic_url(),
            &[("anthropic-version", "2023-06-01")],
            body.to_string(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let call_id = response.header("x-luthien-call-id").unwrap().to_owned();
    let spans = receiver
        .wait_for("the streamed call's spans", |spans| {
            with_call_id(spans, "chat claude-test", &call_id).is_some()
                && with_call_id(spans, "luthien.control_plane.call", &call_id).is_some()
        })
        .await;
    let root = with_call_id(&spans, "chat claude-test", &call_id).unwrap();
    assert!(root.parent_span_id.is_empty(), "a root span");
    assert_eq!(
        attr(root, "gen_ai.provider.name").as_deref(),
        Some("anthropic")
    );
    assert_eq!(attr(root, "gen_ai.request.stream").as_deref(), Some("true"));
    assert_eq!(
        attr(root, "trace_id").as_deref(),
        Some(hex(&root.trace_id).as_str())
    );
    let control = with_call_id(&spans, "luthien.control_plane.call", &call_id).unwrap();
    assert_eq!(control.trace_id, root.trace_id);
    assert_eq!(control.parent_span_id, root.span_id);
    // The trace the data plane started is the one the call's record names.
    let (recorded, _) = wait::ended_call(&store(&database).await, &call_id).await;
    assert_eq!(recorded.trace_id, Some(hex(&root.trace_id)));
    let forwarded = stack.mock.requests().last().unwrap().clone();
    assert!(
        forwarded
            .header("traceparent")
            .unwrap()
            .contains(&hex(&root.trace_id))
    );
}

/// A remote policy server that asks for the request phase only, passes it,
/// and keeps the trace context each call's stream brought.
#[derive(Clone, Default)]
struct TraceRecordingPolicy {
    traceparents: Arc<Mutex<Vec<Seen>>>,
}

/// A stream's `PolicyCallStart.traceparent` and its `traceparent` metadata.
type Seen = (String, Option<String>);

#[tonic::async_trait]
impl PolicyService for TraceRecordingPolicy {
    async fn describe(
        &self,
        _: tonic::Request<DescribeRequest>,
    ) -> Result<tonic::Response<PolicyDescription>, tonic::Status> {
        Ok(tonic::Response::new(PolicyDescription {
            name: "trace-recorder".into(),
            phases: vec![Phase::Request as i32],
            read_only: false,
        }))
    }

    type ProcessCallStream = ReceiverStream<Result<PolicyResponse, tonic::Status>>;

    async fn process_call(
        &self,
        request: tonic::Request<tonic::Streaming<PolicyRequest>>,
    ) -> Result<tonic::Response<Self::ProcessCallStream>, tonic::Status> {
        let metadata = request
            .metadata()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut inbound = request.into_inner();
        let (replies, stream) = tokio::sync::mpsc::channel(4);
        let traceparents = Arc::clone(&self.traceparents);
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let answer = match message.message {
                    Some(ToServer::Start(start)) => {
                        let seen = (start.traceparent, metadata.clone());
                        traceparents.lock().unwrap().push(seen);
                        continue;
                    }
                    Some(ToServer::Request(_)) => FromServer::RequestResult(PolicyRequestResult {
                        action: Some(Action::ContinueRequest(PolicyContinue { body: None })),
                    }),
                    _ => continue,
                };
                let reply = PolicyResponse {
                    message: Some(answer),
                };
                if replies.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(stream)))
    }
}

#[tokio::test]
async fn a_remote_policy_server_joins_the_call_trace_under_its_exchange_span() {
    let receiver = receiver();
    let policy = TraceRecordingPolicy::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PolicyServiceServer::new(policy.clone()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown.clone().cancelled_owned(),
            ),
    );
    let _stop = shutdown.drop_guard();
    let yaml = format!(
        "policies:\n  - type: remote\n    name: recorder\n    config: {{endpoint: '{url}'}}\n"
    );
    let stack = Stack::start(StackOptions::yaml(&yaml)).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let response = Client::new()
        .post(&stack.openai_url(), &[], body.to_string())
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let call_id = response.header("x-luthien-call-id").unwrap().to_owned();

    let spans = receiver
        .wait_for("the remote policy exchange span", |spans| {
            with_call_id(spans, "chat gpt-4o-mini", &call_id).is_some()
                && with_call_id(spans, "luthien.remote_policy", &call_id).is_some()
        })
        .await;
    let root = with_call_id(&spans, "chat gpt-4o-mini", &call_id).unwrap();
    let exchange = with_call_id(&spans, "luthien.remote_policy", &call_id).unwrap();
    assert_eq!(exchange.trace_id, root.trace_id);
    assert_eq!(exchange.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(
        attr(exchange, "luthien.policy.phase").as_deref(),
        Some("request")
    );
    let parent = spans
        .iter()
        .find(|span| span.span_id == exchange.parent_span_id)
        .expect("the exchange span's parent");
    assert_eq!(parent.name, "luthien.policy");
    assert_eq!(
        attr(parent, "luthien.policy.name").as_deref(),
        Some("recorder")
    );

    // The server was handed the exchange span as its parent, in the start
    // message and in the gRPC metadata alike.
    let expected = format!(
        "00-{}-{}-01",
        hex(&exchange.trace_id),
        hex(&exchange.span_id)
    );
    let seen = policy.traceparents.lock().unwrap().clone();
    assert_eq!(seen, vec![(expected.clone(), Some(expected))]);
}

/// One exposition: sample values by series (`name{labels}`) and the names
/// of every series the families declare (`# TYPE` lines expanded).
#[derive(Debug, Default)]
struct Exposition {
    samples: HashMap<String, f64>,
    names: BTreeSet<String>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut parsed = Exposition::default();
        for line in text.lines() {
            if let Some(declaration) = line.strip_prefix("# TYPE ") {
                let mut parts = declaration.split_whitespace();
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_sum", "_count"],
                    _ => &[""],
                };
                for suffix in suffixes {
                    parsed.names.insert(format!("{name}{suffix}"));
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = series.split('{').next().unwrap();
            parsed.names.insert(name.to_owned());
            if let Ok(value) = value.parse::<f64>() {
                parsed.samples.insert(series.to_owned(), value);
            }
        }
        parsed
    }

    /// The sum of every series of `name`, whose labels contain `filter`.
    fn sum(&self, name: &str, filter: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| series.split('{').next() == Some(name) && series.contains(filter))
            .map(|(_, value)| value)
            .sum()
    }
}

async fn scrape(base: &str) -> Exposition {
    let accept = ("accept", "application/openmetrics-text; version=1.0.0");
    let response: TestResponse = luthien_tests::client::read(
        Client::new()
            .send("GET", &format!("{base}/metrics"), &[accept], "")
            .await,
    )
    .await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    Exposition::parse(response.text())
}

/// Without an `Accept` asking for OpenMetrics (a classic scraper, curl), `/metrics` speaks
/// the classic Prometheus text format: each counter's family named like its `_total` sample,
/// no `# EOF`; HELP texts are sentences ending in one period.
#[tokio::test]
async fn metrics_speak_the_classic_format_unless_openmetrics_is_asked_for() {
    let stack = Stack::start(StackOptions::default()).await;
    some_calls(&stack).await;
    for base in [stack.proxy.clone(), stack.debug_http.clone().unwrap()] {
        let response: TestResponse = luthien_tests::client::read(
            Client::new()
                .send(
                    "GET",
                    &format!("{base}/metrics"),
                    &[("accept", "text/plain")],
                    "",
                )
                .await,
        )
        .await;
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = response.text();
        assert!(!text.contains("# EOF"), "{base}");
        let mut counters = 0;
        for line in text.lines() {
            if let Some(help) = line.strip_prefix("# HELP ") {
                assert!(
                    help.ends_with('.') && !help.ends_with(".."),
                    "one period: {line}"
                );
            }
            if let Some(name) = line
                .strip_prefix("# TYPE ")
                .and_then(|rest| rest.strip_suffix(" counter"))
            {
                counters += 1;
                assert!(name.ends_with("_total"), "{line}");
                assert!(
                    text.lines().any(|sample| sample
                        .strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))),
                    "the family {name} has its samples under its name"
                );
            }
        }
        assert!(counters > 3, "{base}: {text}");
    }
}

async fn some_calls(stack: &Stack) {
    let client = Client::new();
    for (url, model, stream, headers) in [
        (stack.openai_url(), "gpt-4o-mini", false, vec![]),
        (stack.openai_url(), "gpt-4o-mini", true, vec![]),
        (
            stack.anthropic_url(),
            "claude-test",
            true,
            vec![("anthropic-version", "2023-06-01")],
        ),
        (
            stack.anthropic_url(),
            "claude-test",
            false,
            vec![("anthropic-version", "2023-06-01")],
        ),
    ] {
        let body = json!({
            "model": model,
            "max_tokens": 16,
            "stream": stream,
            "messages": [{"role": "user", "content": "hello there"}],
        });
        let (response, _) = client.post_frames(&url, &headers, body.to_string()).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
}

/// Polls the control plane's exposition until `done`.
async fn scrape_until(base: &str, what: &str, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let exposition = scrape(base).await;
        if done(&exposition) {
            return exposition;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {exposition:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_of_both_planes_move_with_calls() {
    receiver();
    let database = TestDatabase::sqlite().await;
    let stack = database_stack(TRANSFORMING, &database).await;
    let control = stack.debug_http.clone().unwrap();
    let data_before = scrape(&stack.proxy).await;
    let control_before = scrape(&control).await;
    assert_eq!(data_before.sum("luthien_calls_total", ""), 0.0);

    some_calls(&stack).await;

    let data = scrape(&stack.proxy).await;
    assert_eq!(data.sum("luthien_calls_total", ""), 4.0);
    assert_eq!(
        data.sum("luthien_calls_total", r#"model="gpt-4o-mini""#),
        2.0
    );
    assert_eq!(
        data.sum("luthien_calls_total", r#"api="anthropic_messages""#),
        2.0
    );
    assert_eq!(data.sum("luthien_calls_total", r#"status="200""#), 4.0);
    assert_eq!(data.sum("luthien_upstream_duration_seconds_count", ""), 4.0);
    assert_eq!(
        data.sum("luthien_time_to_first_chunk_seconds_count", ""),
        2.0
    );
    assert!(data.sum("luthien_stream_chunks_total", "") >= 2.0);
    // Streamed calls report their overhead when the stream ends.
    let data = scrape_until(&stack.proxy, "overhead of every call", |data| {
        data.sum("luthien_overhead_seconds_count", "") == 4.0
    })
    .await;
    assert!(
        data.names
            .contains("luthien_data_plane_open_control_streams")
    );

    let control_after = scrape_until(&control, "the control plane's counters", |after| {
        after.sum("luthien_control_plane_calls_total", "")
            >= control_before.sum("luthien_control_plane_calls_total", "") + 4.0
            && after.sum("luthien_events_written_total", "")
                > control_before.sum("luthien_events_written_total", "")
    })
    .await;
    assert!(
        control_after.sum(
            "luthien_policy_duration_seconds_count",
            r#"policy="all_caps""#
        ) > control_before.sum(
            "luthien_policy_duration_seconds_count",
            r#"policy="all_caps""#
        )
    );
    for phase in ["request", "response", "stream_event", "stream_end"] {
        assert!(
            control_after.sum(
                "luthien_policy_duration_seconds_count",
                &format!(r#"phase="{phase}""#)
            ) > 0.0,
            "{phase}"
        );
    }
    // Tokens the mock reported, by model and type, streamed calls included
    // (this stack records, so streams are reconstructed).
    for model in ["gpt-4o-mini", "claude-test"] {
        for token_type in ["input", "output"] {
            let series = format!(r#"model="{model}",token_type="{token_type}""#);
            assert!(
                control_after.sum("luthien_tokens_total", &series)
                    > control_before.sum("luthien_tokens_total", &series),
                "{series}"
            );
        }
    }
    assert_eq!(control_after.sum("luthien_events_dropped_total", ""), 0.0);
    assert!(control_after.sum("luthien_event_batch_duration_seconds_count", "") > 0.0);
    assert!(
        control_after
            .names
            .contains("luthien_control_plane_open_calls")
    );
    assert!(control_after.names.contains("luthien_event_queue_depth"));
}

/// Every dashboard file's queries: PromQL `expr`s and TraceQL queries.
fn dashboard_queries() -> Vec<(String, String, bool)> {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../observability/grafana/dashboards");
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(&directory).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        collect_queries(&dashboard, &file, &mut queries);
    }
    queries
}

fn collect_queries(value: &serde_json::Value, file: &str, out: &mut Vec<(String, String, bool)>) {
    match value {
        serde_json::Value::Object(object) => {
            if let Some(expr) = object.get("expr").and_then(|e| e.as_str()) {
                out.push((file.to_owned(), expr.to_owned(), false));
            }
            if object.get("queryType").and_then(|q| q.as_str()) == Some("traceql")
                && let Some(query) = object.get("query").and_then(|q| q.as_str())
            {
                out.push((file.to_owned(), query.to_owned(), true));
            }
            for child in object.values() {
                collect_queries(child, file, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_queries(item, file, out);
            }
        }
        _ => {}
    }
}

/// Metric names a PromQL expression selects: identifiers followed by a
/// selector (`{`) or range (`[`), and every `luthien_…` identifier.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let selected = regex::Regex::new(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*[\{\[]").unwrap();
    let ours = regex::Regex::new(r"\b((?:luthien|gen_ai)_[A-Za-z0-9_:]+)").unwrap();
    let mut names: BTreeSet<String> = selected
        .captures_iter(expr)
        .map(|c| c[1].to_owned())
        .collect();
    names.extend(ours.captures_iter(expr).map(|c| c[1].to_owned()));
    names
}

#[tokio::test]
async fn dashboards_only_query_names_the_code_emits() {
    let receiver = receiver();
    let database = TestDatabase::sqlite().await;
    let stack = database_stack(TRANSFORMING, &database).await;
    let control = stack.debug_http.clone().unwrap();
    some_calls(&stack).await;

    // Every metric name both planes expose after a real run.
    let mut metric_names = scrape(&stack.proxy).await.names;
    let control_exposition = scrape_until(&control, "events written", |exposition| {
        exposition.sum("luthien_events_written_total", "") > 0.0
    })
    .await;
    metric_names.extend(control_exposition.names);

    // Every span name and span attribute the run exported.
    let spans = receiver
        .wait_for("spans of calls and store batches", |spans| {
            [
                "luthien.control_plane.call",
                "luthien.policy",
                "luthien.store.batch",
                "luthien.upstream",
            ]
            .iter()
            .all(|name| spans.iter().any(|span| span.name == *name))
        })
        .await;
    let span_names: BTreeSet<&str> = spans.iter().map(|span| span.name.as_str()).collect();
    let span_attributes: BTreeSet<&str> = spans
        .iter()
        .flat_map(|span| span.attributes.iter().map(|kv| kv.key.as_str()))
        .collect();

    let queries = dashboard_queries();
    assert!(
        queries.iter().filter(|(_, _, traceql)| !traceql).count() >= 10,
        "dashboards found: {queries:?}"
    );
    let span_name = regex::Regex::new(r#"\bname\s*=\s*"([^"]+)""#).unwrap();
    let span_attribute = regex::Regex::new(r"\bspan\.([A-Za-z0-9_.]+)").unwrap();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (file, query, traceql) in &queries {
        if *traceql {
            for name in span_name.captures_iter(query) {
                checked += 1;
                if !span_names.contains(&name[1]) {
                    problems.push(format!("{file}: span name `{}` is never emitted", &name[1]));
                }
            }
            for key in span_attribute.captures_iter(query) {
                checked += 1;
                if !span_attributes.contains(&key[1]) {
                    problems.push(format!(
                        "{file}: span attribute `{}` is never emitted",
                        &key[1]
                    ));
                }
            }
        } else {
            for name in promql_metric_names(query) {
                checked += 1;
                if !metric_names.contains(&name) {
                    problems.push(format!(
                        "{file}: metric `{name}` is never emitted (in `{query}`)"
                    ));
                }
            }
        }
    }
    assert!(checked >= 15, "too few names checked: {checked}");
    assert!(
        problems.is_empty(),
        "dashboards drifted from the code:\n{}\n\nmetrics emitted: {metric_names:#?}\nspans emitted: {span_names:#?}",
        problems.join("\n")
    );
}

#[test]
fn promql_names_are_extracted() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.95, sum by (le, policy) (rate(luthien_policy_duration_seconds_bucket{phase="request"}[$__rate_interval]))) + luthien_event_queue_depth"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "luthien_event_queue_depth".to_owned(),
            "luthien_policy_duration_seconds_bucket".to_owned()
        ])
    );
}
