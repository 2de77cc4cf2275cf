//! The `luthien` command line, run as a real process.

// Test helpers fail by panicking.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

use luthien_store::events::{
    CallEvent, CallStatus, CallSummary, EventPayload, SCHEMA_VERSION, TokenUsage,
};
use luthien_store::{Record, Store, StoreOptions};
use serde_json::json;

fn luthien(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_luthien"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run luthien");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn policy_check_accepts_good_files_and_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "policies:\n  - type: all_caps\n  - type: noop\n").unwrap();
    let (ok, stdout, _) = luthien(&["policy", "check", good.to_str().unwrap()]);
    assert!(ok);
    assert!(stdout.contains("1. all_caps"), "{stdout}");
    assert!(stdout.contains("transform mode"), "{stdout}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "policies:\n  - type: string_replace\n    config:\n      replacements: [{from: a, too: b}]\n",
    )
    .unwrap();
    let (ok, _, stderr) = luthien(&["policy", "check", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    assert!(stderr.contains("policies[0] (string_replace)"), "{stderr}");
    assert!(stderr.contains("too"), "{stderr}");
}

#[tokio::test]
async fn replay_reads_the_store_and_reports_what_would_change() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("luthien.db").display());
    let store = Store::open(&url, StoreOptions::default()).await.unwrap();
    let request = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let response = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "the quick fox"}, "finish_reason": "stop"}],
    });
    let summary = CallSummary {
        call_id: "call-1".into(),
        created_at_micros: 1_700_000_000_000_000,
        completed_at_micros: Some(1_700_000_000_100_000),
        api: luthien_api::Api::OpenAiChat,
        model: "gpt-4o-mini".into(),
        stream: false,
        status: CallStatus::Completed,
        duration_ms: Some(100.0),
        time_to_first_chunk_ms: Some(100.0),
        usage: TokenUsage::default(),
        session_id: None,
        trace_id: None,
        policy_changed: false,
        control_plane_id: None,
        preview: Some("hi".into()),
        policies: Vec::new(),
    };
    let event = |sequence, payload| {
        Record::Event(CallEvent {
            call_id: "call-1".into(),
            sequence,
            timestamp_micros: 1_700_000_000_000_000,
            schema_version: SCHEMA_VERSION,
            payload,
        })
    };
    store
        .write_batch(&[
            Record::Call(summary),
            event(
                0,
                EventPayload::Request {
                    original: request.clone().into(),
                    final_: request.into(),
                    headers: json!({}),
                },
            ),
            event(
                1,
                EventPayload::Response {
                    original: Some(response.clone().into()),
                    final_: Some(response.into()),
                    status: CallStatus::Completed,
                    upstream_status: Some(200),
                    detail: None,
                    chunks_received: 1,
                    chunks_sent: 1,
                    time_to_first_chunk_ms: None,
                    duration_ms: Some(100.0),
                    overhead_ms: None,
                    usage: TokenUsage::default(),
                },
            ),
        ])
        .await
        .unwrap();
    store.close().await;

    let policy = dir.path().join("caps.yaml");
    std::fs::write(&policy, "policies: [{type: all_caps}]").unwrap();
    let (ok, stdout, stderr) = luthien(&[
        "replay",
        "--call-id",
        "call-1",
        "--policy",
        policy.to_str().unwrap(),
        "--database-url",
        &url,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("call call-1: changed"), "{stdout}");
    assert!(
        stdout.contains("[-the quick fox-]{+THE QUICK FOX+}"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = luthien(&[
        "replay",
        "--since",
        "2023-01-01T00:00:00Z",
        "--policy",
        policy.to_str().unwrap(),
        "--database-url",
        &url,
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("1 calls replayed: 1 would change (0 blocked), 0 unchanged"),
        "{stdout}"
    );

    let (ok, _, stderr) = luthien(&[
        "replay",
        "--call-id",
        "nope",
        "--policy",
        policy.to_str().unwrap(),
        "--database-url",
        &url,
    ]);
    assert!(!ok);
    assert!(stderr.contains("no call with id `nope`"), "{stderr}");
}

/// `luthien up` on `[listen, grpc, http]` in front of `mock`, with `extra` flags, once its data
/// plane accepts connections; killed when dropped.
async fn spawn_up(
    mock: &luthien_mock_upstream::MockUpstream,
    [listen, grpc, http]: &[String; 3],
    extra: &[&str],
) -> tokio::process::Child {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_luthien"))
        .args(["up", "--listen", listen, "--grpc-listen", grpc])
        .args([
            "--http-listen",
            http,
            "--openai-base-url",
            &mock.openai_base_url(),
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .kill_on_drop(true)
        .spawn()
        .expect("start luthien up");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::net::TcpStream::connect(listen).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "luthien up did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child
}

/// Addresses on which nothing listens yet (bound, then released).
fn free_addresses<const N: usize>() -> [String; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().to_string())
}

/// `luthien up` stops its data plane first on SIGTERM: a call still reading its client's body
/// when the signal arrives opens its control-plane stream afterwards, and the control plane is
/// still there to take it. The process then exits cleanly.
#[tokio::test]
async fn up_drains_the_data_plane_before_stopping_the_control_plane() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use std::time::Duration;

    let mock = luthien_mock_upstream::MockUpstream::start().await.unwrap();
    let addresses = free_addresses();
    let mut child = spawn_up(&mock, &addresses, &["--no-store", "--drain-delay", "100ms"]).await;
    let [listen, _, _] = addresses;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{listen}/v1/chat/completions");

    // The body arrives in two parts, the signal between them.
    let (parts, body) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    let request = hyper::Request::post(&url)
        .header("content-type", "application/json")
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(body),
        ))
        .unwrap();
    let call = tokio::spawn(client.request(request));
    parts
        .send(Ok(Frame::data(Bytes::from_static(
            b"{\"model\":\"gpt-4o\",",
        ))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    parts
        .send(Ok(Frame::data(Bytes::from_static(
            b"\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        ))))
        .await
        .unwrap();
    drop(parts);
    let response = call.await.unwrap().expect("response");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("luthien up exits after draining")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// `luthien up` stops with the real error, naming the plane, when either cannot start: a port
/// already in use, or an event store it cannot open.
#[test]
fn up_exits_with_the_reason_a_plane_cannot_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let [grpc, http] = free_addresses();
    let (ok, _, stderr) = luthien(&[
        "up",
        "--listen",
        &taken,
        "--grpc-listen",
        &grpc,
        "--http-listen",
        &http,
        "--no-store",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("data plane: cannot listen on --listen {taken}")),
        "{stderr}"
    );

    let [listen, grpc, http] = free_addresses();
    let started = std::time::Instant::now();
    let (ok, stdout, stderr) = luthien(&[
        "up",
        "--listen",
        &listen,
        "--grpc-listen",
        &grpc,
        "--http-listen",
        &http,
        "--database-url",
        "mysql://db/luthien",
        "--drain-delay",
        "0s",
    ]);
    assert!(!ok);
    assert!(stderr.contains("control plane"), "{stderr}");
    assert!(stderr.contains("mysql"), "the cause is named: {stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    // Its log went to a pipe, not a terminal: no colour codes in it.
    assert!(stdout.contains("INFO"), "the log: {stdout}");
    assert!(!stdout.contains('\u{1b}'), "no ANSI escapes: {stdout:?}");

    // Its two planes talk over loopback: the channel's TLS flags are refused, not ignored.
    let (ok, _, stderr) = luthien(&["up", "--tls-cert", "cert.pem", "--tls-key", "key.pem"]);
    assert!(!ok);
    assert!(stderr.contains("--tls-cert"), "{stderr}");
}

/// `luthien calls` against a running `luthien up` that requires an admin key: `tail` follows a
/// call live, `list` shows its preview and the policy that acted, `show` its events and
/// prompt, `diff` what the policies changed as a word diff (no colour codes off a terminal),
/// `--json` the same for scripts; without the key the command says which flag it needs.
#[tokio::test]
async fn calls_list_show_diff_and_tail_a_running_control_plane() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use std::process::Stdio;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mock = luthien_mock_upstream::MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "policies:\n  - type: string_replace\n    name: codename\n    config:\n      replacements: [{from: fox, to: cat}]\n      apply_to: both\n",
    )
    .unwrap();
    let database = format!("sqlite://{}", dir.path().join("calls.db").display());
    let addresses = free_addresses();
    let policy = policy.to_str().unwrap();
    let _up = spawn_up(
        &mock,
        &addresses,
        &["--database-url", &database, "--admin-key", "s3cret"]
            .into_iter()
            .chain(["--policy-config", policy, "--drain-delay", "0s"])
            .collect::<Vec<_>>(),
    )
    .await;
    let [listen, grpc, _] = addresses;
    let control_plane = format!("http://{grpc}");
    let client_flags = ["--control-plane", &control_plane, "--admin-key", "s3cret"];

    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_luthien"))
        .args(["calls", "tail"])
        .args(client_flags)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start luthien calls tail");
    let mut tail_lines = BufReader::new(tail.stdout.take().unwrap()).lines();

    // Calls until the tail shows one: it may subscribe after the first.
    let http_client = Client::builder(TokioExecutor::new()).build_http();
    let mut call_id = String::new();
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let request = hyper::Request::post(format!("http://{listen}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(bytes::Bytes::from_static(
                    br#"{"model":"gpt-4o","messages":[{"role":"user","content":"the quick brown fox"}]}"#,
                )))
                .unwrap();
            let response = http_client.request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            call_id = response.headers()["x-luthien-call-id"]
                .to_str()
                .unwrap()
                .to_owned();
            response.into_body().collect().await.unwrap();
            let wait = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    line = tail_lines.next_line() => {
                        let line = line.unwrap().expect("tail keeps running");
                        if line.contains(&call_id) && line.contains(" response ") {
                            return line;
                        }
                    }
                }
            }
        }
    })
    .await
    .expect("luthien calls tail shows the call");
    assert!(
        seen.contains("gpt-4o") && seen.contains("completed"),
        "{seen}"
    );
    assert!(!seen.contains('\x1b'), "{seen}");

    // The writer flushes in the background: wait until the call is listed as completed.
    let list = |extra: &[&str]| {
        let mut args = vec!["calls", "list"];
        args.extend(client_flags);
        args.extend(extra);
        luthien(&args)
    };
    let mut listed = String::new();
    for _ in 0..100 {
        let (ok, stdout, stderr) = list(&["--since", "10m", "--call-id", &call_id]);
        assert!(ok, "{stderr}");
        if stdout.contains("completed") {
            listed = stdout;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed.contains(&call_id), "{listed}");
    assert!(
        listed.contains("[codename] the quick brown cat"),
        "{listed}"
    );

    let (ok, stdout, stderr) = list(&["--json", "--call-id", &call_id]);
    assert!(ok, "{stderr}");
    let page: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let call = &page["calls"][0];
    assert_eq!(call["call_id"], json!(call_id));
    assert_eq!(call["preview"], json!("the quick brown cat"));
    assert_eq!(call["policies"], json!(["codename"]));
    assert_eq!(call["api"], json!("openai"));
    assert_eq!(call["policy_changed"], json!(true));

    let run = |command: &str| {
        let mut args = vec!["calls", command];
        args.extend(client_flags);
        args.push(&call_id);
        luthien(&args)
    };
    let (ok, shown, stderr) = run("show");
    assert!(ok, "{stderr}");
    for expected in [
        "status     completed",
        "policies   codename",
        "request (rewritten by policy)",
        "codename: ",
        "last user message (as forwarded)\n  the quick brown cat",
    ] {
        assert!(shown.contains(expected), "`{expected}` in\n{shown}");
    }

    let (ok, diff, stderr) = run("diff");
    assert!(ok, "{stderr}");
    assert!(diff.contains("request: changed"), "{diff}");
    assert!(
        diff.contains("(user) changed: the quick brown [-fox-]{+cat+}"),
        "{diff}"
    );
    assert!(!diff.contains('\x1b') && !diff.contains("Some("), "{diff}");

    let mut args = vec!["calls", "diff", "--json"];
    args.extend(client_flags);
    args.push(&call_id);
    let (ok, stdout, stderr) = luthien(&args);
    assert!(ok, "{stderr}");
    let diff: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(diff["request"]["changed"], json!(true));

    // Without the key, or with a bad time, the command says what to fix.
    let (ok, _, stderr) = luthien(&["calls", "list", "--control-plane", &control_plane]);
    assert!(!ok);
    assert!(stderr.contains("--admin-key"), "{stderr}");
    let (ok, _, stderr) = list(&["--since", "yesterday"]);
    assert!(!ok);
    assert!(stderr.contains("--since `yesterday`"), "{stderr}");
    let mut args = vec!["calls", "show"];
    args.extend(client_flags);
    args.push("no-such-call");
    let (ok, _, stderr) = luthien(&args);
    assert!(!ok);
    assert!(stderr.contains("no-such-call"), "{stderr}");
}
