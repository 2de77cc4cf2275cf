//! The protocol under stress: policy blocks, failing policies, client
//! disconnects, a control plane that is down, silent, slow or dies
//! mid-stream, under both fail modes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::BodyExt;
use luthien_dataplane::FailMode;
use luthien_policy::{
    CallInfo, CallPolicy, Chain, ImmediateResponse, Policy, PolicyError, RequestVerdict,
};
use luthien_proto::dataplane::v1::CallOutcome;
use luthien_tests::fake_control_plane::{FakeControlPlane, Script};
use luthien_tests::stack::ControlPlane;
use luthien_tests::wire::{events, openai_stream_text};
use luthien_tests::{Client, Stack, StackOptions};
use serde_json::Value;

const OPENAI: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
const OPENAI_STREAM: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const ANTHROPIC: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
const TEXT: &str = "Hello from the mock upstream. The quick brown fox jumps over the lazy dog.";

/// Answers every request itself, in the client's format, like a block rule.
struct Refuse;

struct RefuseCall;

impl Policy for Refuse {
    fn kind(&self) -> &'static str {
        "refuse"
    }
    fn name(&self) -> &str {
        "refuse"
    }
    fn read_only(&self) -> bool {
        false
    }
    fn start_call(&self, _call: &CallInfo) -> Box<dyn CallPolicy> {
        Box::new(RefuseCall)
    }
}

#[async_trait]
impl CallPolicy for RefuseCall {
    async fn on_request(&mut self, request: &mut Value) -> Result<RequestVerdict, PolicyError> {
        let model = request["model"].as_str().unwrap_or_default().to_owned();
        let body = serde_json::json!({
            "id": "chatcmpl-refused", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "I can't help with that."}, "finish_reason": "stop"}],
        });
        Ok(RequestVerdict::Respond(ImmediateResponse {
            status: 200,
            content_type: "application/json",
            body: Bytes::from(body.to_string()),
            reason: "refused by test policy".into(),
        }))
    }
}

/// Fails in the request phase or the response phase.
struct Broken {
    in_request: bool,
}

struct BrokenCall {
    in_request: bool,
}

impl Policy for Broken {
    fn kind(&self) -> &'static str {
        "broken"
    }
    fn name(&self) -> &str {
        "broken"
    }
    fn read_only(&self) -> bool {
        false
    }
    fn start_call(&self, _call: &CallInfo) -> Box<dyn CallPolicy> {
        Box::new(BrokenCall {
            in_request: self.in_request,
        })
    }
}

#[async_trait]
impl CallPolicy for BrokenCall {
    async fn on_request(&mut self, _request: &mut Value) -> Result<RequestVerdict, PolicyError> {
        if self.in_request {
            return Err(PolicyError {
                policy: "broken".into(),
                message: "request check crashed".into(),
            });
        }
        Ok(RequestVerdict::Continue)
    }

    async fn on_response(&mut self, _response: &mut Value) -> Result<(), PolicyError> {
        Err(PolicyError {
            policy: "broken".into(),
            message: "response check crashed".into(),
        })
    }

    async fn on_event(
        &mut self,
        _event: luthien_policy::SseEvent,
        _out: &mut Vec<luthien_policy::SseEvent>,
    ) -> Result<(), PolicyError> {
        Err(PolicyError {
            policy: "broken".into(),
            message: "stream check crashed".into(),
        })
    }
}

fn chain(policy: impl Policy) -> ControlPlane {
    ControlPlane::Chain(Chain::new(vec![Arc::new(policy) as Arc<dyn Policy>]))
}

#[tokio::test]
async fn a_policy_block_answers_immediately_without_calling_upstream() {
    let stack = Stack::start(StackOptions {
        control_plane: chain(Refuse),
        ..StackOptions::default()
    })
    .await;
    let response = Client::new().post(&stack.openai_url(), &[], OPENAI).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json()["choices"][0]["message"]["content"],
        "I can't help with that."
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert!(response.header("x-luthien-call-id").is_some());
    assert!(stack.mock.requests().is_empty(), "upstream never called");
}

