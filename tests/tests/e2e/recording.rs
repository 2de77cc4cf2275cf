//! Every call recorded: mock upstream → data plane → control plane → event
//! store → read back through the real reader, on SQLite and PostgreSQL;
//! live activity through a real Redis.

use std::time::Duration;

use luthien_store::events::{CallEvent, CallStatus, CallSummary, EventPayload};
use luthien_store::{CallFilter, Store, StoreOptions};
use luthien_tests::databases::{TestDatabase, redis_url};
use luthien_tests::{Client, Stack, StackOptions, wait};
use serde_json::{Value, json};

const TEXT: &str = "Hello from the mock upstream. The quick brown fox jumps over the lazy dog.";

const POLICY: &str = r#"
policies:
  - type: all_caps
  - type: string_replace
    name: fox-to-cat
    config:
      replacements: [{from: "fox", to: "cat"}]
"#;

fn request_body(openai: bool, stream: bool) -> Value {
    if openai {
        json!({
            "model": "gpt-4o-mini",
            "stream": stream,
            "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
            "messages": [{"role": "user", "content": "Tell me about the fox."}],
        })
    } else {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 128,
            "stream": stream,
            "metadata": {"user_id": "user_abc_account__session_5e55-10"},
            "messages": [{"role": "user", "content": "Tell me about the fox."}],
        })
    }
}

/// Polls the store until the call is complete (the writer batches).
async fn recorded(store: &Store, call_id: &str) -> (CallSummary, Vec<CallEvent>) {
    let what = format!("call {call_id} recorded with its response");
    wait::eventually(&what, Duration::from_secs(15), || async {
        store
            .get_call(call_id)
            .await
            .expect("read call")
            .filter(|(call, events)| {
                call.status != CallStatus::InProgress
                    && events
                        .iter()
                        .any(|event| event.payload.event_type() == "response")
            })
    })
    .await
}

