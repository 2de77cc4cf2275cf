//! Auxiliary endpoints (`POST /v1/messages/count_tokens`, `GET /v1/models`,
//! `GET /v1/models/{id}`): passed straight to the right provider without the
//! control plane, under the main routes' rules (client key, provider key,
//! body limit, deadlines, errors in the client's format), counted in
//! metrics, and off with `auxiliary_endpoints: false`.

use std::time::Duration;

use luthien_dataplane::{DataPlaneConfig, FailMode};
use luthien_tests::databases::TestDatabase;
use luthien_tests::stack::unused_address;
use luthien_tests::{Client, MockUpstream, Stack, StackOptions, TestResponse, wait};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

const VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");
/// A count_tokens body with formatting a re-serialization would lose.
const COUNT_TOKENS: &str = "{\"model\": \"claude-sonnet-4-5\",\n  \"system\": \"Be brief.\",\n  \"messages\": [{\"role\": \"user\", \"content\": \"one two three\"}],\n  \"unknown_field\": {\"kept\": true}}";
const OPENAI: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
const LUTHIEN_KEY: &str = "luthien-secret";

/// No header of any request the mock received carries the Luthien key.
fn assert_key_never_forwarded(mock: &MockUpstream) {
    for request in mock.requests() {
        for value in request.headers.values() {
            assert!(
                !value
                    .as_bytes()
                    .windows(LUTHIEN_KEY.len())
                    .any(|window| window == LUTHIEN_KEY.as_bytes()),
                "the Luthien key reached {}",
                request.path
            );
        }
    }
}

async fn get(url: &str, headers: &[(&str, &str)]) -> TestResponse {
    luthien_tests::client::read(Client::new().send("GET", url, headers, "").await).await
}

/// POSTs `body` as is (the test client's `post` would add a content type).
async fn post(url: &str, headers: &[(&str, &str)], body: &str) -> TestResponse {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    luthien_tests::client::read(Client::new().send("POST", url, &all, body.to_owned()).await).await
}

/// A data plane started from an explicit configuration, for what
/// [`StackOptions`] does not set: separate upstreams per provider, and the
/// auxiliary endpoints turned off. Its control plane is an address where
/// nothing listens (fail-closed): only routes that never ask it can answer.
struct DataPlane {
    url: String,
    _shutdown: DropGuard,
}