#[tokio::test]
async fn a_failing_request_policy_rejects_the_call_clearly() {
    let stack = Stack::start(StackOptions {
        control_plane: chain(Broken { in_request: true }),
        ..StackOptions::default()
    })
    .await;
    let client = Client::new();
    let response = client.post(&stack.openai_url(), &[], OPENAI).await;
    assert_eq!(response.status, 500);
    let message = response.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("request check crashed"), "{message}");
    let response = client.post(&stack.anthropic_url(), &[], ANTHROPIC).await;
    assert_eq!(response.status, 500);
    assert_eq!(response.json()["type"], "error");
    assert!(stack.mock.requests().is_empty());
}

#[tokio::test]
async fn a_failing_response_policy_lets_the_original_through() {
    let stack = Stack::start(StackOptions {
        control_plane: chain(Broken { in_request: false }),
        ..StackOptions::default()
    })
    .await;
    let client = Client::new();
    let direct = client.post(&stack.direct_openai_url(), &[], OPENAI).await;
    let proxied = client.post(&stack.openai_url(), &[], OPENAI).await;
    assert_eq!(proxied.status, 200);
    assert_eq!(proxied.body, direct.body);
    let direct = client
        .post(&stack.direct_openai_url(), &[], OPENAI_STREAM)
        .await;
    let proxied = client.post(&stack.openai_url(), &[], OPENAI_STREAM).await;
    assert_eq!(proxied.status, 200);
    assert_eq!(
        proxied.body, direct.body,
        "stream passes through unmodified"
    );
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    for policy in ["noop", "all_caps"] {
        let stack = Stack::start(StackOptions::yaml(&format!(
            "policies: [{{type: {policy}}}]"
        )))
        .await;
        let client = Client::new();
        let response = client
            .send(
                "POST",
                &stack.openai_url(),
                &[
                    ("content-type", "application/json"),
                    ("x-mock-chunks", "200"),
                    ("x-mock-delay-ms", "20"),
                ],
                OPENAI_STREAM,
            )
            .await;
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.into_data().unwrap().starts_with(b"data: "));
        drop(body);
        assert!(
            stack.mock.wait_abandoned(1, Duration::from_secs(5)).await,
            "upstream stream cancelled after the client left ({policy})"
        );
        assert_eq!(stack.mock.completed_streams(), 0);
    }
}

#[tokio::test]
async fn control_plane_down_fail_closed_is_a_503_in_the_client_format() {
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::Down,
        fail_mode: FailMode::Closed,
        ..StackOptions::default()
    })
    .await;
    let client = Client::new();
    let response = client.post(&stack.openai_url(), &[], OPENAI).await;
    assert_eq!(response.status, 503);
    assert!(
        response.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("control plane")
    );
    let response = client.post(&stack.anthropic_url(), &[], ANTHROPIC).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.json()["error"]["type"], "overloaded_error");
    assert!(
        stack.mock.requests().is_empty(),
        "nothing unpoliced reached upstream"
    );
}

#[tokio::test]
async fn control_plane_down_fail_open_proceeds_unmodified() {
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::Down,
        fail_mode: FailMode::Open,
        ..StackOptions::default()
    })
    .await;
    let client = Client::new();
    for body in [OPENAI, OPENAI_STREAM] {
        let direct = client.post(&stack.direct_openai_url(), &[], body).await;
        let proxied = client.post(&stack.openai_url(), &[], body).await;
        assert_eq!(proxied.status, 200);
        assert_eq!(proxied.body, direct.body);
    }
}

