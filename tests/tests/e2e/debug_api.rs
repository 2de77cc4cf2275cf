//! The debug API through real clients: gRPC (tonic) with reflection and
//! health, the HTTP/JSON routes, the live activity tail on both, and the
//! admin key.

use std::time::Duration;

use futures_util::StreamExt;
use luthien_proto::admin::v1::debug_service_client::DebugServiceClient;
use luthien_proto::admin::v1::{
    GetCallDiffRequest, GetCallRequest, ListCallsRequest, StreamActivityRequest,
};
use luthien_tests::databases::TestDatabase;
use luthien_tests::{Client, Stack, StackOptions, TestResponse, wait};
use serde_json::{Value, json};
use tonic::transport::Channel;

const POLICY: &str = r#"
policies:
  - type: string_replace
    config:
      replacements: [{from: "fox", to: "cat"}]
      apply_to: response
"#;

async fn stack(database: &TestDatabase, admin_key: Option<&str>) -> Stack {
    Stack::start(StackOptions {
        database_url: Some(database.url.clone()),
        admin_key: admin_key.map(str::to_owned),
        ..StackOptions::yaml(POLICY)
    })
    .await
}

async fn channel(stack: &Stack) -> Channel {
    Channel::from_shared(stack.control_plane.clone().unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Makes a call and waits until the store has its response event.
const CLIENT_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn recorded_call(stack: &Stack, model: &str, stream: bool) -> String {
    traced_call(stack, model, stream, &[]).await
}

/// A completed, recorded call sent with `headers` (e.g. a `traceparent`).
async fn traced_call(stack: &Stack, model: &str, stream: bool, headers: &[(&str, &str)]) -> String {
    let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "fox?"}]});
    let response = Client::new()
        .post(&stack.openai_url(), headers, body.to_string())
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let call_id = response.header("x-luthien-call-id").unwrap().to_owned();
    wait::completed_call_json(stack.debug_http.as_ref().unwrap(), &call_id).await;
    call_id
}

async fn get(url: &str, headers: &[(&str, &str)]) -> TestResponse {
    luthien_tests::client::read(Client::new().send("GET", url, headers, "").await).await
}

#[tokio::test]
async fn reflection_lists_every_service_in_v1_and_v1alpha() {
    let stack = Stack::start(StackOptions::default()).await;
    let channel = channel(&stack).await;

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel.clone());
    let requests = tokio_stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "luthien.admin.v1.DebugService".into(),
            )),
        },
    ]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("list services answer");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for expected in [
        "luthien.dataplane.v1.ControlPlaneService",
        "luthien.admin.v1.DebugService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} in {names:?}"
        );
    }
    // Only what is served: remote policy servers implement PolicyService, not this plane.
    assert!(
        !names.iter().any(|name| name.contains("PolicyService")),
        "{names:?}"
    );
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("describe answer");
    };
    assert!(
        !files.file_descriptor_proto.is_empty(),
        "Debug is describable"
    );

    // Older tools (grpcurl < 1.8, Postman, evans) only speak v1alpha.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let mut alpha = AlphaClient::new(channel);
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut responses = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(AlphaResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha list services answer");
    };
    assert!(
        list.service
            .iter()
            .any(|service| service.name == "luthien.admin.v1.DebugService")
    );
}