async fn data_plane(openai: &MockUpstream, anthropic: &MockUpstream, auxiliary: bool) -> DataPlane {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let config = DataPlaneConfig {
        listen,
        control_plane: format!("http://{}", unused_address().await),
        control_plane_resolve_interval: Duration::from_secs(5),
        control_plane_retries: 2,
        control_plane_tls: Default::default(),
        unpoliced_spool_bytes: 1024 * 1024,
        openai_base_url: openai.openai_base_url(),
        anthropic_base_url: anthropic.anthropic_base_url(),
        openai_api_key: Some("sk-openai-provider".into()),
        anthropic_api_key: Some("sk-ant-provider".into()),
        client_api_key: Some(LUTHIEN_KEY.into()),
        fail_mode: FailMode::Closed,
        max_body_bytes: 1024 * 1024,
        max_response_bytes: 1024 * 1024,
        upstream_timeout: Duration::from_secs(10),
        cp_message_timeout: Duration::from_secs(5),
        cp_inactivity_timeout: Duration::from_secs(5),
        cp_connect_timeout: Duration::from_millis(300),
        propagate_trace_upstream: true,
        auxiliary_endpoints: auxiliary,
        send_before_decision: true,
        drain_delay: Duration::ZERO,
        drain_timeout: Duration::from_secs(10),
        edge: Default::default(),
        control_plane_token: None,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(luthien_dataplane::serve(config, listener, shutdown.clone()));
    DataPlane {
        url: format!("http://{listen}"),
        _shutdown: shutdown.drop_guard(),
    }
}

#[tokio::test]
async fn count_tokens_passes_through_byte_for_byte_with_the_provider_key() {
    let stack = Stack::start(StackOptions {
        client_api_key: Some(LUTHIEN_KEY.into()),
        anthropic_api_key: Some("sk-ant-provider".into()),
        ..StackOptions::default()
    })
    .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = [
        VERSION,
        ("x-api-key", LUTHIEN_KEY),
        ("anthropic-beta", "token-counting-2024-11-01"),
        ("traceparent", traceparent),
        ("keep-alive", "timeout=5"),
    ];
    let proxied = post(
        &format!("{}/v1/messages/count_tokens?beta=true", stack.proxy),
        &headers,
        COUNT_TOKENS,
    )
    .await;
    let direct = post(
        &format!(
            "{}/v1/messages/count_tokens",
            stack.mock.anthropic_base_url()
        ),
        &[VERSION],
        COUNT_TOKENS,
    )
    .await;
    assert_eq!(proxied.status, 200, "{}", proxied.text());
    assert_eq!(proxied.text(), r#"{"input_tokens":6}"#);
    assert_eq!(
        proxied.body, direct.body,
        "the mock's answer, byte for byte"
    );
    assert_eq!(proxied.header("content-type"), Some("application/json"));
    assert_eq!(
        proxied.header("x-luthien-call-id"),
        None,
        "not a call: nothing is recorded under an id"
    );

    let requests = stack.mock.requests();
    let received = &requests[0];
    assert_eq!(received.path, "/v1/messages/count_tokens");
    assert_eq!(received.query.as_deref(), Some("beta=true"));
    assert_eq!(received.body, COUNT_TOKENS.as_bytes(), "body unchanged");
    assert_eq!(received.header("x-api-key"), Some("sk-ant-provider"));
    assert_eq!(
        received.header("anthropic-beta"),
        Some("token-counting-2024-11-01")
    );
    assert_eq!(received.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(received.header("traceparent"), Some(traceparent));
    assert_eq!(received.header("keep-alive"), None, "hop-by-hop dropped");
    assert_key_never_forwarded(&stack.mock);

    // Upstream errors come back as they are.
    let forced = post(
        &format!("{}/v1/messages/count_tokens", stack.proxy),
        &[
            VERSION,
            ("x-api-key", LUTHIEN_KEY),
            ("x-mock-status", "529"),
        ],
        COUNT_TOKENS,
    )
    .await;
    let direct = post(
        &format!(
            "{}/v1/messages/count_tokens",
            stack.mock.anthropic_base_url()
        ),
        &[VERSION, ("x-mock-status", "529")],
        COUNT_TOKENS,
    )
    .await;
    assert_eq!(forced.status, 529);
    assert_eq!(forced.body, direct.body);
}

#[tokio::test]
async fn models_go_to_the_provider_the_request_speaks() {
    let openai = MockUpstream::start().await.unwrap();
    let anthropic = MockUpstream::start().await.unwrap();
    let proxy = data_plane(&openai, &anthropic, true).await;
    let bearer = format!("Bearer {LUTHIEN_KEY}");
    let openai_client = [("authorization", bearer.as_str())];
    let anthropic_client = [VERSION, ("x-api-key", LUTHIEN_KEY)];

    // OpenAI: the base URL already ends in /v1, which is not doubled.
    let cases = [
        ("/v1/models", 200),
        ("/v1/models/gpt-4o-mini", 200),
        ("/v1/models/gpt-nope", 404),
    ];
    for (path, status) in cases {
        let proxied = get(&format!("{}{path}", proxy.url), &openai_client).await;
        let direct = get(&format!("http://{}{path}", openai.addr()), &[]).await;
        assert_eq!(proxied.status, status, "{path}: {}", proxied.text());
        assert_eq!(proxied.body, direct.body, "{path}");
    }
    assert_eq!(
        get(&format!("{}/v1/models", proxy.url), &openai_client)
            .await
            .json()["data"][0]["id"],
        "gpt-4o-mini"
    );
    assert_eq!(
        get(&format!("{}/v1/models/gpt-nope", proxy.url), &openai_client)
            .await
            .json()["error"]["code"],
        "model_not_found"
    );
    // What came through Luthien carries the provider key (direct calls above
    // carry none).
    let received: Vec<_> = openai
        .requests()
        .into_iter()
        .filter(|r| r.header("authorization").is_some())
        .collect();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/models",
            "/v1/models/gpt-4o-mini",
            "/v1/models/gpt-nope",
            "/v1/models",
            "/v1/models/gpt-nope",
        ]
    );
    for request in &received {
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.header("authorization"),
            Some("Bearer sk-openai-provider")
        );
        assert_eq!(request.header("x-api-key"), None);
    }

    // Anthropic: `anthropic-version` (or `x-api-key`) picks it; the query
    // string paginates.
    let page = get(
        &format!("{}/v1/models?limit=1", proxy.url),
        &anthropic_client,
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.text());
    let direct = get(
        &format!("http://{}/v1/models?limit=1", anthropic.addr()),
        &[VERSION],
    )
    .await;
    assert_eq!(page.body, direct.body);
    assert_eq!(page.json()["has_more"], true);
    assert_eq!(page.json()["data"][0]["type"], "model");
    let model = get(
        &format!("{}/v1/models/claude-sonnet-4-5-20250929", proxy.url),
        &anthropic_client,
    )
    .await;
    assert_eq!(model.status, 200);
    assert_eq!(model.json()["display_name"], "Claude Sonnet 4.5");
    let missing = get(
        &format!("{}/v1/models/claude-nope", proxy.url),
        &anthropic_client,
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.text(),
        r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-nope"}}"#
    );
    let key_only = get(
        &format!("{}/v1/models", proxy.url),
        &[("x-api-key", LUTHIEN_KEY)],
    )
    .await;
    assert_eq!(key_only.status, 200);
    let received: Vec<_> = anthropic
        .requests()
        .into_iter()
        .filter(|r| r.header("x-api-key").is_some())
        .collect();
    let seen: Vec<(&str, Option<&str>)> = received
        .iter()
        .map(|r| (r.path.as_str(), r.query.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("/v1/models", Some("limit=1")),
            ("/v1/models/claude-sonnet-4-5-20250929", None),
            ("/v1/models/claude-nope", None),
            ("/v1/models", None),
        ]
    );
    for request in &received {
        assert_eq!(request.header("x-api-key"), Some("sk-ant-provider"));
        assert_eq!(request.header("authorization"), None);
    }
    assert_key_never_forwarded(&openai);
    assert_key_never_forwarded(&anthropic);

    // A model id may not climb out of /v1/models upstream.
    let climbing = get(
        &format!("{}/v1/models/%2e%2e/files", proxy.url),
        &openai_client,
    )
    .await;
    climbing.assert_openai_error(404, "not a model id");
    let empty = get(&format!("{}/v1/models/", proxy.url), &openai_client).await;
    empty.assert_openai_error(404, "/v1/models/");
    assert_eq!(
        openai
            .requests()
            .iter()
            .filter(|r| r.header("authorization").is_some())
            .count(),
        5,
        "neither reached upstream"
    );

    // The control plane of this data plane is down and it fails closed: a
    // chat call is refused, the auxiliary endpoints above never asked it.
    let chat = post(
        &format!("{}/v1/chat/completions", proxy.url),
        &openai_client,
        OPENAI,
    )
    .await;
    chat.assert_openai_error(503, "control plane");
}