#[tokio::test]
async fn a_silent_control_plane_hits_the_inactivity_deadline() {
    let fake = FakeControlPlane::start(Script::Silent).await;
    for (fail_mode, expected) in [(FailMode::Closed, 503), (FailMode::Open, 200)] {
        let stack = Stack::start(StackOptions {
            control_plane: ControlPlane::External(fake.url.clone()),
            fail_mode,
            cp_inactivity_timeout: Duration::from_millis(300),
            ..StackOptions::default()
        })
        .await;
        let started = std::time::Instant::now();
        let response = Client::new().post(&stack.openai_url(), &[], OPENAI).await;
        assert_eq!(
            response.status,
            expected,
            "{fail_mode:?}: {}",
            response.text()
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        if expected == 503 {
            assert!(
                response.text().contains("did not answer"),
                "{}",
                response.text()
            );
        }
    }
}

/// A control plane that fails fast is not reported as slow: the `CallEnd` says
/// `CONTROL_PLANE_ERROR` for a protocol violation, `CONTROL_PLANE_TIMEOUT`
/// only when a deadline passed.
#[tokio::test]
async fn call_ends_tell_a_broken_control_plane_from_a_slow_one() {
    for (script, expected) in [
        (Script::AnswerOutOfTurn, CallOutcome::ControlPlaneError),
        (Script::Silent, CallOutcome::ControlPlaneTimeout),
    ] {
        let fake = FakeControlPlane::start(script).await;
        let stack = Stack::start(StackOptions {
            control_plane: ControlPlane::External(fake.url.clone()),
            cp_inactivity_timeout: Duration::from_millis(300),
            ..StackOptions::default()
        })
        .await;
        let response = Client::new().post(&stack.openai_url(), &[], OPENAI).await;
        assert_eq!(response.status, 503, "{script:?}: {}", response.text());
        let end = luthien_tests::wait::eventually(
            &format!("{script:?}: CallEnd reaches the control plane"),
            Duration::from_secs(5),
            || async { fake.call_ends().pop() },
        )
        .await;
        assert_eq!(end.outcome(), expected, "{script:?}: {}", end.detail);
    }
}

#[tokio::test]
async fn keepalives_extend_the_inactivity_deadline() {
    let fake = FakeControlPlane::start(Script::KeepaliveThenContinue {
        every: Duration::from_millis(100),
        for_: Duration::from_millis(1200),
    })
    .await;
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::External(fake.url.clone()),
        cp_inactivity_timeout: Duration::from_millis(400),
        cp_message_timeout: Duration::from_secs(10),
        ..StackOptions::default()
    })
    .await;
    let response = Client::new().post(&stack.openai_url(), &[], OPENAI).await;
    assert_eq!(response.status, 200, "{}", response.text());

    // The per-message deadline still caps the wait.
    let capped = Stack::start(StackOptions {
        control_plane: ControlPlane::External(fake.url.clone()),
        cp_inactivity_timeout: Duration::from_millis(400),
        cp_message_timeout: Duration::from_millis(600),
        ..StackOptions::default()
    })
    .await;
    let response = Client::new().post(&capped.openai_url(), &[], OPENAI).await;
    assert_eq!(response.status, 503, "{}", response.text());
}

#[tokio::test]
async fn control_plane_dying_mid_stream_follows_the_fail_mode() {
    let fake = FakeControlPlane::start(Script::DieAfterChunks { chunks: 3 }).await;
    let headers = [("x-mock-chunk-size", "4")];

    // Closed: the stream ends with an in-band error event the SDK can parse.
    let closed = Stack::start(StackOptions {
        control_plane: ControlPlane::External(fake.url.clone()),
        fail_mode: FailMode::Closed,
        ..StackOptions::default()
    })
    .await;
    let response = Client::new()
        .post(&closed.openai_url(), &headers, OPENAI_STREAM)
        .await;
    assert_eq!(response.status, 200);
    let events = events(&response.body);
    let last = events.last().unwrap().json();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("control plane"),
        "in-band error: {last}"
    );
    assert!(!response.text().contains("[DONE]"));

    // Open: the rest of the stream arrives untouched.
    let open = Stack::start(StackOptions {
        control_plane: ControlPlane::External(fake.url.clone()),
        fail_mode: FailMode::Open,
        ..StackOptions::default()
    })
    .await;
    let direct = Client::new()
        .post(&open.direct_openai_url(), &headers, OPENAI_STREAM)
        .await;
    let response = Client::new()
        .post(&open.openai_url(), &headers, OPENAI_STREAM)
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, direct.body);
    assert_eq!(openai_stream_text(&response.body), TEXT);
}