fn text_of(openai: bool, response: &Value) -> String {
    if openai {
        response["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    } else {
        response["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|block| block["type"] == "text")
            .filter_map(|block| block["text"].as_str())
            .collect()
    }
}

#[tokio::test]
async fn calls_round_trip_through_the_store_on_sqlite_and_postgres() {
    for database in TestDatabase::both().await {
        let backend = database.backend();
        let stack = Stack::start(StackOptions {
            database_url: Some(database.url.clone()),
            ..StackOptions::yaml(POLICY)
        })
        .await;
        let store = Store::open(
            &database.url,
            StoreOptions {
                migrate: false,
                ..StoreOptions::default()
            },
        )
        .await
        .expect("open store for reading");
        let client = Client::new();
        for openai in [true, false] {
            for stream in [false, true] {
                let context = format!("{backend} openai={openai} stream={stream}");
                let (url, direct_url) = if openai {
                    (stack.openai_url(), stack.direct_openai_url())
                } else {
                    (stack.anthropic_url(), stack.direct_anthropic_url())
                };
                let body = request_body(openai, stream).to_string();
                let secrets = [
                    ("authorization", "Bearer sk-secret-openai-123"),
                    ("x-api-key", "sk-ant-secret-456"),
                    ("anthropic-version", "2023-06-01"),
                    ("x-mock-chunk-size", "4"),
                ];
                let response = client.post(&url, &secrets, body.clone()).await;
                assert_eq!(response.status, 200, "{context}: {}", response.text());
                let call_id = response.header("x-luthien-call-id").unwrap().to_owned();

                let (call, events) = recorded(&store, &call_id).await;
                assert_eq!(call.status, CallStatus::Completed, "{context}");
                assert_eq!(call.stream, stream);
                assert_eq!(call.api.name(), if openai { "openai" } else { "anthropic" });
                assert!(call.policy_changed, "{context}");
                assert!(call.duration_ms.unwrap_or_default() > 0.0, "{context}");
                assert!(
                    call.usage.output_tokens.unwrap_or_default() > 0,
                    "{context}: {call:?}"
                );
                if !openai {
                    assert_eq!(call.session_id.as_deref(), Some("5e55-10"), "{context}");
                }

                let sequences: Vec<u32> = events.iter().map(|event| event.sequence).collect();
                assert_eq!(
                    sequences,
                    (0..events.len() as u32).collect::<Vec<_>>(),
                    "{context}"
                );

                // The request: original equals what the client sent; headers
                // kept, credentials gone.
                let EventPayload::Request {
                    original,
                    final_,
                    headers,
                } = &events[0].payload
                else {
                    panic!("{context}: first event is the request: {:?}", events[0]);
                };
                assert_eq!(original, &serde_json::from_str::<Value>(&body).unwrap());
                // string_replace applies to requests too: the final request
                // is what went upstream.
                assert_eq!(
                    final_.value()["messages"][0]["content"],
                    "Tell me about the cat."
                );
                let upstream = stack.mock.requests().last().unwrap().json();
                assert_eq!(final_, &upstream, "{context}");
                assert_eq!(headers["anthropic-version"], "2023-06-01");
                assert!(
                    headers.get("authorization").is_none() && headers.get("x-api-key").is_none()
                );

                // The response: original is what upstream answered (streams
                // reconstructed), final what the client got.
                let direct = client
                    .post(
                        &direct_url,
                        &secrets,
                        request_body(openai, false).to_string(),
                    )
                    .await
                    .json();
                let response_event = events
                    .iter()
                    .find(|event| event.payload.event_type() == "response")
                    .unwrap();
                let EventPayload::Response {
                    original,
                    final_,
                    chunks_received,
                    chunks_sent,
                    ..
                } = &response_event.payload
                else {
                    unreachable!()
                };
                let (original, final_) = (
                    &original.as_ref().unwrap().value(),
                    &final_.as_ref().unwrap().value(),
                );
                assert_eq!(text_of(openai, original), TEXT, "{context}");
                assert_eq!(text_of(openai, &direct), TEXT);
                assert_eq!(
                    text_of(openai, final_),
                    TEXT.replace("fox", "cat").to_uppercase(),
                    "{context}"
                );
                if stream {
                    assert!(*chunks_received > 5, "{context}: {chunks_received}");
                    assert!(*chunks_sent > 5, "{context}: {chunks_sent}");
                    if openai {
                        // include_usage trailing chunk made it into the reconstruction.
                        assert!(
                            original["usage"]["total_tokens"].as_u64().is_some(),
                            "{context}"
                        );
                    }
                } else {
                    assert_eq!(
                        original, &direct,
                        "{context}: non-streamed original is upstream's body"
                    );
                }

                // The policy said what it did.
                let policy_events: Vec<&EventPayload> = events
                    .iter()
                    .map(|event| &event.payload)
                    .filter(|payload| payload.event_type() == "policy")
                    .collect();
                assert!(
                    policy_events.iter().any(|payload| matches!(
                        payload,
                        EventPayload::Policy { policy, action, .. } if policy == "fox-to-cat" && action == "replaced"
                    )),
                    "{context}: {policy_events:?}"
                );
            }
        }

        // The reader's list finds them, newest first, filterable.
        let page = store.list_calls(&CallFilter::default()).await.unwrap();
        assert_eq!(page.calls.len(), 4, "{backend}");
        let anthropic = store
            .list_calls(&CallFilter {
                api: Some(luthien_api::Api::AnthropicMessages),
                ..CallFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(anthropic.calls.len(), 2);
        assert!(anthropic.calls[0].created_at_micros >= anthropic.calls[1].created_at_micros);

        // No secret anywhere in what was stored.
        for call in &page.calls {
            let (_, events) = store.get_call(&call.call_id).await.unwrap().unwrap();
            let stored = serde_json::to_string(&events).unwrap();
            assert!(!stored.contains("sk-secret-openai-123"), "{backend}");
            assert!(!stored.contains("sk-ant-secret-456"), "{backend}");
        }
        store.close().await;
    }
}

#[tokio::test]
async fn blocked_and_failed_calls_are_recorded_with_how_they_ended() {
    let database = TestDatabase::sqlite().await;
    let stack = Stack::start(StackOptions {
        database_url: Some(database.url.clone()),
        ..StackOptions::yaml("policies: [{type: noop}]")
    })
    .await;
    let store = Store::open(&database.url, StoreOptions::default())
        .await
        .unwrap();
    let client = Client::new();
    let body = request_body(true, false).to_string();
    let response = client
        .post(
            &stack.openai_url(),
            &[("x-mock-status", "429")],
            body.clone(),
        )
        .await;
    assert_eq!(response.status, 429);
    let (call, events) = recorded(&store, response.header("x-luthien-call-id").unwrap()).await;
    assert_eq!(call.status, CallStatus::UpstreamError);
    let EventPayload::Response {
        upstream_status, ..
    } = &events.last().unwrap().payload
    else {
        panic!("last event is the response");
    };
    assert_eq!(*upstream_status, Some(429));

    // Observe mode still records streams, reconstructed.
    let response = client
        .post(
            &stack.openai_url(),
            &[],
            request_body(true, true).to_string(),
        )
        .await;
    let (call, events) = recorded(&store, response.header("x-luthien-call-id").unwrap()).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert!(!call.policy_changed);
    let EventPayload::Response {
        original, final_, ..
    } = &events.last().unwrap().payload
    else {
        panic!("last event is the response");
    };
    assert_eq!(original, final_);
    assert_eq!(text_of(true, &original.as_ref().unwrap().value()), TEXT);

    // Valid JSON this plane cannot hold as numbers (beyond a double) goes upstream, which
    // decides (the mock refuses it), and is recorded as the text it was, not lost.
    let huge = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"temperature":1e400}"#;
    let response = client.post(&stack.openai_url(), &[], huge).await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("mock upstream"),
        "{}",
        response.text()
    );
    let (_, events) = recorded(&store, response.header("x-luthien-call-id").unwrap()).await;
    let EventPayload::Request { original, .. } = &events[0].payload else {
        panic!("first event is the request");
    };
    assert_eq!(original.json(), huge);
}

#[tokio::test]
async fn activity_reaches_a_real_redis_subscriber() {
    let redis = redis::Client::open(redis_url()).unwrap();
    let mut pubsub = redis
        .get_async_pubsub()
        .await
        .expect("Redis reachable (see README)");
    pubsub.subscribe("luthien:activity").await.unwrap();

    let stack = Stack::start(StackOptions {
        redis_url: Some(redis_url()),
        ..StackOptions::yaml("policies: [{type: all_caps}]")
    })
    .await;
    // The bus subscribes in the background; give it a moment before the call
    // so this test also sees the echo path work.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = Client::new()
        .post(
            &stack.openai_url(),
            &[],
            request_body(true, false).to_string(),
        )
        .await;
    let call_id = response.header("x-luthien-call-id").unwrap().to_owned();

    let mut messages = futures_util::StreamExt::boxed(pubsub.on_message());
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen
        .last()
        .is_none_or(|activity: &Value| activity["event_type"] != "response")
    {
        let message =
            tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut messages))
                .await
                .expect("activity within 10 s")
                .expect("subscription open");
        let payload: String = message.get_payload().unwrap();
        let activity: Value = serde_json::from_str(&payload).unwrap();
        if activity["call_id"] == call_id.as_str() {
            seen.push(activity);
        }
    }
    let types: Vec<&str> = seen
        .iter()
        .map(|activity| activity["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["request", "policy", "response"]);
    assert!(
        seen[1]["summary"]
            .as_str()
            .unwrap()
            .starts_with("all_caps: upper-cased"),
        "{}",
        seen[1]
    );
    assert_eq!(seen[2]["model"], "gpt-4o-mini");
    assert!(
        seen[2]["summary"].as_str().unwrap().contains("completed"),
        "{}",
        seen[2]
    );
}

/// The `detail` of a call's response record ("" when it has none).
fn response_detail(events: &[CallEvent]) -> String {
    events
        .iter()
        .find_map(|event| match &event.payload {
            EventPayload::Response { detail, .. } => detail.clone(),
            _ => None,
        })
        .unwrap_or_default()
}

/// An OpenAI-compatible upstream whose `/v1/chat/completions` answers every call with a
/// `text/event-stream` body made of `pieces`, one frame each.
async fn scripted_stream_upstream(
    pieces: Vec<bytes::Bytes>,
) -> (String, tokio_util::sync::DropGuard) {
    use axum::body::Body;
    use axum::response::Response;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let pieces = pieces.clone();
            async move {
                let body = futures_util::stream::iter(
                    pieces.into_iter().map(Ok::<_, std::convert::Infallible>),
                );
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(body))
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    (url, shutdown.drop_guard())
}

/// One proper event, then an event that never ends: `frames` frames of 64 KiB without a blank
/// line, then `[DONE]`.
async fn endless_event_upstream(frames: usize) -> (String, tokio_util::sync::DropGuard) {
    use bytes::Bytes;
    let first = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hello\"},\"finish_reason\":null}]}\n\n";
    let mut pieces = vec![Bytes::from_static(first.as_bytes())];
    pieces.push(Bytes::from_static(b"data: {\"filler\":\""));
    pieces.extend((0..frames).map(|_| Bytes::from(vec![b'a'; 64 * 1024])));
    pieces.push(Bytes::from_static(b"\"}\n\ndata: [DONE]\n\n"));
    scripted_stream_upstream(pieces).await
}

/// An upstream that answers a streamed call with something that is not server-sent events
/// (here a JSON error body under `text/event-stream`): transforming, the client gets an
/// in-band error instead; observing, it gets the bytes. Both are recorded as upstream errors.
#[tokio::test]
async fn a_stream_that_is_not_server_sent_events_is_an_upstream_error() {
    let database = TestDatabase::sqlite().await;
    let body = br#"{"error": {"message": "model overloaded", "type": "server_error"}}"#;
    let (upstream, _upstream) =
        scripted_stream_upstream(vec![bytes::Bytes::from_static(body)]).await;
    let store = Store::open(&database.url, StoreOptions::default())
        .await
        .expect("open store");
    for (chain, transform) in [
        ("policies: [{type: all_caps}]", true),
        ("policies: [{type: noop}]", false),
    ] {
        let stack = Stack::start(StackOptions {
            database_url: Some(database.url.clone()),
            upstream_override: Some(upstream.clone()),
            ..StackOptions::yaml(chain)
        })
        .await;
        let request = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let response = Client::new()
            .post(&stack.openai_url(), &[], request.to_string())
            .await;
        assert_eq!(response.status, 200);
        let call_id = response.header("x-luthien-call-id").unwrap().to_owned();
        let text = response.text().to_owned();
        if transform {
            assert!(text.starts_with("data: {\"error\""), "{text}");
            assert!(text.contains("not server-sent events"), "{text}");
            assert!(!text.contains("model overloaded"), "{text}");
        } else {
            assert_eq!(text.as_bytes(), body, "observe mode forwards the bytes");
        }
        let (call, events) = recorded(&store, &call_id).await;
        assert_eq!(
            call.status,
            CallStatus::UpstreamError,
            "transform={transform}"
        );
        let detail = response_detail(&events);
        assert!(
            detail
                .starts_with("upstream stream is not server-sent events: it sent \"{\\\"error\\\""),
            "transform={transform}: {detail}"
        );
    }
}

/// One upstream event larger than `--max-sse-event-bytes`: the control plane holds at most
/// the cap. Transforming, it ends the client's stream with an in-band error after the events
/// it could police; observing, the client gets every byte and only the record stops. Both
/// records say why.
#[tokio::test]
async fn an_endless_upstream_event_is_capped_and_the_record_says_why() {
    const CAP: usize = 256 * 1024;
    const FRAMES: usize = 32; // 2 MiB of one event, eight times the cap
    let database = TestDatabase::sqlite().await;
    let (upstream, _upstream) = endless_event_upstream(FRAMES).await;
    let store = Store::open(&database.url, StoreOptions::default())
        .await
        .expect("open store");
    for (chain, transform) in [
        ("policies: [{type: all_caps}]", true),
        ("policies: [{type: noop}]", false),
    ] {
        let stack = Stack::start(StackOptions {
            database_url: Some(database.url.clone()),
            upstream_override: Some(upstream.clone()),
            max_sse_event_bytes: CAP,
            ..StackOptions::yaml(chain)
        })
        .await;
        let body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let response = Client::new()
            .post(&stack.openai_url(), &[], body.to_string())
            .await;
        assert_eq!(response.status, 200, "{}", response.text());
        let call_id = response.header("x-luthien-call-id").unwrap().to_owned();
        let text = String::from_utf8_lossy(&response.body).into_owned();
        if transform {
            assert!(
                text.starts_with("data: {"),
                "{}",
                &text[..200.min(text.len())]
            );
            assert!(
                text.contains("\"content\":\"HELLO\""),
                "the policed event arrives"
            );
            assert!(
                !text.contains("aaaa"),
                "nothing of the oversized event reaches the client unpoliced"
            );
            assert!(
                text.trim_end().ends_with("}}"),
                "ends with the in-band error: {text}"
            );
            let error: Value =
                serde_json::from_str(text.trim_end().rsplit("data: ").next().unwrap()).unwrap();
            assert_eq!(error["error"]["type"], "api_error");
            assert!(
                error["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("larger than 262144 bytes"),
                "{error}"
            );
        } else {
            assert_eq!(
                response.body.len(),
                text.find("data: {\"filler").unwrap() + 17 + FRAMES * 64 * 1024 + 18,
                "observe mode: the client gets every byte"
            );
            assert!(text.ends_with("data: [DONE]\n\n"));
        }
        let (_, events) = recorded(&store, &call_id).await;
        let detail = response_detail(&events);
        assert!(
            detail.starts_with(
                "stream truncated: upstream sent an SSE event larger than 262144 bytes"
            ),
            "transform={transform}: {detail}"
        );
    }
}

/// A `CallStart` reusing a real call's id, as anyone who reaches the port could send: while
/// the call runs, the same control plane refuses the stream; once it has ended, the stored call
/// is never rewritten.
#[tokio::test]
async fn a_call_id_cannot_be_reused_to_rewrite_a_record() {
    use luthien_proto::common::v1::Api as ProtoApi;
    use luthien_proto::dataplane::v1::control_plane_service_client::ControlPlaneServiceClient;
    use luthien_proto::dataplane::v1::data_plane_message::Message as ToControl;
    use luthien_proto::dataplane::v1::{CallEnd, CallOutcome, CallStart, DataPlaneMessage};

    let database = TestDatabase::sqlite().await;
    let stack = Stack::start(StackOptions {
        database_url: Some(database.url.clone()),
        ..StackOptions::yaml("policies: [{type: noop}]")
    })
    .await;
    let store = Store::open(&database.url, StoreOptions::default())
        .await
        .unwrap();
    let client = Client::new();
    let real = client
        .post(
            &stack.openai_url(),
            &[],
            request_body(true, false).to_string(),
        )
        .await;
    assert_eq!(real.status, 200);
    let call_id = real.header("x-luthien-call-id").unwrap().to_owned();
    let (stored, _) = recorded(&store, &call_id).await;
    assert_eq!(stored.status, CallStatus::Completed);

    let channel = tonic::transport::Endpoint::from_shared(stack.control_plane.clone().unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let start = |call_id: &str| DataPlaneMessage {
        message: Some(ToControl::CallStart(CallStart {
            call_id: call_id.to_owned(),
            api: ProtoApi::OpenaiChat.into(),
            model: "forged-model".into(),
            body: bytes::Bytes::from_static(b"{\"model\":\"forged-model\",\"messages\":[]}"),
            ..CallStart::default()
        })),
    };
    // A forged stream for the ended call: it runs, and its records change nothing.
    let forged = vec![
        start(&call_id),
        DataPlaneMessage {
            message: Some(ToControl::CallEnd(CallEnd {
                outcome: CallOutcome::Blocked.into(),
                detail: "forged".into(),
                ..CallEnd::default()
            })),
        },
    ];
    let mut inbound = ControlPlaneServiceClient::new(channel.clone())
        .process_call(tokio_stream::iter(forged))
        .await
        .unwrap()
        .into_inner();
    while let Ok(Some(_)) = inbound.message().await {}

    // Two streams with one id on one control plane: the second is refused at once.
    let (held, queue) = tokio::sync::mpsc::channel(1);
    held.send(start("in-flight-id")).await.unwrap();
    let mut first = ControlPlaneServiceClient::new(channel.clone())
        .process_call(tokio_stream::wrappers::ReceiverStream::new(queue))
        .await
        .unwrap()
        .into_inner();
    assert!(
        first.message().await.unwrap().is_some(),
        "the first gets its decision"
    );
    let mut second = ControlPlaneServiceClient::new(channel)
        .process_call(tokio_stream::iter([start("in-flight-id")]))
        .await
        .unwrap()
        .into_inner();
    let refused = second.message().await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused}");
    drop(held);

    // The writer keeps order: once a later call is stored, the forged records were handled.
    let later = client
        .post(
            &stack.openai_url(),
            &[],
            request_body(true, false).to_string(),
        )
        .await;
    recorded(&store, later.header("x-luthien-call-id").unwrap()).await;
    let (call, events) = store.get_call(&call_id).await.unwrap().unwrap();
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.model, "gpt-4o-mini");
    assert_eq!(call, stored, "the stored call is unchanged");
    assert!(
        events
            .iter()
            .all(|event| !format!("{:?}", event.payload).contains("forged")),
        "{events:?}"
    );
}

/// A client that leaves before the upstream answered is recorded as gone, not abandoned: the
/// data plane's end of the call reaches the control plane before the stream closes.
#[tokio::test]
async fn a_client_leaving_before_the_upstream_answers_is_recorded_as_gone() {
    let database = TestDatabase::sqlite().await;
    let stack = Stack::start(StackOptions {
        database_url: Some(database.url.clone()),
        ..StackOptions::yaml("policies: [{type: all_caps}]")
    })
    .await;
    let store = Store::open(&database.url, StoreOptions::default())
        .await
        .unwrap();
    let client = Client::new();
    let url = stack.openai_url();
    let body = request_body(true, false).to_string();
    let call = tokio::spawn(async move {
        client
            .send(
                "POST",
                &url,
                &[
                    ("content-type", "application/json"),
                    ("x-mock-scenario", "hang"),
                ],
                body,
            )
            .await
    });
    // The upstream never answers; the client gives up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    call.abort();
    let listed = wait::eventually("the call is listed", Duration::from_secs(10), || async {
        let page = store.list_calls(&CallFilter::default()).await.unwrap();
        page.calls
            .into_iter()
            .find(|call| call.status != CallStatus::InProgress)
    })
    .await;
    assert_eq!(listed.status, CallStatus::ClientGone, "{listed:?}");
}