#[tokio::test]
async fn client_key_is_required_when_configured() {
    let stack = Stack::start(StackOptions {
        client_api_key: Some(LUTHIEN_KEY.into()),
        ..StackOptions::default()
    })
    .await;
    let count_tokens = format!("{}/v1/messages/count_tokens", stack.proxy);
    let models = format!("{}/v1/models", stack.proxy);
    post(&count_tokens, &[VERSION], COUNT_TOKENS)
        .await
        .assert_anthropic_error(401, "API key");
    post(
        &count_tokens,
        &[VERSION, ("x-api-key", "wrong")],
        COUNT_TOKENS,
    )
    .await
    .assert_anthropic_error(401, "API key");
    get(&models, &[]).await.assert_openai_error(401, "API key");
    get(
        &format!("{models}/gpt-4o-mini"),
        &[("authorization", "Bearer wrong")],
    )
    .await
    .assert_openai_error(401, "API key");
    get(&models, &[VERSION])
        .await
        .assert_anthropic_error(401, "API key");
    assert!(stack.mock.requests().is_empty(), "nothing reached upstream");

    // With the key, and no provider key configured: the Luthien key is
    // dropped, the client's other credentials travel.
    let bearer = format!("Bearer {LUTHIEN_KEY}");
    let listed = get(&models, &[("authorization", &bearer)]).await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let counted = post(
        &count_tokens,
        &[
            VERSION,
            ("authorization", &bearer),
            ("x-api-key", "sk-ant-client"),
        ],
        COUNT_TOKENS,
    )
    .await;
    assert_eq!(counted.status, 200, "{}", counted.text());
    let requests = stack.mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].header("authorization"), None);
    assert_eq!(requests[1].header("x-api-key"), Some("sk-ant-client"));
    assert_key_never_forwarded(&stack.mock);
}