/// `pass_through_rest` turns the rest of a transformed stream into an observed one: the data
/// plane stops waiting for replies. The fake answers only the first chunk; the stream outlasts
/// the per-message timeout many times over, so a data plane still waiting would cut it.
#[tokio::test]
async fn the_data_plane_honours_pass_through_rest() {
    let fake = FakeControlPlane::start(Script::PassThroughAfterFirstChunk).await;
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::External(fake.url.clone()),
        cp_message_timeout: Duration::from_millis(200),
        cp_inactivity_timeout: Duration::from_millis(200),
        ..StackOptions::default()
    })
    .await;
    let headers = [("x-mock-chunks", "10"), ("x-mock-delay-ms", "60")];
    let direct = Client::new()
        .post(&stack.direct_openai_url(), &headers, OPENAI_STREAM)
        .await;
    let proxied = Client::new()
        .post(&stack.openai_url(), &headers, OPENAI_STREAM)
        .await;
    assert_eq!(proxied.status, 200);
    assert_eq!(openai_stream_text(&proxied.body), TEXT);
    assert_eq!(proxied.body.len(), direct.body.len(), "every byte arrives");
    let end = luthien_tests::wait::eventually(
        "the call ends completed",
        Duration::from_secs(5),
        || async { fake.call_ends().pop() },
    )
    .await;
    assert_eq!(end.outcome(), CallOutcome::Completed, "{}", end.detail);
}

/// Once the chain has failed on a stream, the control plane says so with `pass_through_rest`
/// instead of answering every remaining chunk, and hands back the bytes it withheld of an
/// event begun in that chunk. Spoken to in the protocol itself, as a data plane would.
#[tokio::test]
async fn a_failed_chain_hands_the_stream_back_with_pass_through_rest() {
    use luthien_proto::common::v1::Api as ProtoApi;
    use luthien_proto::dataplane::v1::control_plane_message::Message as FromControl;
    use luthien_proto::dataplane::v1::control_plane_service_client::ControlPlaneServiceClient;
    use luthien_proto::dataplane::v1::data_plane_message::Message as ToControl;
    use luthien_proto::dataplane::v1::{CallStart, DataPlaneMessage, StreamChunk};

    let stack = Stack::start(StackOptions {
        control_plane: chain(Broken { in_request: false }),
        ..StackOptions::default()
    })
    .await;
    let mut client = ControlPlaneServiceClient::connect(stack.control_plane.clone().unwrap())
        .await
        .unwrap();
    let (outbound, queue) = tokio::sync::mpsc::channel(4);
    let message = |message| DataPlaneMessage {
        message: Some(message),
    };
    outbound
        .send(message(ToControl::CallStart(CallStart {
            call_id: "pass-through-test".into(),
            api: ProtoApi::OpenaiChat.into(),
            stream: true,
            body: Bytes::from_static(OPENAI_STREAM.as_bytes()),
            ..CallStart::default()
        })))
        .await
        .unwrap();
    let mut inbound = client
        .process_call(tokio_stream::wrappers::ReceiverStream::new(queue))
        .await
        .unwrap()
        .into_inner();
    let decision = inbound.message().await.unwrap().unwrap();
    assert!(matches!(
        decision.message,
        Some(FromControl::RequestDecision(_))
    ));

    let whole = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n";
    let begun = "data: {\"choices\":[{\"ind";
    outbound
        .send(message(ToControl::StreamChunk(StreamChunk {
            seq: 0,
            data: Bytes::from(format!("{whole}{begun}")),
        })))
        .await
        .unwrap();
    let reply = loop {
        match inbound.message().await.unwrap().unwrap().message {
            Some(FromControl::ChunkReply(reply)) => break reply,
            Some(FromControl::Keepalive(_)) => continue,
            other => panic!("expected a chunk reply, got {other:?}"),
        }
    };
    assert_eq!(reply.seq, 0);
    assert!(reply.pass_through_rest, "{reply:?}");
    assert!(!reply.end_stream);
    assert_eq!(
        reply.chunks.concat(),
        format!("{whole}{begun}").as_bytes(),
        "the failed event passes unchanged, the begun one is handed back"
    );
}

