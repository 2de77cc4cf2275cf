//! Remote policy servers (`type: remote`) through a real data plane and control plane in front
//! of the mock provider: the Rust example (in-process), the Python examples (subprocesses),
//! and scripted fakes that are slow, crash mid-stream or answer garbage.
//!
//! The Python tests need the packages of `examples/remote-policy-python/requirements.txt`, which
//! `bash .ci/test` installs into `target/test-venv`; without them they fail saying so.
//!
//! `remote_policy_overhead` (ignored) is the benchmark of `docs/BENCHMARKS.md`:
//! `cargo test --release -p luthien-tests --test e2e -- --ignored --nocapture remote_policy::remote_policy_overhead`

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use luthien_proto::common::v1::Api as ProtoApi;
use luthien_proto::policy::v1::policy_request::Message as FromLuthien;
use luthien_proto::policy::v1::policy_request_result::Action;
use luthien_proto::policy::v1::policy_response::Message as ToLuthien;
use luthien_proto::policy::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use luthien_proto::policy::v1::{
    DescribeRequest, Phase, PolicyCallStart, PolicyContinue, PolicyDescription, PolicyEventResult,
    PolicyKeepalive, PolicyRequest, PolicyRequestResult, PolicyResponse, PolicyResponseResult,
    PolicyStreamEndResult,
};
use luthien_tests::wire::events;
use luthien_tests::{Client, MockUpstream, Stack, StackOptions, TestResponse};
use remote_policy_example::guard::Guard;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

// ---------------------------------------------------------------------------------------------
// Calls

const OPENAI_HEADERS: &[(&str, &str)] = &[("authorization", "Bearer sk-client-key")];
const ANTHROPIC_HEADERS: &[(&str, &str)] = &[
    ("anthropic-version", "2023-06-01"),
    ("x-api-key", "sk-ant-client-key"),
];

fn body(openai: bool, stream: bool, text: &str) -> String {
    if openai {
        json!({
            "model": "gpt-4o-mini",
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        })
    } else {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        })
    }
    .to_string()
}

async fn call(
    stack: &Stack,
    openai: bool,
    stream: bool,
    scenario: &str,
    text: &str,
) -> TestResponse {
    let (url, base) = if openai {
        (stack.openai_url(), OPENAI_HEADERS)
    } else {
        (stack.anthropic_url(), ANTHROPIC_HEADERS)
    };
    let mut headers = base.to_vec();
    headers.push(("x-mock-scenario", scenario));
    Client::new()
        .post(&url, &headers, body(openai, stream, text))
        .await
}