#[tokio::test]
async fn grpc_debug_lists_gets_and_diffs_calls() {
    let database = TestDatabase::sqlite().await;
    let stack = stack(&database, None).await;
    let first = recorded_call(&stack, "gpt-4o-mini", false).await;
    let traceparent = format!("00-{CLIENT_TRACE_ID}-00f067aa0ba902b7-01");
    let second = traced_call(&stack, "gpt-4o", true, &[("traceparent", &traceparent)]).await;
    let mut client = DebugServiceClient::new(channel(&stack).await);

    let page = client
        .list_calls(ListCallsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = page
        .calls
        .iter()
        .map(|call| call.call_id.as_str())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");
    assert!(page.calls[0].policy_changed);
    assert!(page.calls[0].duration_ms.is_some());
    // The calls table keeps the trace each call belongs to.
    assert_eq!(page.calls[0].trace_id, CLIENT_TRACE_ID);
    assert_eq!(page.calls[1].trace_id, "", "an untraced call has none");

    let filtered = client
        .list_calls(ListCallsRequest {
            model: "gpt-4o-mini".into(),
            ..ListCallsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.calls.len(), 1);
    assert_eq!(filtered.calls[0].call_id, first);

    let paged = client
        .list_calls(ListCallsRequest {
            limit: 1,
            ..ListCallsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paged.calls.len(), 1);
    let rest = client
        .list_calls(ListCallsRequest {
            limit: 1,
            cursor: paged.next_cursor,
            ..ListCallsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.calls[0].call_id, first);

    let bad = client
        .list_calls(ListCallsRequest {
            status: "sideways".into(),
            ..ListCallsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let call = client
        .get_call(GetCallRequest {
            call_id: second.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(call.call.unwrap().model, "gpt-4o");
    assert_eq!(
        call.trace_url,
        format!("http://traces.example/{CLIENT_TRACE_ID}?call={second}")
    );
    let untraced = client
        .get_call(GetCallRequest {
            call_id: first.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(untraced.trace_url, "", "no trace to link to");
    let request = &call.events[0];
    assert_eq!(request.event_type, "request");
    // Payloads are real JSON objects, not strings.
    let payload = request.payload.as_ref().unwrap();
    let original = &payload.fields["original"];
    assert!(matches!(
        original.kind,
        Some(prost_types::value::Kind::StructValue(_))
    ));

    let diff = client
        .get_call_diff(GetCallDiffRequest {
            call_id: second.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .diff
        .unwrap();
    let response = &diff.fields["response"];
    let Some(prost_types::value::Kind::StructValue(response)) = &response.kind else {
        panic!("response half of the diff");
    };
    assert!(matches!(
        response.fields["changed"].kind,
        Some(prost_types::value::Kind::BoolValue(true))
    ));

    let missing = client
        .get_call(GetCallRequest {
            call_id: "no-such-call".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn activity_is_pushed_over_grpc_and_sse_with_filters() {
    let database = TestDatabase::sqlite().await;
    let stack = stack(&database, None).await;
    let mut client = DebugServiceClient::new(channel(&stack).await);
    let mut grpc_tail = client
        .stream_activity(StreamActivityRequest {
            model: "tail-model".into(),
            ..StreamActivityRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let sse = Client::new()
        .send(
            "GET",
            &format!(
                "{}/debug/activity/stream?event_type=response",
                stack.debug_http.as_ref().unwrap()
            ),
            &[],
            "",
        )
        .await;
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut sse_body = sse.into_body();

    recorded_call(&stack, "other-model", false).await;
    let call_id = recorded_call(&stack, "tail-model", false).await;

    let first = tokio::time::timeout(Duration::from_secs(10), grpc_tail.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.call_id, call_id,
        "the model filter hid the other call"
    );
    assert_eq!(first.event_type, "request");

    // The SSE tail only carries response events, of both calls.
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while text.matches("event: activity").count() < 2 {
        let frame =
            tokio::time::timeout_at(deadline, http_body_util::BodyExt::frame(&mut sse_body))
                .await
                .expect("SSE activity within 10 s")
                .unwrap()
                .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    let events = luthien_tests::wire::events(text.as_bytes());
    let activity: Vec<Value> = events
        .iter()
        .filter(|event| event.event.as_deref() == Some("activity"))
        .map(|event| event.json())
        .collect();
    assert!(
        activity
            .iter()
            .all(|message| message["event_type"] == "response"),
        "{activity:?}"
    );
    assert!(
        activity
            .iter()
            .any(|message| message["call_id"] == call_id.as_str())
    );
}

#[tokio::test]
async fn http_routes_answer_json_with_proper_statuses() {
    let database = TestDatabase::sqlite().await;
    let stack = stack(&database, None).await;
    let call_id = recorded_call(&stack, "gpt-4o-mini", true).await;
    let base = stack.debug_http.clone().unwrap();

    let list = get(
        &format!("{base}/debug/calls?model=gpt-4o-mini&limit=10"),
        &[],
    )
    .await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["calls"][0]["call_id"], call_id.as_str());
    assert_eq!(list.json()["calls"][0]["stream"], true);
    // `since`/`until` take unix microseconds or how long ago.
    let recent = get(&format!("{base}/debug/calls?since=1h"), &[]).await;
    assert_eq!(recent.status, 200, "{}", recent.text());
    assert_eq!(recent.json()["calls"][0]["call_id"], call_id.as_str());
    let older = get(&format!("{base}/debug/calls?until=1h"), &[]).await;
    assert_eq!(older.json()["calls"].as_array().map(Vec::len), Some(0));

    let detail = get(&format!("{base}/debug/calls/{call_id}"), &[])
        .await
        .json();
    assert_eq!(detail["events"][0]["payload"]["type"], "request");
    assert!(detail["events"][0]["payload"]["original"]["messages"].is_array());

    let diff = get(&format!("{base}/debug/calls/{call_id}/diff"), &[]).await;
    assert_eq!(diff.status, 200);
    let diff = diff.json();
    assert_eq!(diff["response"]["changed"], true);
    assert_eq!(diff["request"]["changed"], false);
    let segments = diff["response"]["text"]["segments"].as_array().unwrap();
    assert!(
        segments
            .iter()
            .any(|s| s["op"] == "delete" && s["text"].as_str().unwrap().contains("fox"))
    );
    assert!(
        segments
            .iter()
            .any(|s| s["op"] == "insert" && s["text"].as_str().unwrap().contains("cat"))
    );

    let missing = get(&format!("{base}/debug/calls/nope"), &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "not_found");
    for bad in [
        "status=sideways",
        "limit=many",
        "api=gemini",
        "since=yesterday",
        "cursor=garbage",
    ] {
        let response = get(&format!("{base}/debug/calls?{bad}"), &[]).await;
        assert_eq!(response.status, 400, "{bad}: {}", response.text());
        assert_eq!(response.json()["error"]["code"], "invalid_argument");
    }
}

#[tokio::test]
async fn the_admin_key_guards_grpc_and_http() {
    let database = TestDatabase::sqlite().await;
    let stack = stack(&database, Some("debug-secret")).await;
    let base = stack.debug_http.clone().unwrap();

    let denied = get(&format!("{base}/debug/calls"), &[]).await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["error"]["code"], "unauthenticated");
    let wrong = get(
        &format!("{base}/debug/calls"),
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    let allowed = get(
        &format!("{base}/debug/calls"),
        &[("authorization", "Bearer debug-secret")],
    )
    .await;
    assert_eq!(allowed.status, 200);

    // The UI's login exchanges the key for a signed, expiring session in an HttpOnly,
    // SameSite=Strict cookie that never holds the key.
    let client = Client::new();
    let login = luthien_tests::client::read(
        client
            .send(
                "POST",
                &format!("{base}/debug/login"),
                &[("content-type", "application/json")],
                r#"{"key":"debug-secret"}"#,
            )
            .await,
    )
    .await;
    assert_eq!(login.status, 204);
    let cookie = login.header("set-cookie").unwrap().to_owned();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=43200",
        "Path=/debug",
    ] {
        assert!(cookie.contains(attribute), "{attribute}: {cookie}");
    }
    assert!(
        !cookie.contains("debug-secret"),
        "the key stays out: {cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let pair = cookie.split(';').next().unwrap();
    let with_cookie = get(&format!("{base}/debug/calls"), &[("cookie", pair)]).await;
    assert_eq!(with_cookie.status, 200);
    // The raw key in a cookie, or a forged session, is not a login.
    for forged in ["luthien_admin=debug-secret", "luthien_session=debug-secret"] {
        let refused = get(&format!("{base}/debug/calls"), &[("cookie", forged)]).await;
        assert_eq!(refused.status, 401, "{forged}");
    }
    let tampered = format!(
        "{}0",
        pair.trim_end_matches(|c: char| c.is_ascii_hexdigit())
    );
    let refused = get(&format!("{base}/debug/calls"), &[("cookie", &tampered)]).await;
    assert_eq!(refused.status, 401, "{tampered}");
    // Behind a TLS proxy the cookie is Secure; logging out clears it.
    let over_tls = luthien_tests::client::read(
        client
            .send(
                "POST",
                &format!("{base}/debug/login"),
                &[("x-forwarded-proto", "https")],
                r#"{"key":"debug-secret"}"#,
            )
            .await,
    )
    .await;
    assert!(over_tls.header("set-cookie").unwrap().contains("; Secure"));
    let logout = luthien_tests::client::read(
        client
            .send("POST", &format!("{base}/debug/logout"), &[], "")
            .await,
    )
    .await;
    assert_eq!(logout.status, 204);
    let cleared = logout.header("set-cookie").unwrap();
    assert!(
        cleared.starts_with("luthien_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let bad_login = luthien_tests::client::read(
        client
            .send(
                "POST",
                &format!("{base}/debug/login"),
                &[],
                r#"{"key":"guess"}"#,
            )
            .await,
    )
    .await;
    assert_eq!(bad_login.status, 401);

    let mut client = DebugServiceClient::new(channel(&stack).await);
    let status = client
        .list_calls(ListCallsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(ListCallsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Bearer debug-secret".parse().unwrap());
    assert!(client.list_calls(request).await.is_ok());
}

/// Without an admin key the debug routes answer loopback clients only, while the probes (and
/// metrics) on the same listener answer every host, as a kubelet on another host needs.
#[tokio::test]
async fn without_an_admin_key_debug_routes_answer_loopback_only_and_probes_everyone() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: luthien_controlplane::ControlPlaneConfig,
    }
    // This host's own address on a non-loopback interface: connecting to it is a client that
    // is not on loopback.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe
        .connect("192.0.2.1:9")
        .or_else(|_| probe.connect("8.8.8.8:53"))
        .expect("a route off loopback");
    let host = probe.local_addr().unwrap().ip();
    assert!(!host.is_loopback(), "{host}");

    for (key, debug_from_elsewhere) in [("", 403), ("k", 401)] {
        let cli = Cli::try_parse_from([
            "cp",
            "--http-listen",
            "0.0.0.0:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-key",
            key,
            "--no-store",
        ])
        .unwrap();
        let http = luthien_controlplane::server::bind_debug_http(&cli.config)
            .await
            .unwrap();
        let port = http.local_addr().unwrap().port();
        assert!(http.local_addr().unwrap().ip().is_unspecified());
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        tokio::spawn(luthien_controlplane::serve(
            cli.config,
            luthien_policy::Chain::default(),
            grpc,
            Some(http),
            stop,
        ));
        let elsewhere = format!("http://{host}:{port}");
        let local = format!("http://127.0.0.1:{port}");
        let ready = luthien_tests::wait::eventually(
            "the probes answer",
            Duration::from_secs(10),
            || async {
                let response = get(&format!("{elsewhere}/readyz"), &[]).await;
                (response.status == 200).then_some(response)
            },
        )
        .await;
        assert_eq!(ready.text(), "ready");
        assert_eq!(get(&format!("{elsewhere}/healthz"), &[]).await.status, 200);
        assert_eq!(get(&format!("{elsewhere}/metrics"), &[]).await.status, 200);
        let refused = get(&format!("{elsewhere}/debug/calls"), &[]).await;
        assert_eq!(
            refused.status,
            debug_from_elsewhere,
            "key {key:?}: {}",
            refused.text()
        );
        let ui = get(&format!("{elsewhere}/debug/diff"), &[]).await;
        if key.is_empty() {
            assert_eq!(ui.status, 403, "the UI too");
            assert!(
                refused.text().contains("LUTHIEN_ADMIN_KEY"),
                "{}",
                refused.text()
            );
            assert_eq!(get(&format!("{local}/debug/policy"), &[]).await.status, 200);
        }
    }
}

#[tokio::test]
async fn metrics_expose_the_event_writer_and_activity_counters() {
    let database = TestDatabase::sqlite().await;
    let stack = stack(&database, None).await;
    recorded_call(&stack, "gpt-4o-mini", false).await;
    let metrics = get(
        &format!("{}/metrics", stack.debug_http.as_ref().unwrap()),
        &[],
    )
    .await;
    assert_eq!(metrics.status, 200);
    let value = |name: &str| -> u64 {
        metrics
            .text()
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing in:\n{}", metrics.text()))
            .parse()
            .unwrap()
    };
    assert!(
        value("luthien_events_written_total") >= 3,
        "call row, request and response events"
    );
    assert_eq!(value("luthien_events_dropped_total"), 0);
    assert!(value("luthien_activity_published_total") >= 2);
}

/// `--metrics-require-admin-key` and `--reflection-require-admin-key` put `/metrics` and gRPC
/// reflection behind the admin key; by default both stay open.
#[tokio::test]
async fn metrics_and_reflection_can_require_the_admin_key() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    for guarded in [false, true] {
        let stack = Stack::start(StackOptions {
            admin_key: Some("metrics-secret".into()),
            guard_metrics_and_reflection: guarded,
            ..StackOptions::default()
        })
        .await;
        let metrics = format!("{}/metrics", stack.debug_http.clone().unwrap());
        let open = get(&metrics, &[]).await;
        assert_eq!(
            open.status,
            if guarded { 401 } else { 200 },
            "guarded={guarded}"
        );
        let with_key = get(&metrics, &[("authorization", "Bearer metrics-secret")]).await;
        assert_eq!(with_key.status, 200);
        assert!(
            with_key.text().contains("# TYPE luthien_"),
            "{}",
            with_key.text()
        );

        let mut client = ServerReflectionClient::new(channel(&stack).await);
        let answer = client
            .server_reflection_info(tokio_stream::iter([list()]))
            .await;
        assert_eq!(answer.is_err(), guarded, "guarded={guarded}");
        if guarded {
            assert_eq!(answer.unwrap_err().code(), tonic::Code::Unauthenticated);
            let mut request = tonic::Request::new(tokio_stream::iter([list()]));
            request
                .metadata_mut()
                .insert("authorization", "Bearer metrics-secret".parse().unwrap());
            let mut answers = client
                .server_reflection_info(request)
                .await
                .unwrap()
                .into_inner();
            assert!(answers.next().await.unwrap().is_ok());
        }
    }
}