/// With `--control-plane-token`, a call stream without the token, or with another one, is
/// refused before any of its messages is read, and the data plane applies its fail mode.
#[tokio::test]
async fn the_control_plane_token_is_required_on_every_call_stream() {
    // Mid-rotation the control plane accepts the old and the new token, and a data plane
    // given both presents the first.
    for (accepted, presented, expected) in [
        ("s3cret", Some("s3cret"), 200),
        ("s3cret", Some("guess"), 503),
        ("s3cret", None, 503),
        ("old, new", Some("new"), 200),
        ("old, new", Some("old"), 200),
        ("old, new", Some("guess,old"), 503),
        ("new", Some("new, old"), 200),
    ] {
        let stack = Stack::start(StackOptions {
            control_plane_token: Some(accepted.into()),
            data_plane_token: presented.map(str::to_owned),
            ..StackOptions::yaml("policies: [{type: all_caps}]")
        })
        .await;
        let response = Client::new().post(&stack.openai_url(), &[], OPENAI).await;
        assert_eq!(
            response.status,
            expected,
            "{presented:?}: {}",
            response.text()
        );
        if expected == 503 {
            response.assert_openai_error(503, "control-plane token");
            assert!(
                stack.mock.requests().is_empty(),
                "fail-closed: upstream never called"
            );
        }
    }
}

/// A control plane asked to serve the data-plane protocol on a non-loopback address without a
/// token refuses to start, unless told `--insecure`.
#[tokio::test]
async fn a_control_plane_without_a_token_refuses_a_non_loopback_address() {
    use clap::Parser;
    use luthien_controlplane::server::{ControlPlaneConfig, ServeError};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: ControlPlaneConfig,
    }
    let config = Cli::try_parse_from(["luthien-controlplane", "--no-store"])
        .unwrap()
        .config;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let refused = luthien_controlplane::serve(
        config.clone(),
        Chain::default(),
        listener,
        None,
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    let Err(error @ ServeError::Unauthenticated(_)) = refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert!(error.to_string().contains("--insecure"), "{error}");

    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let insecure = ControlPlaneConfig {
        insecure: true,
        ..config
    };
    let served = tokio::spawn(luthien_controlplane::serve(
        insecure,
        Chain::default(),
        listener,
        None,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!served.is_finished(), "--insecure serves");
    stop.cancel();
    served.await.unwrap().unwrap();
}

/// `--control-plane` takes a list: each call goes to one control plane, round robin, and a
/// control plane that cannot take a call (here: nothing listens) is passed over for the next
/// before anything went upstream, so no call fails and none reaches the upstream twice.
#[tokio::test]
async fn calls_spread_over_the_control_planes_and_skip_a_dead_one() {
    use luthien_store::{CallFilter, Store, StoreOptions};
    use luthien_tests::databases::TestDatabase;

    let databases = [TestDatabase::sqlite().await, TestDatabase::sqlite().await];
    let mut planes = Vec::new();
    for database in &databases {
        planes.push(
            Stack::start(StackOptions {
                database_url: Some(database.url.clone()),
                ..StackOptions::default()
            })
            .await,
        );
    }
    let dead = luthien_tests::stack::unused_address().await;
    let list = format!(
        "http://{dead}, {}, {}",
        planes[0].control_plane.clone().unwrap(),
        planes[1].control_plane.clone().unwrap()
    );
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::External(list),
        ..StackOptions::default()
    })
    .await;
    let client = Client::new();
    for i in 0..12 {
        let body = if i % 2 == 0 { OPENAI } else { OPENAI_STREAM };
        let response = client.post(&stack.openai_url(), &[], body).await;
        assert_eq!(response.status, 200, "call {i}: {}", response.text());
    }
    assert_eq!(
        stack.mock.requests().len(),
        12,
        "each call reached upstream once"
    );
    let mut stores = Vec::new();
    for database in &databases {
        stores.push(
            Store::open(&database.url, StoreOptions::default())
                .await
                .unwrap(),
        );
    }
    let counts = luthien_tests::wait::eventually(
        "all twelve calls recorded",
        Duration::from_secs(10),
        || async {
            let mut counts = Vec::new();
            for store in &stores {
                let page = store.list_calls(&CallFilter::default()).await.unwrap();
                let ended = page
                    .calls
                    .iter()
                    .filter(|call| call.status != luthien_store::events::CallStatus::InProgress);
                counts.push(ended.count());
            }
            (counts.iter().sum::<usize>() == 12).then_some(counts)
        },
    )
    .await;
    assert_eq!(counts.iter().sum::<usize>(), 12, "{counts:?}");
    assert!(
        counts.iter().all(|&count| count >= 4),
        "both control planes take a share: {counts:?}"
    );
}