/// Names of the tool calls in a response, in order.
fn tool_names(openai: bool, stream: bool, body: &[u8]) -> Vec<String> {
    let name = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    match (openai, stream) {
        (true, false) => {
            let json: Value = serde_json::from_slice(body).unwrap();
            json["choices"][0]["message"]["tool_calls"]
                .as_array()
                .map(|calls| calls.iter().map(|c| name(&c["function"]["name"])).collect())
                .unwrap_or_default()
        }
        (false, false) => {
            let json: Value = serde_json::from_slice(body).unwrap();
            json["content"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|block| block["type"] == "tool_use")
                .map(|block| name(&block["name"]))
                .collect()
        }
        (true, true) => events(body)
            .iter()
            .filter(|event| event.data != "[DONE]")
            .flat_map(|event| {
                event.json()["choices"][0]["delta"]["tool_calls"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|call| call["function"]["name"].as_str().map(str::to_owned))
            .filter(|name| !name.is_empty())
            .collect(),
        (false, true) => events(body)
            .iter()
            .map(|event| event.json())
            .filter(|json| {
                json["type"] == "content_block_start" && json["content_block"]["type"] == "tool_use"
            })
            .map(|json| name(&json["content_block"]["name"]))
            .collect(),
    }
}

/// The assistant text of a response (all text blocks / deltas).
fn text(openai: bool, stream: bool, body: &[u8]) -> String {
    match (openai, stream) {
        (true, false) => {
            let json: Value = serde_json::from_slice(body).unwrap();
            json["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
        (false, false) => {
            let json: Value = serde_json::from_slice(body).unwrap();
            json["content"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|block| block["type"] == "text")
                .map(|block| block["text"].as_str().unwrap().to_owned())
                .collect()
        }
        (true, true) => events(body)
            .iter()
            .filter(|event| event.data != "[DONE]")
            .filter_map(|event| {
                event.json()["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect(),
        (false, true) => events(body)
            .iter()
            .map(|event| event.json())
            .filter(|json| {
                json["type"] == "content_block_delta" && json["delta"]["type"] == "text_delta"
            })
            .filter_map(|json| json["delta"]["text"].as_str().map(str::to_owned))
            .collect(),
    }
}

/// The finish / stop reason of a response.
fn finish_reason(openai: bool, stream: bool, body: &[u8]) -> String {
    let value = match (openai, stream) {
        (true, false) => {
            serde_json::from_slice::<Value>(body).unwrap()["choices"][0]["finish_reason"].clone()
        }
        (false, false) => serde_json::from_slice::<Value>(body).unwrap()["stop_reason"].clone(),
        (true, true) => events(body)
            .iter()
            .filter(|event| event.data != "[DONE]")
            .map(|event| event.json()["choices"][0]["finish_reason"].clone())
            .rfind(|reason| !reason.is_null())
            .unwrap_or(Value::Null),
        (false, true) => events(body)
            .iter()
            .map(|event| event.json())
            .filter(|json| json["type"] == "message_delta")
            .map(|json| json["delta"]["stop_reason"].clone())
            .next_back()
            .unwrap_or(Value::Null),
    };
    value.as_str().unwrap_or_default().to_owned()
}

/// A streamed body is well framed and properly ended.
fn assert_stream_ends_cleanly(openai: bool, body: &[u8]) {
    let events = events(body);
    if openai {
        assert_eq!(
            events.last().map(|e| e.data.as_str()),
            Some("[DONE]"),
            "{events:?}"
        );
        assert_eq!(
            events.iter().filter(|e| e.data == "[DONE]").count(),
            1,
            "{events:?}"
        );
    } else {
        assert_eq!(
            events.last().and_then(|e| e.event.as_deref()),
            Some("message_stop")
        );
        let starts = events
            .iter()
            .filter(|e| e.event.as_deref() == Some("content_block_start"))
            .count();
        let stops = events
            .iter()
            .filter(|e| e.event.as_deref() == Some("content_block_stop"))
            .count();
        assert_eq!(starts, stops, "every block is closed: {events:?}");
    }
}

const BOTH_APIS_STREAMED_AND_NOT: [(bool, bool); 4] =
    [(true, false), (true, true), (false, false), (false, true)];

/// The mock's `tools` scenario calls `get_weather {"city":"Paris"}` and
/// `bash {"command":"ls -la /tmp && echo \"done\""}`: with `/workspace` allowed, `bash` goes.
async fn assert_path_guard_applies(stack: &Stack) {
    for (openai, stream) in BOTH_APIS_STREAMED_AND_NOT {
        let case = format!("openai={openai} stream={stream}");
        let response = call(stack, openai, stream, "tools", "what is up").await;
        assert_eq!(response.status, 200, "{case}: {}", response.text());
        assert_eq!(
            tool_names(openai, stream, &response.body),
            ["get_weather"],
            "{case}: {}",
            response.text()
        );
        let text = text(openai, stream, &response.body);
        assert!(
            text.contains("Removed the call to `bash`") && text.contains("/tmp"),
            "{case}: {text:?}"
        );
        // One call is left, so the finish reason still asks for tools.
        let expected = if openai { "tool_calls" } else { "tool_use" };
        assert_eq!(
            finish_reason(openai, stream, &response.body),
            expected,
            "{case}"
        );
        if stream {
            assert_stream_ends_cleanly(openai, &response.body);
            if openai {
                let arguments = luthien_tests::wire::openai_stream_tool_arguments(&response.body);
                assert_eq!(arguments, ["{\"city\":\"Paris\"}"], "{case}");
            } else {
                let inputs = luthien_tests::wire::anthropic_stream_tool_inputs(&response.body);
                assert_eq!(inputs, ["{\"city\":\"Paris\"}"], "{case}");
            }
        }
        // A text-only answer passes untouched.
        let plain = call(stack, openai, stream, "text", "hi").await;
        assert_eq!(plain.status, 200);
        assert!(tool_names(openai, stream, &plain.body).is_empty());
        assert!(!text_of(openai, stream, &plain).contains("path-guard"));
    }
}

fn text_of(openai: bool, stream: bool, response: &TestResponse) -> String {
    text(openai, stream, &response.body)
}

fn remote_yaml(name: &str, url: &str, extra: &str) -> String {
    format!("  - type: remote\n    name: {name}\n    config: {{endpoint: '{url}'{extra}}}\n")
}

fn chain(entries: &[String]) -> String {
    format!("policies:\n{}", entries.concat())
}

// ---------------------------------------------------------------------------------------------
// Servers

/// A tonic `PolicyService` on a fresh loopback port, stopped when dropped.
struct Served {
    url: String,
    shutdown: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn serve_rust_example() -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(remote_policy_example::serve(
        listener,
        Guard::new("/workspace"),
        shutdown.clone().cancelled_owned(),
    ));
    Served { url, shutdown }
}

async fn serve_fake(fake: Fake) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PolicyServiceServer::new(fake))
            .serve_with_incoming_shutdown(incoming(listener), shutdown.clone().cancelled_owned()),
    );
    Served { url, shutdown }
}

/// Accepted connections with `TCP_NODELAY`: without it, a reply written in two pieces waits
/// for the peer's delayed ACK (~40 ms). (`Server::tcp_nodelay` does not apply to a listener
/// passed to `serve_with_incoming`.)
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

use luthien_tests::python::{interpreter as python, repo_root};

static PYTHON_READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Checks the Python deps and generates the stubs once (so that servers started in parallel
/// do not all write them).
async fn python_ready() {
    PYTHON_READY
        .get_or_init(|| async {
            let root = repo_root();
            let python = python();
            luthien_tests::python::require(
                "grpc, grpc_tools, google.protobuf",
                "the Python example",
            );
            let stubs = Command::new(&python)
                .arg(root.join("examples/remote-policy-python/stubs.py"))
                .output()
                .unwrap();
            assert!(
                stubs.status.success(),
                "stub generation failed: {}",
                String::from_utf8_lossy(&stubs.stderr)
            );
        })
        .await;
}

/// A Python example server as a subprocess, killed when dropped.
struct PythonServer {
    child: Child,
    url: String,
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_python(script: &str, args: &[&str]) -> PythonServer {
    python_ready().await;
    let mut child = Command::new(python())
        .arg(
            repo_root()
                .join("examples/remote-policy-python")
                .join(script),
        )
        .args(["--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the Python interpreter starts");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .expect("the Python server says where it listens within 60 s")
    .unwrap()
    .unwrap();
    let address = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|address| address.contains(':'))
        .unwrap_or_else(|| panic!("unexpected first line from {script}: {line:?}"))
        .to_owned();
    PythonServer {
        child,
        url: format!("http://{address}"),
    }
}

/// What a scripted fake does wrong.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// Waits this long before every result (sending keepalives every 100 ms when asked).
    Slow(Duration, bool),
    /// Answers this many events, then fails the stream.
    CrashAfterEvents(u64),
    /// Answers the response phase with a body that is not JSON.
    GarbageResponse,
    /// Answers the request phase with an event result.
    WrongKind,
}

/// A scripted `PolicyService`: passes everything unchanged (or appends ` remote` to response
/// text when `tag`), records what it was sent.
#[derive(Clone)]
struct Fake {
    phases: Vec<Phase>,
    fault: Fault,
    tag: bool,
    /// Kind and body of every message received, over all calls.
    seen: Arc<Mutex<Vec<(String, String)>>>,
    /// Every call's start message with the stream's `traceparent` metadata.
    starts: Arc<Mutex<Vec<StartSeen>>>,
}

impl Fake {
    fn new(fault: Fault) -> Self {
        Self {
            phases: Vec::new(),
            fault,
            tag: false,
            seen: Arc::default(),
            starts: Arc::default(),
        }
    }

    fn kinds(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(kind, _)| kind.clone())
            .collect()
    }

    fn bodies(&self, kind: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(seen, _)| seen == kind)
            .map(|(_, body)| body.clone())
            .collect()
    }
}

/// A call's start message and its stream's `traceparent` metadata.
type StartSeen = (PolicyCallStart, Option<String>);

fn reply(message: ToLuthien) -> Result<PolicyResponse, Status> {
    Ok(PolicyResponse {
        message: Some(message),
    })
}

#[tonic::async_trait]
impl PolicyService for Fake {
    async fn describe(
        &self,
        _: Request<DescribeRequest>,
    ) -> Result<Response<PolicyDescription>, Status> {
        Ok(Response::new(PolicyDescription {
            name: "fake".into(),
            phases: self.phases.iter().map(|phase| *phase as i32).collect(),
            read_only: false,
        }))
    }

    type ProcessCallStream = ReceiverStream<Result<PolicyResponse, Status>>;

    async fn process_call(
        &self,
        request: Request<Streaming<PolicyRequest>>,
    ) -> Result<Response<Self::ProcessCallStream>, Status> {
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut inbound = request.into_inner();
        let (replies, stream) = mpsc::channel(16);
        let fake = self.clone();
        tokio::spawn(async move {
            let mut api = ProtoApi::Unspecified;
            let mut answered_events = 0;
            while let Ok(Some(PolicyRequest {
                message: Some(message),
            })) = inbound.message().await
            {
                if let FromLuthien::Start(start) = &message {
                    let start = (start.clone(), traceparent.clone());
                    fake.starts.lock().unwrap().push(start);
                }
                let (kind, body) = match &message {
                    FromLuthien::Start(start) => ("start", start.api().as_str_name().to_owned()),
                    FromLuthien::Request(r) => ("request", String::from_utf8_lossy(&r.body).into()),
                    FromLuthien::Response(r) => {
                        ("response", String::from_utf8_lossy(&r.body).into())
                    }
                    FromLuthien::Event(e) => ("event", String::from_utf8_lossy(&e.data).into()),
                    FromLuthien::StreamEnd(_) => ("stream_end", String::new()),
                };
                fake.seen.lock().unwrap().push((kind.to_owned(), body));
                if let Fault::Slow(delay, keepalives) = fake.fault {
                    let until = tokio::time::Instant::now() + delay;
                    while tokio::time::Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if keepalives {
                            let _ = replies
                                .send(reply(ToLuthien::Keepalive(PolicyKeepalive {})))
                                .await;
                        }
                    }
                }
                let answer = match message {
                    FromLuthien::Start(start) => {
                        api = start.api();
                        continue;
                    }
                    FromLuthien::Request(_) if fake.fault == Fault::WrongKind => {
                        ToLuthien::EventResult(PolicyEventResult::default())
                    }
                    FromLuthien::Request(_) => ToLuthien::RequestResult(PolicyRequestResult {
                        action: Some(Action::ContinueRequest(PolicyContinue { body: None })),
                    }),
                    FromLuthien::Response(_) if fake.fault == Fault::GarbageResponse => {
                        ToLuthien::ResponseResult(PolicyResponseResult {
                            body: Some(Bytes::from_static(b"{\"choices\": [")),
                        })
                    }
                    FromLuthien::Response(response) => {
                        let body = fake.tag.then(|| {
                            let mut body: Value = serde_json::from_slice(&response.body).unwrap();
                            let text = if api == ProtoApi::OpenaiChat {
                                &mut body["choices"][0]["message"]["content"]
                            } else {
                                &mut body["content"][0]["text"]
                            };
                            *text = json!(format!("{} remote", text.as_str().unwrap_or_default()));
                            Bytes::from(body.to_string())
                        });
                        ToLuthien::ResponseResult(PolicyResponseResult { body })
                    }
                    FromLuthien::Event(event) => {
                        if fake.fault == Fault::CrashAfterEvents(answered_events) {
                            let _ = replies.send(Err(Status::internal("policy crashed"))).await;
                            return;
                        }
                        answered_events += 1;
                        ToLuthien::EventResult(PolicyEventResult {
                            seq: event.seq,
                            events: vec![event],
                        })
                    }
                    FromLuthien::StreamEnd(_) => {
                        ToLuthien::StreamEndResult(PolicyStreamEndResult::default())
                    }
                };
                if replies.send(reply(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

// ---------------------------------------------------------------------------------------------
// The examples

#[tokio::test]
async fn the_rust_example_removes_tool_calls_outside_the_allowed_dir() {
    let server = serve_rust_example().await;
    let stack = Stack::start(StackOptions::yaml(&chain(&[remote_yaml(
        "path-guard",
        &server.url,
        "",
    )])))
    .await;
    assert_path_guard_applies(&stack).await;
}

/// Both examples guard the Responses API too (the Rust one through `tool_calls`' rules, the
/// Python one by hand): the SDK sees the `bash` call replaced by a message, streamed and not.
#[tokio::test]
async fn the_examples_guard_the_responses_api_too() {
    let rust = serve_rust_example().await;
    assert_path_guard_applies_to_responses(&rust.url).await;
    let python = start_python("server.py", &["--allowed-dir", "/workspace"]).await;
    assert_path_guard_applies_to_responses(&python.url).await;
}

async fn assert_path_guard_applies_to_responses(server: &str) {
    let stack = Stack::start(StackOptions::yaml(&chain(&[remote_yaml(
        "path-guard",
        server,
        "",
    )])))
    .await;
    for (call, stream) in [("create", false), ("create", true), ("stream", false)] {
        let mut kwargs = json!({"model": "gpt-5", "input": "what is up"});
        if stream {
            kwargs["stream"] = json!(true);
        }
        let spec = json!({"call": call, "kwargs": kwargs, "headers": {"x-mock-scenario": "tools"}});
        let printed =
            luthien_tests::python::responses_sdk(&format!("{}/v1", stack.proxy), &spec).await;
        let output = printed["result"]["output"]
            .as_array()
            .unwrap_or_else(|| panic!("{call} stream={stream}: {printed}"));
        let kinds: Vec<(&str, &str)> = output
            .iter()
            .map(|item| {
                let kind = item["type"].as_str().unwrap();
                let name = item["name"].as_str().unwrap_or("");
                (kind, name)
            })
            .collect();
        assert_eq!(
            kinds,
            [("function_call", "get_weather"), ("message", "")],
            "{printed}"
        );
        let text = output[1]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("Removed the call to `bash`"), "{text}");
    }
}

#[tokio::test]
async fn the_python_example_removes_tool_calls_outside_the_allowed_dir() {
    let server = start_python("server.py", &["--allowed-dir", "/workspace"]).await;
    let stack = Stack::start(StackOptions::yaml(&chain(&[remote_yaml(
        "path-guard-py",
        &server.url,
        "",
    )])))
    .await;
    assert_path_guard_applies(&stack).await;
}

#[tokio::test]
async fn the_minimal_python_example_blocks_requests_with_the_word() {
    let server = start_python("minimal.py", &["--word", "forbidden"]).await;
    let stack = Stack::start(StackOptions::yaml(&chain(&[remote_yaml(
        "block-word",
        &server.url,
        "",
    )])))
    .await;
    for (openai, stream) in BOTH_APIS_STREAMED_AND_NOT {
        let blocked = call(
            &stack,
            openai,
            stream,
            "text",
            "tell me the Forbidden thing",
        )
        .await;
        assert_eq!(blocked.status, 403, "{}", blocked.text());
        let error = blocked.json();
        let message = if openai {
            &error["error"]["message"]
        } else {
            assert_eq!(error["type"], "error");
            &error["error"]["message"]
        };
        assert!(message.as_str().unwrap().contains("forbidden"), "{error}");
        let allowed = call(&stack, openai, stream, "text", "tell me a story").await;
        assert_eq!(allowed.status, 200, "{}", allowed.text());
    }
    // The blocked calls never reached upstream.
    assert_eq!(stack.mock.requests().len(), 4);
}

// ---------------------------------------------------------------------------------------------
// Failures

#[tokio::test]
async fn a_slow_server_times_out_into_its_on_error() {
    let fake = Fake::new(Fault::Slow(Duration::from_secs(5), false));
    let server = serve_fake(fake).await;
    for (on_error, openai) in [("block", true), ("block", false), ("allow", true)] {
        let yaml = chain(&[remote_yaml(
            "slow",
            &server.url,
            &format!(", timeout: 2s, inactivity_timeout: 300ms, on_error: {on_error}"),
        )]);
        let stack = Stack::start(StackOptions::yaml(&yaml)).await;
        let started = Instant::now();
        let response = call(&stack, openai, false, "text", "hi").await;
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
        if on_error == "block" {
            assert_eq!(response.status, 504, "{}", response.text());
            let error = response.json();
            let message = error["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("remote policy `slow` failed (timeout)"),
                "{message}"
            );
            if !openai {
                assert_eq!(error["type"], "error");
            }
            assert!(stack.mock.requests().is_empty(), "blocked before upstream");
        } else {
            assert_eq!(response.status, 200, "{}", response.text());
            assert_eq!(stack.mock.requests().len(), 1);
        }
    }
}

#[tokio::test]
async fn keepalives_let_a_slow_server_use_its_whole_timeout() {
    let fake = Fake::new(Fault::Slow(Duration::from_millis(700), true));
    let server = serve_fake(fake).await;
    let yaml = chain(&[remote_yaml(
        "thinking",
        &server.url,
        ", timeout: 3s, inactivity_timeout: 300ms, phases: [request]",
    )]);
    let stack = Stack::start(StackOptions::yaml(&yaml)).await;
    let response = call(&stack, true, false, "text", "hi").await;
    assert_eq!(response.status, 200, "{}", response.text());
}

#[tokio::test]
async fn a_server_crashing_mid_stream_is_cut_cleanly_or_passed_through() {
    let fake = Fake {
        phases: vec![Phase::Stream],
        ..Fake::new(Fault::CrashAfterEvents(3))
    };
    let server = serve_fake(fake).await;
    for on_error in ["block", "allow"] {
        let yaml = chain(&[remote_yaml(
            "crashy",
            &server.url,
            &format!(", on_error: {on_error}"),
        )]);
        let stack = Stack::start(StackOptions::yaml(&yaml)).await;
        for openai in [true, false] {
            let case = format!("on_error={on_error} openai={openai}");
            let response = call(&stack, openai, true, "text", "hi").await;
            assert_eq!(response.status, 200, "{case}");
            assert_stream_ends_cleanly(openai, &response.body);
            let text = text(openai, true, &response.body);
            let full = "Hello from the mock upstream.";
            if on_error == "block" {
                assert!(
                    text.contains("withheld") && text.contains("`crashy` failed"),
                    "{case}: {text:?}"
                );
                assert!(!text.contains(full), "{case}: {text:?}");
            } else {
                assert!(text.starts_with(full), "{case}: {text:?}");
                assert!(!text.contains("withheld"), "{case}");
            }
        }
    }
}

#[tokio::test]
async fn garbage_from_the_server_is_a_failure() {
    let fake = Fake::new(Fault::GarbageResponse);
    let server = serve_fake(fake).await;
    for on_error in ["block", "allow"] {
        let yaml = chain(&[remote_yaml(
            "garbage",
            &server.url,
            &format!(", on_error: {on_error}"),
        )]);
        let stack = Stack::start(StackOptions::yaml(&yaml)).await;
        for openai in [true, false] {
            let response = call(&stack, openai, false, "tools", "hi").await;
            assert_eq!(response.status, 200);
            let text = text(openai, false, &response.body);
            if on_error == "block" {
                // Withheld: the tool calls never reach the client unchecked.
                assert!(text.contains("withheld"), "{text:?}");
                assert!(tool_names(openai, false, &response.body).is_empty());
                assert_eq!(
                    finish_reason(openai, false, &response.body),
                    if openai { "stop" } else { "end_turn" }
                );
            } else {
                assert_eq!(
                    tool_names(openai, false, &response.body),
                    ["get_weather", "bash"]
                );
            }
        }
    }
    let wrong = serve_fake(Fake::new(Fault::WrongKind)).await;
    let stack = Stack::start(StackOptions::yaml(&chain(&[remote_yaml(
        "wrong", &wrong.url, "",
    )])))
    .await;
    let response = call(&stack, true, true, "text", "hi").await;
    assert_eq!(response.status, 502);
    assert!(response.text().contains("failed (protocol_error)"));
}

#[tokio::test]
async fn an_unreachable_server_blocks_or_passes() {
    let address = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{address}");
    for (on_error, status) in [("block", 502), ("allow", 200)] {
        let yaml = chain(&[remote_yaml(
            "gone",
            &url,
            &format!(", on_error: {on_error}"),
        )]);
        let stack = Stack::start(StackOptions::yaml(&yaml)).await;
        let started = Instant::now();
        let response = call(&stack, false, true, "text", "hi").await;
        assert_eq!(response.status, status, "{}", response.text());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

// ---------------------------------------------------------------------------------------------
// Sharing and chains

#[tokio::test]
async fn two_control_planes_share_one_remote_server() {
    let server = serve_rust_example().await;
    let mock = Arc::new(MockUpstream::start().await.unwrap());
    let yaml = chain(&[remote_yaml("path-guard", &server.url, "")]);
    let first = Stack::start_with_mock(StackOptions::yaml(&yaml), Arc::clone(&mock)).await;
    let second = Stack::start_with_mock(StackOptions::yaml(&yaml), Arc::clone(&mock)).await;
    let mut calls = Vec::new();
    for (openai, stream) in BOTH_APIS_STREAMED_AND_NOT {
        for stack in [&first, &second] {
            calls.push(async move {
                let response = call(stack, openai, stream, "tools", "go").await;
                (openai, stream, response)
            });
        }
    }
    for (openai, stream, response) in futures_util::future::join_all(calls).await {
        assert_eq!(response.status, 200);
        assert_eq!(tool_names(openai, stream, &response.body), ["get_weather"]);
    }
    assert_eq!(mock.requests().len(), 8);
}

#[tokio::test]
async fn remote_and_builtin_policies_run_in_chain_order() {
    let fake = Fake {
        tag: true,
        ..Fake::new(Fault::None)
    };
    let server = serve_fake(fake.clone()).await;
    let yaml = chain(&[
        "  - type: all_caps\n".to_owned(),
        remote_yaml("tagger", &server.url, ""),
        "  - type: string_replace\n    config: {replacements: [{from: mock, to: fake}]}\n"
            .to_owned(),
    ]);
    let stack = Stack::start(StackOptions::yaml(&yaml)).await;
    for openai in [true, false] {
        let response = call(&stack, openai, false, "text", "about the mock").await;
        assert_eq!(response.status, 200, "{}", response.text());
        // Responses run string_replace, then the remote, then all_caps.
        let text = text(openai, false, &response.body);
        assert_eq!(
            text,
            "HELLO FROM THE FAKE UPSTREAM. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG. REMOTE"
        );
    }
    // Requests run all_caps (no change), the remote, then string_replace: the remote saw
    // "mock", upstream got "fake".
    for request in fake.bodies("request") {
        assert!(request.contains("about the mock"), "{request}");
    }
    for response in fake.bodies("response") {
        assert!(
            response.contains("Hello from the fake upstream."),
            "{response}"
        );
    }
    for request in stack.mock.requests() {
        let body = request.json().to_string();
        assert!(body.contains("about the fake"), "{body}");
    }
}

#[tokio::test]
async fn the_server_joins_the_calls_trace_and_sees_its_headers_but_no_credentials() {
    let fake = Fake::new(Fault::None);
    let server = serve_fake(fake.clone()).await;
    let stack = Stack::start(StackOptions::yaml(&chain(&[remote_yaml(
        "fake",
        &server.url,
        "",
    )])))
    .await;
    let client_trace = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{client_trace}-b7ad6b7169203331-01");
    let response = Client::new()
        .post(
            &stack.openai_url(),
            &[
                ("traceparent", &traceparent),
                ("x-team", "blue"),
                ("authorization", "Bearer sk-client-secret"),
                // Named like a credential: the store's rule strips it, so a third party
                // must not see it either.
                ("x-password", "hunter2"),
                ("x-session-token", "tok-123"),
            ],
            body(true, false, "text"),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let call_id = response.header("x-luthien-call-id").unwrap();

    let starts = fake.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 1, "one stream for the call");
    let (start, metadata) = &starts[0];
    assert_eq!(start.call_id, call_id);
    assert_eq!((start.api(), start.stream), (ProtoApi::OpenaiChat, false));
    // The server's spans continue the client's trace: the context travels
    // in the start message and in the stream's gRPC metadata.
    let fields: Vec<&str> = start.traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{}", start.traceparent);
    assert_eq!(fields[1], client_trace);
    assert_eq!(metadata.as_deref(), Some(start.traceparent.as_str()));
    // Headers arrive, credentials never do.
    let header = |name: &str| {
        start
            .headers
            .iter()
            .find(|header| header.name == name)
            .map(|header| header.value.as_str())
    };
    assert_eq!(header("x-team"), Some("blue"));
    for credential in ["authorization", "x-password", "x-session-token"] {
        assert_eq!(header(credential), None, "{credential}");
    }
    assert!(
        start.headers.iter().all(|header| {
            let value = &header.value;
            !value.contains("sk-client-secret") && value != "hunter2" && value != "tok-123"
        }),
        "{:?}",
        start.headers
    );
}

#[tokio::test]
async fn a_tls_server_is_trusted_through_its_ca_file_and_refused_otherwise() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["policy.test".to_owned()]).expect("certificate");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("policy-ca.pem");
    std::fs::write(&ca_file, certified.cert.pem()).unwrap();
    let identity = tonic::transport::Identity::from_pem(
        certified.cert.pem(),
        certified.signing_key.serialize_pem(),
    );
    let fake = Fake {
        tag: true,
        ..Fake::new(Fault::None)
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(PolicyServiceServer::new(fake.clone()))
            .serve_with_incoming_shutdown(incoming(listener), shutdown.clone().cancelled_owned()),
    );
    let _stop = shutdown.drop_guard();

    // Trusted through the CA file, under the certificate's name (not the address's).
    let ca = ca_file.display();
    let trusted = Stack::start(StackOptions::yaml(&chain(&[remote_yaml(
        "tls",
        &url,
        &format!(", tls: {{ca_file: '{ca}', domain: policy.test}}"),
    )])))
    .await;
    for openai in [true, false] {
        let response = call(&trusted, openai, false, "text", "hi").await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(
            text(openai, false, &response.body).ends_with(" remote"),
            "the server's answer arrived over TLS"
        );
    }
    assert!(fake.kinds().contains(&"response".to_owned()));

    // The system roots do not know this certificate: the handshake fails and
    // `on_error: block` (the default) refuses the call.
    let seen = fake.kinds().len();
    let untrusted = Stack::start(StackOptions::yaml(&chain(&[remote_yaml(
        "tls",
        &url,
        ", tls: {domain: policy.test}",
    )])))
    .await;
    let response = call(&untrusted, true, false, "text", "hi").await;
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(
        response.text().contains("remote policy `tls` failed"),
        "{}",
        response.text()
    );
    assert_eq!(fake.kinds().len(), seen, "nothing reached the server");
}

#[tokio::test]
async fn a_request_only_server_never_receives_response_phases() {
    let fake = Fake {
        phases: vec![Phase::Request],
        ..Fake::new(Fault::None)
    };
    let server = serve_fake(fake.clone()).await;
    let stack = Stack::start(StackOptions::yaml(&chain(&[remote_yaml(
        "requests-only",
        &server.url,
        "",
    )])))
    .await;
    for (openai, stream) in BOTH_APIS_STREAMED_AND_NOT {
        let response = call(&stack, openai, stream, "text", "hi").await;
        assert_eq!(response.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.kinds(), ["start", "request"].repeat(4));
}

// ---------------------------------------------------------------------------------------------
// Benchmark (docs/BENCHMARKS.md, "Remote policy overhead")

/// A remote policy that changes nothing, answering every phase at once.
#[derive(Clone)]
struct Noop {
    phases: Vec<Phase>,
}

#[tonic::async_trait]
impl PolicyService for Noop {
    async fn describe(
        &self,
        _: Request<DescribeRequest>,
    ) -> Result<Response<PolicyDescription>, Status> {
        Ok(Response::new(PolicyDescription {
            name: "noop".into(),
            phases: self.phases.iter().map(|phase| *phase as i32).collect(),
            read_only: false,
        }))
    }

    type ProcessCallStream = ReceiverStream<Result<PolicyResponse, Status>>;

    async fn process_call(
        &self,
        request: Request<Streaming<PolicyRequest>>,
    ) -> Result<Response<Self::ProcessCallStream>, Status> {
        let mut inbound = request.into_inner();
        let (replies, stream) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(PolicyRequest {
                message: Some(message),
            })) = inbound.message().await
            {
                let answer = match message {
                    FromLuthien::Start(_) => continue,
                    FromLuthien::Request(_) => ToLuthien::RequestResult(PolicyRequestResult {
                        action: Some(Action::ContinueRequest(PolicyContinue { body: None })),
                    }),
                    FromLuthien::Response(_) => {
                        ToLuthien::ResponseResult(PolicyResponseResult { body: None })
                    }
                    FromLuthien::Event(event) => ToLuthien::EventResult(PolicyEventResult {
                        seq: event.seq,
                        events: vec![event],
                    }),
                    FromLuthien::StreamEnd(_) => {
                        ToLuthien::StreamEndResult(PolicyStreamEndResult::default())
                    }
                };
                if replies.send(reply(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// A keep-alive HTTP client with `TCP_NODELAY` (the harness client has neither, and Nagle's
/// algorithm alone adds ~40 ms to each call).
type BenchClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

fn bench_client() -> BenchClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// One call, read to the end; returns (client latency, Luthien's own overhead header) in ms.
async fn timed_call(
    client: &BenchClient,
    stack: &BenchStack,
    openai: bool,
    stream: bool,
) -> (f64, f64) {
    use http_body_util::BodyExt;
    let (url, headers) = if openai {
        (stack.openai_url(), OPENAI_HEADERS)
    } else {
        (stack.anthropic_url(), ANTHROPIC_HEADERS)
    };
    let mut request = http::Request::post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(Bytes::from(body(
            openai, stream, "hello",
        ))))
        .unwrap();
    let started = Instant::now();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let overhead = response
        .headers()
        .get("x-luthien-overhead-ms")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    response.into_body().collect().await.unwrap();
    (started.elapsed().as_secs_f64() * 1000.0, overhead)
}

/// Sequential calls on one connection; returns (p50, p99) of the client latency and the p50
/// of the data plane's overhead header, in ms.
async fn measure(stack: &BenchStack, openai: bool, stream: bool, calls: usize) -> (f64, f64, f64) {
    let client = bench_client();
    for _ in 0..100 {
        timed_call(&client, stack, openai, stream).await;
    }
    let mut times = Vec::with_capacity(calls);
    let mut overheads = Vec::with_capacity(calls);
    for _ in 0..calls {
        let (time, overhead) = timed_call(&client, stack, openai, stream).await;
        times.push(time);
        overheads.push(overhead);
    }
    times.sort_by(f64::total_cmp);
    overheads.sort_by(f64::total_cmp);
    (
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&overheads, 0.5),
    )
}

/// The events of a streamed OpenAI answer like the mock's `text` scenario: role, 10 text
/// deltas, finish, `[DONE]`.
fn openai_stream_events() -> Vec<luthien_policy::SseEvent> {
    use luthien_policy::SseEvent;
    let chunk = |delta: Value, finish: Value| {
        SseEvent::from_wire(Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                   "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )))
    };
    let text = "Hello from the mock upstream. The quick brown fox jumps over the lazy dog.";
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let characters: Vec<char> = text.chars().collect();
    for piece in characters.chunks(8) {
        let piece: String = piece.iter().collect();
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    events.push(SseEvent::from_wire(Bytes::from_static(b"data: [DONE]\n\n")));
    events
}

/// Runs calls through a chain the way the control plane does (request, then every event and
/// the stream end when `stream`); returns (p50, p99) per call in ms.
async fn measure_chain(chain: &luthien_policy::Chain, stream: bool, calls: usize) -> (f64, f64) {
    use luthien_policy::CallInfo;
    use luthien_policy::shapes::Api;
    let events = openai_stream_events();
    let request: Value = serde_json::from_str(&body(true, stream, "hello")).unwrap();
    let mut times = Vec::with_capacity(calls);
    for round in 0..calls + 200 {
        let started = Instant::now();
        let mut call = chain.start_call(&CallInfo::new(
            format!("bench-{round}"),
            Api::OpenAiChat,
            "gpt-4o-mini",
            stream,
        ));
        let mut body = request.clone();
        call.on_request(&mut body).await.unwrap();
        if stream {
            let mut out = Vec::new();
            for event in &events {
                call.on_event_into(event.clone(), &mut out).await.unwrap();
            }
            out.extend(call.on_stream_end().await.unwrap());
            assert_eq!(out.len(), events.len());
        }
        drop(call);
        if round >= 200 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn remote_policy_overhead() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let chain_calls = env("REMOTE_BENCH_CALLS", 5000);
    let stack_calls = env("REMOTE_BENCH_STACK_CALLS", 300);
    let request_only = serve_fake_noop(vec![Phase::Request]).await;
    let everything = serve_fake_noop(Vec::new()).await;
    // A local policy that is not read-only, so the call runs in transform mode like a remote
    // one does; it never matches.
    let local_transform =
        "  - type: string_replace\n    config: {replacements: [{from: zzqx, to: y}]}\n";
    let chains = [
        ("local `noop`", "policies: [{type: noop}]".to_owned()),
        (
            "local transform (`string_replace`, no match)",
            format!("policies:\n{local_transform}"),
        ),
        (
            "remote no-op, request phase only",
            chain(&[remote_yaml("remote-noop", &request_only.url, "")]),
        ),
        (
            "remote no-op, all phases",
            chain(&[remote_yaml("remote-noop", &everything.url, "")]),
        ),
    ];

    println!("\n## Policy chain alone (in-process, as the control plane runs it)");
    println!("calls per row: {chain_calls} (sequential, after 200 warm-up calls)");
    println!("| chain | call | p50 ms | p99 ms |");
    println!("| --- | --- | ---: | ---: |");
    for (label, yaml) in &chains {
        let chain = luthien_policy::config::parse_chain(yaml, "bench").unwrap();
        for stream in [false, true] {
            let (p50, p99) = measure_chain(&chain, stream, chain_calls).await;
            let shape = if stream {
                "streamed (request + 13 events + end)"
            } else {
                "request phase"
            };
            println!("| {label} | {shape} | {p50:.3} | {p99:.3} |");
        }
    }

    println!("\n## Whole stack (client → data plane → control plane → mock)");
    println!(
        "calls per row: {stack_calls} (sequential on one connection, after 100 warm-up calls)"
    );
    println!("| chain | API | stream | p50 ms | p99 ms | overhead header p50 ms |");
    println!("| --- | --- | --- | ---: | ---: | ---: |");
    let mock = Arc::new(MockUpstream::start().await.unwrap());
    for (label, yaml) in chains {
        let stack = BenchStack::start(&yaml, &mock).await;
        for (openai, stream) in [(true, false), (true, true), (false, true)] {
            let (p50, p99, overhead) = measure(&stack, openai, stream, stack_calls).await;
            let api = if openai { "openai" } else { "anthropic" };
            println!("| {label} | {api} | {stream} | {p50:.3} | {p99:.3} | {overhead:.3} |");
        }
    }
}

/// A data plane and control plane like [`Stack`]'s, except that both listen with
/// `TCP_NODELAY` (Linux passes it on to accepted sockets): the control plane's gRPC server does
/// not set it on connections from a listener it is handed, which costs every call ~40 ms of
/// Nagle + delayed ACK and would drown what this benchmark measures.
struct BenchStack {
    proxy: String,
    shutdown: CancellationToken,
}

impl Drop for BenchStack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A configuration from command-line flags, every other setting at its default (so that new
/// settings do not break the benchmark).
#[derive(clap::Parser)]
struct Flags<T: clap::Args> {
    #[command(flatten)]
    config: T,
}

impl<T: clap::Args> Flags<T> {
    fn parse(flags: &[&str]) -> T {
        let args = std::iter::once("bench").chain(flags.iter().copied());
        <Self as clap::Parser>::parse_from(args).config
    }
}

fn nodelay_listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_nodelay(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(1024).unwrap()
}

impl BenchStack {
    async fn start(yaml: &str, mock: &MockUpstream) -> BenchStack {
        let shutdown = CancellationToken::new();
        let grpc = nodelay_listener();
        let grpc_address = grpc.local_addr().unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_address = http.local_addr().unwrap().to_string();
        let config = Flags::<luthien_controlplane::ControlPlaneConfig>::parse(&[
            "--grpc-listen",
            &grpc_address.to_string(),
            "--http-listen",
            &http_address,
            "--no-store",
            "--keepalive-interval",
            "200ms",
        ]);
        let chain = luthien_policy::config::parse_chain(yaml, "bench").unwrap();
        tokio::spawn(luthien_controlplane::serve(
            config,
            chain,
            grpc,
            Some(http),
            shutdown.clone(),
        ));
        let listener = nodelay_listener();
        let listen = listener.local_addr().unwrap();
        let config = Flags::<luthien_dataplane::DataPlaneConfig>::parse(&[
            "--listen",
            &listen.to_string(),
            "--control-plane",
            &format!("http://{grpc_address}"),
            "--openai-base-url",
            &mock.openai_base_url(),
            "--anthropic-base-url",
            &mock.anthropic_base_url(),
        ]);
        tokio::spawn(luthien_dataplane::serve(config, listener, shutdown.clone()));
        let stack = BenchStack {
            proxy: format!("http://{listen}"),
            shutdown,
        };
        // Until the control plane serves.
        let client = bench_client();
        for _ in 0..100 {
            let request = http::Request::post(stack.openai_url())
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::from(body(
                    true, false, "up?",
                ))))
                .unwrap();
            if let Ok(response) = client.request(request).await
                && response.status() == 200
            {
                return stack;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the bench stack did not come up");
    }

    fn openai_url(&self) -> String {
        format!("{}/v1/chat/completions", self.proxy)
    }

    fn anthropic_url(&self) -> String {
        format!("{}/v1/messages", self.proxy)
    }
}

async fn serve_fake_noop(phases: Vec<Phase>) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PolicyServiceServer::new(Noop { phases }))
            .serve_with_incoming_shutdown(incoming(listener), shutdown.clone().cancelled_owned()),
    );
    Served { url, shutdown }
}
