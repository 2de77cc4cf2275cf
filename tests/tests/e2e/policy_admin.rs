//! Changing policies safely: hot reload under load with no failed call, bad
//! files rejected with the old chain kept, `GetPolicy`, and replay of a call
//! recorded through the real proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use luthien_proto::admin::v1::policies_service_client::PoliciesServiceClient;
use luthien_proto::admin::v1::{GetPolicyRequest, ReplayCallRequest};
use luthien_tests::databases::TestDatabase;
use luthien_tests::stack::ControlPlane;
use luthien_tests::wire::openai_stream_text;
use luthien_tests::{Client, Stack, StackOptions};
use serde_json::json;
use tonic::transport::Channel;

const TEXT: &str = "Hello from the mock upstream. The quick brown fox jumps over the lazy dog.";

async fn policies_client(stack: &Stack) -> PoliciesServiceClient<Channel> {
    let channel = Channel::from_shared(stack.control_plane.clone().unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap();
    PoliciesServiceClient::new(channel)
}

async fn policy_names(client: &mut PoliciesServiceClient<Channel>) -> Vec<String> {
    client
        .get_policy(GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner()
        .policies
        .into_iter()
        .map(|policy| policy.kind)
        .collect()
}

async fn wait_for_policy(client: &mut PoliciesServiceClient<Channel>, expected: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while policy_names(client).await != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload to {expected:?} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn hot_reload_under_load_fails_no_call_and_rejects_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, "policies: [{type: noop}]").unwrap();
    let stack = Arc::new(
        Stack::start(StackOptions {
            control_plane: ControlPlane::File(path.clone()),
            ..StackOptions::default()
        })
        .await,
    );
    let mut admin = policies_client(&stack).await;
    let current = admin
        .get_policy(GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.path, path.display().to_string());
    assert!(current.yaml.contains("noop"));
    assert!(current.loaded_at_micros > 0);

    // Load: four clients calling streamed and non-streamed without pause.
    let running = Arc::new(AtomicBool::new(true));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (stack, running, completed) = (stack.clone(), running.clone(), completed.clone());
        workers.push(tokio::spawn(async move {
            let client = Client::new();
            let stream = worker % 2 == 0;
            let body = json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
            while running.load(Ordering::Relaxed) {
                let response = client
                    .post(&stack.openai_url(), &[("x-mock-chunk-size", "6")], body.to_string())
                    .await;
                assert_eq!(response.status, 200, "no call fails during reloads: {}", response.text());
                let text = if stream {
                    openai_stream_text(&response.body)
                } else {
                    response.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
                };
                // Each call ran entirely under one chain or the other.
                assert!(text == TEXT || text == TEXT.to_uppercase(), "mixed chains: {text}");
                completed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    for round in 0..3 {
        std::fs::write(&path, "policies: [{type: all_caps}]").unwrap();
        wait_for_policy(&mut admin, &["all_caps"]).await;
        // A bad file is rejected; the chain stays.
        std::fs::write(&path, "policies: [{type: all_caps, config: {shout: true}}]").unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            policy_names(&mut admin).await,
            ["all_caps"],
            "round {round}"
        );
        // …and says so, not only in the log.
        let refused = admin
            .get_policy(GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(
            refused.last_reload_error.contains("shout"),
            "the refusal names the bad key: {refused:?}"
        );
        assert!(refused.last_reload_error_at_micros >= refused.loaded_at_micros);
        let http = luthien_tests::Client::new()
            .send(
                "GET",
                &format!("{}/debug/policy", stack.debug_http.as_ref().unwrap()),
                &[],
                "",
            )
            .await;
        let body = http_body_util::BodyExt::collect(http.into_body())
            .await
            .unwrap()
            .to_bytes();
        let view: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            view["last_reload_error"]["error"]
                .as_str()
                .is_some_and(|error| error.contains("shout")),
            "{view}"
        );
        std::fs::write(&path, "policies: [{type: noop}]").unwrap();
        wait_for_policy(&mut admin, &["noop"]).await;
        let fixed = admin
            .get_policy(GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fixed.last_reload_error, "", "a good reload clears it");
    }
    running.store(false, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("worker saw only successful calls");
    }
    // Counted too (process-wide: other suites' refusals add to it).
    let metrics = luthien_tests::Client::new()
        .send(
            "GET",
            &format!("{}/metrics", stack.debug_http.as_ref().unwrap()),
            &[],
            "",
        )
        .await;
    let body = http_body_util::BodyExt::collect(metrics.into_body())
        .await
        .unwrap()
        .to_bytes();
    let failures: u64 = String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix("luthien_policy_reload_failures_total "))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    assert!(failures >= 3, "three refused reloads counted: {failures}");
    assert!(
        completed.load(Ordering::Relaxed) > 20,
        "the load really ran"
    );

    // After the last reload, new calls run the new chain.
    std::fs::write(&path, "policies: [{type: all_caps}]").unwrap();
    wait_for_policy(&mut admin, &["all_caps"]).await;
    let response = Client::new()
        .post(&stack.openai_url(), &[], r#"{"model":"m","messages":[]}"#)
        .await;
    assert_eq!(
        response.json()["choices"][0]["message"]["content"],
        TEXT.to_uppercase()
    );
}

#[tokio::test]
async fn replay_runs_a_recorded_call_through_another_chain() {
    let database = TestDatabase::sqlite().await;
    let stack = Stack::start(StackOptions {
        database_url: Some(database.url.clone()),
        ..StackOptions::yaml("policies: [{type: noop}]")
    })
    .await;
    let mut calls = Vec::new();
    for stream in [false, true] {
        let body = json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "Tell me about the fox."}]});
        let response = Client::new()
            .post(&stack.openai_url(), &[], body.to_string())
            .await;
        calls.push(response.header("x-luthien-call-id").unwrap().to_owned());
    }
    // The Responses API replays the same way, streams rebuilt into its `response` object.
    for stream in [false, true] {
        let body = json!({"model": "gpt-5", "stream": stream, "input": "Tell me about the fox."});
        let response = Client::new()
            .post(
                &format!("{}/v1/responses", stack.proxy),
                &[],
                body.to_string(),
            )
            .await;
        calls.push(response.header("x-luthien-call-id").unwrap().to_owned());
    }
    let base = stack.debug_http.clone().unwrap();
    for call_id in &calls {
        luthien_tests::wait::completed_call_json(&base, call_id).await;
    }

    let mut admin = policies_client(&stack).await;
    let yaml = r#"
policies:
  - type: all_caps
  - type: string_replace
    config:
      replacements: [{from: "fox", to: "cat"}]
"#;
    for call_id in &calls {
        let outcome = admin
            .replay_call(ReplayCallRequest {
                call_id: call_id.clone(),
                policy_yaml: yaml.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(outcome.changed, "{call_id}");
        assert!(!outcome.blocked);
        let diff = serde_json::to_value(format!("{:?}", outcome.diff)).unwrap();
        assert!(
            diff.as_str().unwrap().contains("CAT"),
            "replayed response upper-cased and replaced"
        );
        assert!(
            !outcome.policy_events.is_empty(),
            "string_replace recorded its replacements"
        );
    }

    // Through the active (noop) chain nothing changes.
    let same = admin
        .replay_call(ReplayCallRequest {
            call_id: calls[0].clone(),
            policy_yaml: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!same.changed);

    // The HTTP route answers the same, and a bad policy is a 400.
    let replayed = luthien_tests::client::read(
        Client::new()
            .send(
                "POST",
                &format!("{base}/debug/calls/{}/replay", calls[1]),
                &[("content-type", "application/json")],
                json!({"policy_yaml": yaml}).to_string(),
            )
            .await,
    )
    .await;
    assert_eq!(replayed.status, 200, "{}", replayed.text());
    let replayed = replayed.json();
    assert_eq!(replayed["changed"], true);
    assert_eq!(
        replayed["diff"]["response"]["text"]["after"],
        TEXT.replace("fox", "cat").to_uppercase()
    );
    let bad = luthien_tests::client::read(
        Client::new()
            .send(
                "POST",
                &format!("{base}/debug/calls/{}/replay", calls[1]),
                &[],
                json!({"policy_yaml": "policies: [{type: nope}]"}).to_string(),
            )
            .await,
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope")
    );
    let policy = luthien_tests::client::read(
        Client::new()
            .send("GET", &format!("{base}/debug/policy"), &[], "")
            .await,
    )
    .await;
    assert_eq!(policy.json()["policies"][0]["kind"], "noop");
}

/// A chain that does not inspect requests lets the data plane send each call upstream beside
/// its `CallStart`. A reload to a chain that does (here `block`) reaches the data plane with
/// the next decision: the one call sent in between is recorded as not policed on the request
/// side and counted, and the call after it is blocked.
#[tokio::test]
async fn a_reload_to_a_request_policy_is_heard_of_with_the_next_decision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, "policies: [{type: all_caps}]").unwrap();
    let database = TestDatabase::sqlite().await;
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::File(path.clone()),
        database_url: Some(database.url.clone()),
        ..StackOptions::default()
    })
    .await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let call = || async {
        Client::new()
            .post(&stack.openai_url(), &[], body.to_string())
            .await
    };
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let data_plane_metrics = || async {
        let url = format!("{}/metrics", stack.proxy);
        luthien_tests::client::read(Client::new().send("GET", &url, &[], "").await)
            .await
            .text()
            .to_owned()
    };
    let control_plane_metrics = || async {
        let url = format!("{}/metrics", stack.debug_http.as_ref().unwrap());
        luthien_tests::client::read(Client::new().send("GET", &url, &[], "").await)
            .await
            .text()
            .to_owned()
    };
    const SENT: &str = "luthien_requests_sent_before_decision_total";
    const SKIPPED: &str = "luthien_request_decisions_skipped_total";

    // The first call waits (nothing is known of the chain yet); its decision says the chain
    // does not inspect requests, so the second goes upstream beside its CallStart.
    for expected_sent in [0.0, 1.0] {
        let response = call().await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.json()["choices"][0]["message"]["content"],
            TEXT.to_uppercase()
        );
        assert_eq!(metric(&data_plane_metrics().await, SENT), expected_sent);
    }

    let skipped_before = metric(&control_plane_metrics().await, SKIPPED);
    std::fs::write(
        &path,
        "policies: [{type: block, config: {rules: [{name: no-mini, models_deny: ['*-mini']}]}}]",
    )
    .unwrap();
    let mut admin = policies_client(&stack).await;
    wait_for_policy(&mut admin, &["block"]).await;

    // In the window: sent before the decision, which now comes from a blocking chain.
    let unpoliced = call().await;
    assert_eq!(unpoliced.status, 200, "{}", unpoliced.text());
    let call_id = unpoliced.header("x-luthien-call-id").unwrap().to_owned();
    let recorded =
        luthien_tests::wait::completed_call_json(stack.debug_http.as_ref().unwrap(), &call_id)
            .await;
    let events = recorded["events"].as_array().unwrap();
    assert!(
        events.iter().any(|event| {
            event["payload"]["policy"] == "luthien"
                && event["payload"]["action"] == "request_not_policed"
        }),
        "{recorded}"
    );
    assert!(metric(&control_plane_metrics().await, SKIPPED) >= skipped_before + 1.0);

    // Heard of: the next call waits for its decision, and is blocked.
    let blocked = call().await;
    assert_eq!(blocked.status, 403, "{}", blocked.text());
    assert_eq!(metric(&data_plane_metrics().await, SENT), 2.0);
}
