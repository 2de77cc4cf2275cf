//! `remote` against scripted in-process policy servers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use luthien_proto::policy::v1::policy_response::Message as Reply;
use luthien_proto::policy::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use luthien_proto::policy::v1::{
    DescribeRequest, Phase, PolicyContinue, PolicyDescription, PolicyEventResult, PolicyKeepalive,
    PolicyRecord, PolicyRequestResult, PolicyResponse, PolicyResponseResult, PolicyStreamEndResult,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::*;
use crate::Chain;
use crate::shapes::Api;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Marks requests and responses, echoes events, flushes one event at the end.
    Rewrite,
    /// Sends keepalives every 100 ms for this long before each answer.
    Slow(Duration, bool),
    /// Answers a request with a body that is not JSON.
    Garbage,
    /// Answers events with the wrong `seq`.
    WrongSeq,
}

#[derive(Clone)]
struct Script {
    phases: Vec<Phase>,
    read_only: bool,
    mode: Mode,
    /// Kinds of the messages received, in order, over all calls.
    log: Arc<Mutex<Vec<String>>>,
    authorization: Arc<Mutex<Option<String>>>,
    describes: Arc<AtomicUsize>,
}

impl Script {
    fn new(mode: Mode) -> Self {
        Self {
            phases: Vec::new(),
            read_only: false,
            mode,
            log: Arc::default(),
            authorization: Arc::default(),
            describes: Arc::default(),
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn reply(message: Reply) -> Result<PolicyResponse, Status> {
    Ok(PolicyResponse {
        message: Some(message),
    })
}

#[tonic::async_trait]
impl PolicyService for Script {
    async fn describe(
        &self,
        request: Request<DescribeRequest>,
    ) -> Result<Response<PolicyDescription>, Status> {
        self.describes.fetch_add(1, Ordering::SeqCst);
        *self.authorization.lock().unwrap() = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Ok(Response::new(PolicyDescription {
            name: "scripted".into(),
            phases: self.phases.iter().map(|phase| *phase as i32).collect(),
            read_only: self.read_only,
        }))
    }

    type ProcessCallStream = ReceiverStream<Result<PolicyResponse, Status>>;

    async fn process_call(
        &self,
        request: Request<Streaming<PolicyRequest>>,
    ) -> Result<Response<Self::ProcessCallStream>, Status> {
        let mut inbound = request.into_inner();
        let (replies, stream) = mpsc::channel(16);
        let script = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(PolicyRequest {
                message: Some(message),
            })) = inbound.message().await
            {
                let kind = match &message {
                    ToServer::Start(_) => "start",
                    ToServer::Request(_) => "request",
                    ToServer::Response(_) => "response",
                    ToServer::Event(_) => "event",
                    ToServer::StreamEnd(_) => "stream_end",
                };
                script.log.lock().unwrap().push(kind.to_owned());
                if script.read_only || matches!(message, ToServer::Start(_)) {
                    continue;
                }
                if let Mode::Slow(delay, keepalives) = script.mode {
                    let until = tokio::time::Instant::now() + delay;
                    while tokio::time::Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if keepalives {
                            let _ = replies
                                .send(reply(Reply::Keepalive(PolicyKeepalive {})))
                                .await;
                        }
                    }
                }
                let answer = match message {
                    ToServer::Start(_) => continue,
                    ToServer::Request(request) => {
                        let _ = replies
                            .send(reply(Reply::Record(PolicyRecord {
                                action: "seen".into(),
                                summary: "saw the request".into(),
                                data_json: Bytes::from_static(b"{\"n\":1}"),
                            })))
                            .await;
                        let body = if script.mode == Mode::Garbage {
                            Bytes::from_static(b"not json")
                        } else {
                            let mut body: Value = serde_json::from_slice(&request.body).unwrap();
                            body["rewritten"] = json!(true);
                            Bytes::from(body.to_string())
                        };
                        Reply::RequestResult(PolicyRequestResult {
                            action: Some(Action::ContinueRequest(PolicyContinue {
                                body: Some(body),
                            })),
                        })
                    }
                    ToServer::Response(response) => {
                        let mut body: Value = serde_json::from_slice(&response.body).unwrap();
                        body["reviewed"] = json!(true);
                        Reply::ResponseResult(PolicyResponseResult {
                            body: Some(Bytes::from(body.to_string())),
                        })
                    }
                    ToServer::Event(event) => Reply::EventResult(PolicyEventResult {
                        seq: event.seq + u64::from(script.mode == Mode::WrongSeq),
                        events: vec![event],
                    }),
                    ToServer::StreamEnd(_) => Reply::StreamEndResult(PolicyStreamEndResult {
                        events: vec![PolicyStreamEvent {
                            seq: 0,
                            event_type: String::new(),
                            data: Bytes::from_static(b"{\"flushed\":true}"),
                        }],
                    }),
                };
                if replies.send(reply(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

struct Server {
    url: String,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn serve(script: Script) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PolicyServiceServer::new(script))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown.clone().cancelled_owned(),
            ),
    );
    Server { url, shutdown }
}

fn remote(yaml: &str) -> Result<Remote, String> {
    let config: RemoteConfig = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
    Remote::from_config("guard".to_owned(), config)
}

fn call(policy: &Remote, api: Api, stream: bool) -> Box<dyn CallPolicy> {
    policy.start_call(&CallInfo::new("c1", api, "m", stream))
}

fn body_json(response: &ImmediateResponse) -> Value {
    serde_json::from_slice(&response.body).unwrap()
}

#[test]
fn config_errors_name_the_key() {
    let error = |yaml: &str| remote(yaml).err().unwrap();
    assert_eq!(error("{}"), "endpoints: at least one endpoint is required");
    assert!(error("{endpoint: 'http://a:1', endpoints: ['http://b:1']}").starts_with("endpoint:"));
    assert!(error("{endpoints: ['http://a:1', 'ftp://b']}").starts_with("endpoints[1]:"));
    assert!(error("{endpoint: 'http://a:1', timeout: 0s}").starts_with("timeout: must be"));
    assert!(
        error("{endpoint: 'http://a:1', inactivity_timeout: soon}")
            .starts_with("inactivity_timeout:")
    );
    assert!(error("{endpoint: 'http://a:1', phases: []}").starts_with("phases:"));
    assert!(error("{endpoint: 'http://a:1', tls: {domain: x}}").contains("`tls` needs https://"));
    assert!(
        error("{endpoint: 'https://a:1', tls: {ca_file: /nonexistent.pem}}")
            .starts_with("tls.ca_file: /nonexistent.pem:")
    );
    assert_eq!(
        error("{endpoint: 'http://a:1', bearer_token_env: LUTHIEN_TEST_SURELY_UNSET}"),
        "bearer_token_env: environment variable LUTHIEN_TEST_SURELY_UNSET is not set"
    );
    assert!(
        remote("{endpoint: 'https://a:1', bearer_token: t, on_error: allow, phases: [request]}")
            .is_ok()
    );
}

#[test]
fn only_response_phases_make_responses_transform() {
    let request_only = remote("{endpoint: 'http://a:1', phases: [request]}").unwrap();
    assert!(!request_only.transforms_responses());
    assert!(!request_only.read_only());
    let streams = remote("{endpoint: 'http://a:1', phases: [request, stream]}").unwrap();
    assert!(streams.transforms_responses());
    assert!(
        remote("{endpoint: 'http://a:1'}")
            .unwrap()
            .transforms_responses()
    );
}

#[test]
fn a_chain_file_names_the_remote_policy_in_errors() {
    let error = crate::config::parse_chain(
        "policies: [{type: remote, name: r, config: {endpoints: []}}]",
        "p.yaml",
    )
    .err()
    .unwrap()
    .to_string();
    assert_eq!(
        error,
        "p.yaml: policies[0] (remote \"r\"): config.endpoints: at least one endpoint is required"
    );
}

#[tokio::test]
async fn rewrites_requests_responses_and_streams() {
    let script = Script::new(Mode::Rewrite);
    let server = serve(script.clone()).await;
    let policy = remote(&format!(
        "{{endpoint: '{}', bearer_token: s3cret}}",
        server.url
    ))
    .unwrap();

    let mut call_policy = call(&policy, Api::OpenAiChat, false);
    let mut request = json!({"model": "m"});
    let verdict = call_policy.on_request(&mut request).await.unwrap();
    assert!(matches!(verdict, RequestVerdict::Continue));
    assert_eq!(request["rewritten"], true);
    let mut response = json!({"id": "x"});
    call_policy.on_response(&mut response).await.unwrap();
    assert_eq!(response["reviewed"], true);
    let events = call_policy.take_events();
    assert_eq!(events[0].action, "seen");
    assert_eq!(events[0].data, json!({"n": 1}));

    let mut streamed = call(&policy, Api::AnthropicMessages, true);
    streamed.on_request(&mut json!({})).await.unwrap();
    let wire = Bytes::from_static(b"event: ping\ndata: {\"type\": \"ping\"}\n\n");
    let mut out = Vec::new();
    streamed
        .on_event(SseEvent::from_wire(wire.clone()), &mut out)
        .await
        .unwrap();
    // Sent back unchanged: the very same bytes.
    assert_eq!(out[0].to_bytes(), wire);
    streamed.on_stream_end(&mut out).await.unwrap();
    assert_eq!(out[1].json().unwrap()["flushed"], true);

    assert_eq!(
        script.describes.load(Ordering::SeqCst),
        1,
        "Describe is cached"
    );
    assert_eq!(
        script.authorization.lock().unwrap().as_deref(),
        Some("Bearer s3cret")
    );
    let stats = policy.stats();
    assert_eq!(stats.phase(StatPhase::Request).requests, 2);
    assert_eq!(stats.phase(StatPhase::Stream).requests, 2);
    assert_eq!(stats.streams_opened, 2);
    assert_eq!(stats.phase(StatPhase::Request).errors, 0);
}

#[tokio::test]
async fn a_request_only_server_never_sees_responses() {
    let script = Script {
        phases: vec![Phase::Request],
        ..Script::new(Mode::Rewrite)
    };
    let server = serve(script.clone()).await;
    let policy = remote(&format!("{{endpoint: '{}'}}", server.url)).unwrap();
    let mut call_policy = call(&policy, Api::OpenAiChat, true);
    call_policy.on_request(&mut json!({})).await.unwrap();
    let mut out = Vec::new();
    let event = SseEvent::from_wire(Bytes::from_static(b"data: [DONE]\n\n"));
    call_policy.on_event(event, &mut out).await.unwrap();
    call_policy.on_stream_end(&mut out).await.unwrap();
    assert_eq!(out.len(), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(script.log(), ["start", "request"]);
}

#[tokio::test]
async fn config_phases_narrow_what_the_server_asked_for() {
    let script = Script::new(Mode::Rewrite);
    let server = serve(script.clone()).await;
    let policy = remote(&format!(
        "{{endpoint: '{}', phases: [response]}}",
        server.url
    ))
    .unwrap();
    // A streamed call has no response phase: the server is not even described.
    let mut streamed = call(&policy, Api::OpenAiChat, true);
    let mut request = json!({});
    streamed.on_request(&mut request).await.unwrap();
    assert_eq!(request, json!({}));
    assert_eq!(script.describes.load(Ordering::SeqCst), 0);
    let mut plain = call(&policy, Api::OpenAiChat, false);
    plain.on_request(&mut request).await.unwrap();
    assert_eq!(request, json!({}), "the request phase was not asked for");
    let mut response = json!({});
    plain.on_response(&mut response).await.unwrap();
    assert_eq!(response["reviewed"], true);
    assert_eq!(script.log(), ["start", "response"]);
}

#[tokio::test]
async fn a_read_only_server_is_sent_everything_without_waiting() {
    let script = Script {
        read_only: true,
        ..Script::new(Mode::Slow(Duration::from_secs(5), false))
    };
    let server = serve(script.clone()).await;
    let policy = remote(&format!("{{endpoint: '{}', timeout: 200ms}}", server.url)).unwrap();
    let started = Instant::now();
    let mut call_policy = call(&policy, Api::OpenAiChat, true);
    let mut request = json!({"a": 1});
    call_policy.on_request(&mut request).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..3 {
        let event = SseEvent::from_json(None, json!({"choices": []}));
        call_policy.on_event(event, &mut out).await.unwrap();
    }
    call_policy.on_stream_end(&mut out).await.unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(request, json!({"a": 1}));
    drop(call_policy);
    assert!(started.elapsed() < Duration::from_millis(150));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        script.log(),
        ["start", "request", "event", "event", "event", "stream_end"]
    );
}

#[tokio::test]
async fn a_slow_server_costs_at_most_its_timeout() {
    for (keepalives, timeout, inactivity) in [(false, "2s", "300ms"), (true, "500ms", "300ms")] {
        let script = Script::new(Mode::Slow(Duration::from_secs(3), keepalives));
        let server = serve(script).await;
        let policy = remote(&format!(
            "{{endpoint: '{}', timeout: {timeout}, inactivity_timeout: {inactivity}}}",
            server.url
        ))
        .unwrap();
        let started = Instant::now();
        let mut call_policy = call(&policy, Api::AnthropicMessages, false);
        let verdict = call_policy.on_request(&mut json!({})).await.unwrap();
        let elapsed = started.elapsed();
        let RequestVerdict::Respond(response) = verdict else {
            panic!("expected a block");
        };
        assert_eq!(response.status, 504);
        // Anthropic's type for 504, as the data plane answers its own timeouts.
        assert_eq!(body_json(&response)["error"]["type"], "timeout_error");
        // Keepalives keep it alive until the per-message timeout; without them the
        // inactivity timeout ends it.
        let expected = if keepalives { 500 } else { 300 };
        assert!(
            elapsed >= Duration::from_millis(expected)
                && elapsed < Duration::from_millis(expected + 400),
            "{elapsed:?}"
        );
        let stats = policy.stats();
        let request = stats.phase(StatPhase::Request);
        assert_eq!(
            (request.errors, request.timeouts, request.fail_closed),
            (1, 1, 1)
        );
        let events = call_policy.take_events();
        assert_eq!(events.last().unwrap().action, "remote_failed");
    }
}

#[tokio::test]
async fn on_error_allow_passes_unchanged_and_counts_fail_open() {
    let script = Script::new(Mode::Garbage);
    let server = serve(script).await;
    let policy = remote(&format!("{{endpoint: '{}', on_error: allow}}", server.url)).unwrap();
    let mut call_policy = call(&policy, Api::OpenAiChat, false);
    let mut request = json!({"keep": true});
    let verdict = call_policy.on_request(&mut request).await.unwrap();
    assert!(matches!(verdict, RequestVerdict::Continue));
    assert_eq!(request, json!({"keep": true}));
    let mut response = json!({"untouched": true});
    call_policy.on_response(&mut response).await.unwrap();
    assert_eq!(response, json!({"untouched": true}));
    assert_eq!(policy.stats().phase(StatPhase::Request).fail_open, 1);
}

#[tokio::test]
async fn an_unreachable_server_blocks_with_502_in_the_clients_format() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let policy = remote(&format!("{{endpoint: '{url}'}}")).unwrap();
    let mut call_policy = call(&policy, Api::AnthropicMessages, false);
    let RequestVerdict::Respond(response) = call_policy.on_request(&mut json!({})).await.unwrap()
    else {
        panic!("expected a block");
    };
    assert_eq!(response.status, 502);
    let body = body_json(&response);
    assert_eq!(body["type"], "error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("remote policy `guard` failed (unavailable)")
    );
    assert_eq!(policy.stats().phase(StatPhase::Describe).errors, 1);
}

#[tokio::test]
async fn a_protocol_violation_mid_stream_cuts_the_stream_cleanly() {
    let script = Script::new(Mode::WrongSeq);
    let server = serve(script).await;
    let policy = remote(&format!("{{endpoint: '{}', phases: [stream]}}", server.url)).unwrap();
    let mut call_policy = call(&policy, Api::OpenAiChat, true);
    call_policy.on_request(&mut json!({})).await.unwrap();
    let mut out = Vec::new();
    let chunk = json!({"id": "c9", "object": "chat.completion.chunk", "created": 1, "model": "g",
                       "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]});
    call_policy
        .on_event(SseEvent::from_json(None, chunk.clone()), &mut out)
        .await
        .unwrap();
    // Withheld: a notice, a finish chunk and [DONE]; later events are dropped.
    assert_eq!(out.len(), 3);
    assert!(
        out[0].json().unwrap()["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap()
            .contains("withheld")
    );
    assert!(out[2].is_done());
    call_policy
        .on_event(SseEvent::from_json(None, chunk), &mut out)
        .await
        .unwrap();
    call_policy.on_stream_end(&mut out).await.unwrap();
    assert_eq!(out.len(), 3);
    let events = call_policy.take_events();
    assert_eq!(events[0].data["kind"], "protocol_error");
}

#[test]
fn non_json_events_from_the_server_keep_their_framing() {
    let event = event_from_remote(
        PolicyStreamEvent {
            seq: 0,
            event_type: "x".into(),
            data: Bytes::from_static(b"[DONE]"),
        },
        None,
    )
    .unwrap();
    assert_eq!(event.to_bytes(), "event: x\ndata: [DONE]\n\n".as_bytes());
    let bad = event_from_remote(
        PolicyStreamEvent {
            seq: 0,
            event_type: "a\nb".into(),
            data: Bytes::new(),
        },
        None,
    );
    assert!(bad.is_err());
}

/// A call's stream outlives the call (the server finishes its side, or a read-only server is
/// read to its end); those tasks belong to the policy, and shutdown waits for them.
#[tokio::test]
async fn streams_that_outlive_their_call_are_owned_and_awaited() {
    let server = serve(Script::new(Mode::Rewrite)).await;
    let policy = Arc::new(remote(&format!("{{endpoint: '{}'}}", server.url)).unwrap());
    let tasks = policy
        .background_tasks()
        .expect("a remote policy has tasks");
    let mut call_policy = call(&policy, Api::OpenAiChat, false);
    call_policy.on_request(&mut json!({})).await.unwrap();
    assert_eq!(tasks.len(), 0, "nothing outlives a call in progress");
    drop(call_policy);
    assert_eq!(tasks.len(), 1, "the stream's end is tracked");

    let audited = serve(Script {
        read_only: true,
        ..Script::new(Mode::Rewrite)
    })
    .await;
    let auditor = Arc::new(remote(&format!("{{endpoint: '{}'}}", audited.url)).unwrap());
    let mut audit_call = call(&auditor, Api::OpenAiChat, false);
    audit_call.on_request(&mut json!({})).await.unwrap();
    drop(audit_call);
    let audit_tasks = auditor.background_tasks().unwrap();
    assert_eq!(audit_tasks.len(), 1, "the read-only stream is tracked");

    let chain = Chain::new(vec![policy.clone(), auditor.clone()]);
    assert!(chain.wait_background(Duration::from_secs(5)).await);
    assert_eq!((tasks.len(), audit_tasks.len()), (0, 0));
}