#[tokio::test]
async fn oversized_count_tokens_body_is_the_main_routes_413() {
    let stack = Stack::start(StackOptions {
        max_body_bytes: 1024,
        ..StackOptions::default()
    })
    .await;
    let big = json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x".repeat(4096)}]})
        .to_string();
    let counted = post(
        &format!("{}/v1/messages/count_tokens", stack.proxy),
        &[VERSION],
        &big,
    )
    .await;
    counted.assert_anthropic_error(413, "1024 bytes");
    let message = post(&stack.anthropic_url(), &[VERSION], &big).await;
    assert_eq!(counted.status, message.status);
    assert_eq!(counted.body, message.body, "the same error as /v1/messages");

    // Without a content-length (chunked), the limit still holds.
    let response = luthien_tests::client::post_chunked(
        &format!("{}/v1/messages/count_tokens", stack.proxy),
        &[VERSION],
        vec![bytes::Bytes::from(vec![b' '; 512]); 8],
    )
    .await;
    response.assert_anthropic_error(413, "1024 bytes");
    assert!(stack.mock.requests().is_empty());
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_and_a_slow_one_a_504() {
    let dead = unused_address().await;
    let stack = Stack::start(StackOptions {
        upstream_override: Some(format!("http://{dead}")),
        ..StackOptions::default()
    })
    .await;
    post(
        &format!("{}/v1/messages/count_tokens", stack.proxy),
        &[VERSION],
        COUNT_TOKENS,
    )
    .await
    .assert_anthropic_error(502, "unreachable");
    get(&format!("{}/v1/models", stack.proxy), &[])
        .await
        .assert_openai_error(502, "unreachable");
    get(&format!("{}/v1/models/claude-x", stack.proxy), &[VERSION])
        .await
        .assert_anthropic_error(502, "unreachable");

    let stack = Stack::start(StackOptions {
        upstream_timeout: Duration::from_millis(300),
        ..StackOptions::default()
    })
    .await;
    post(
        &format!("{}/v1/messages/count_tokens", stack.proxy),
        &[VERSION, ("x-mock-scenario", "hang")],
        COUNT_TOKENS,
    )
    .await
    .assert_anthropic_error(504, "in time");
    get(
        &format!("{}/v1/models", stack.proxy),
        &[("x-mock-scenario", "hang")],
    )
    .await
    .assert_openai_error(504, "in time");
}

#[tokio::test]
async fn turned_off_they_are_404_and_other_paths_stay_404() {
    let mock = MockUpstream::start().await.unwrap();
    let off = data_plane(&mock, &mock, false).await;
    let bearer = format!("Bearer {LUTHIEN_KEY}");
    let counted = post(
        &format!("{}/v1/messages/count_tokens", off.url),
        &[VERSION, ("x-api-key", LUTHIEN_KEY)],
        COUNT_TOKENS,
    )
    .await;
    counted.assert_anthropic_error(404, "/v1/messages/count_tokens");
    assert!(
        !counted.text().contains("GET /v1/models"),
        "the 404 lists only what is served: {}",
        counted.text()
    );
    get(
        &format!("{}/v1/models", off.url),
        &[("authorization", &bearer)],
    )
    .await
    .assert_openai_error(404, "no route");
    get(
        &format!("{}/v1/models/claude-sonnet-4-5-20250929", off.url),
        &[VERSION],
    )
    .await
    .assert_anthropic_error(404, "no route");
    for (method, path) in [
        ("GET", "/v1/responses/resp_1"),
        ("DELETE", "/v1/responses/resp_1"),
        ("POST", "/v1/responses/resp_1/cancel"),
        ("GET", "/v1/responses/resp_1/input_items"),
        ("POST", "/v1/responses/input_tokens"),
        ("POST", "/v1/responses/compact"),
    ] {
        let url = format!("{}{path}", off.url);
        let response = luthien_tests::client::read(
            Client::new()
                .send(method, &url, &[("authorization", &bearer)], "{}")
                .await,
        )
        .await;
        response.assert_openai_error(404, "no route");
    }
    assert!(mock.requests().is_empty(), "nothing reached upstream");

    // On (the default): generation endpoints without a policy route stay
    // 404, and the message lists the auxiliary routes.
    let stack = Stack::start(StackOptions::default()).await;
    for path in [
        "/v1/embeddings",
        "/v1/completions",
        "/v1/images/generations",
    ] {
        let response = post(&format!("{}{path}", stack.proxy), &[], "{}").await;
        response.assert_openai_error(404, path);
        response.assert_openai_error(404, "POST /v1/messages/count_tokens");
        response.assert_openai_error(404, "GET /v1/models");
    }
    post(&format!("{}/v1/models", stack.proxy), &[], "{}")
        .await
        .assert_openai_error(405, "use GET");
    get(
        &format!("{}/v1/messages/count_tokens", stack.proxy),
        &[VERSION],
    )
    .await
    .assert_anthropic_error(405, "use POST");
    assert!(stack.mock.requests().is_empty());
}

#[tokio::test]
async fn the_control_plane_records_no_call_for_them() {
    let database = TestDatabase::sqlite().await;
    let stack = Stack::start(StackOptions {
        database_url: Some(database.url.clone()),
        ..StackOptions::default()
    })
    .await;
    let counted = post(
        &format!("{}/v1/messages/count_tokens", stack.proxy),
        &[VERSION],
        COUNT_TOKENS,
    )
    .await;
    assert_eq!(counted.status, 200, "{}", counted.text());
    let listed = get(&format!("{}/v1/models", stack.proxy), &[]).await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let model = get(
        &format!("{}/v1/models/claude-opus-4-1-20250805", stack.proxy),
        &[VERSION],
    )
    .await;
    assert_eq!(model.status, 200, "{}", model.text());

    // A chat call afterwards is recorded: once it is, anything the control
    // plane had seen before it would be too.
    let chat = post(&stack.openai_url(), &[], OPENAI).await;
    assert_eq!(chat.status, 200, "{}", chat.text());
    let call_id = chat.header("x-luthien-call-id").unwrap().to_owned();
    let debug = stack.debug_http.as_ref().unwrap();
    wait::completed_call_json(debug, &call_id).await;
    let calls = get(&format!("{debug}/debug/calls"), &[]).await.json();
    let ids: Vec<&str> = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|call| call["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [call_id.as_str()], "only the chat call: {calls}");
    assert_eq!(stack.mock.requests().len(), 4);
}

/// The value of one sample line of the data plane's `/metrics`, 0 if absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn passthrough_requests_are_counted() {
    let stack = Stack::start(StackOptions::default()).await;
    let metrics_url = format!("{}/metrics", stack.proxy);
    let count_tokens = r#"luthien_passthrough_total{api="anthropic_messages",endpoint="count_tokens",status="200"}"#;
    let openai_models =
        r#"luthien_passthrough_total{api="openai_chat",endpoint="models",status="200"}"#;
    let anthropic_missing =
        r#"luthien_passthrough_total{api="anthropic_messages",endpoint="models",status="404"}"#;
    let before = get(&metrics_url, &[]).await.text().to_owned();
    assert_eq!(sample(&before, count_tokens), 0.0);

    for _ in 0..2 {
        let counted = post(
            &format!("{}/v1/messages/count_tokens", stack.proxy),
            &[VERSION],
            COUNT_TOKENS,
        )
        .await;
        assert_eq!(counted.status, 200);
    }
    assert_eq!(
        get(&format!("{}/v1/models/gpt-4o", stack.proxy), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        get(
            &format!("{}/v1/models/claude-nope", stack.proxy),
            &[VERSION]
        )
        .await
        .status,
        404
    );

    let after = get(&metrics_url, &[]).await.text().to_owned();
    assert!(
        after.contains("# TYPE luthien_passthrough_total counter"),
        "registered: {after}"
    );
    assert_eq!(sample(&after, count_tokens), 2.0, "{after}");
    assert_eq!(sample(&after, openai_models), 1.0, "{after}");
    assert_eq!(sample(&after, anthropic_missing), 1.0, "{after}");
    assert!(
        !after.contains("luthien_calls_total{"),
        "no call was counted: {after}"
    );
}
