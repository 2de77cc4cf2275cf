//! Probes and shutdown: `/healthz` and `/readyz` on both planes say what they check, a data
//! plane drains (not ready at once, still accepting for the drain delay, calls in flight
//! finished), and a control plane leaving turns NOT_SERVING before it stops.

use std::time::Duration;

use luthien_dataplane::FailMode;
use luthien_tests::stack::ControlPlane;
use luthien_tests::{Client, Stack, StackOptions, wait};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const OPENAI: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
const OPENAI_STREAM: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

async fn get(url: &str) -> (u16, String) {
    let response = luthien_tests::client::read(Client::new().send("GET", url, &[], "").await).await;
    (response.status.as_u16(), response.text().to_owned())
}

#[tokio::test]
async fn readiness_follows_the_control_plane_and_the_fail_mode() {
    let stack = Stack::start(StackOptions::default()).await;
    assert_eq!(
        get(&format!("{}/healthz", stack.proxy)).await,
        (200, "ok".into())
    );
    wait::eventually(
        "the data plane sees its control plane serving",
        Duration::from_secs(10),
        || async { (get(&format!("{}/readyz", stack.proxy)).await.0 == 200).then_some(()) },
    )
    .await;
    let debug = stack.debug_http.clone().unwrap();
    assert_eq!(get(&format!("{debug}/healthz")).await, (200, "ok".into()));
    assert_eq!(get(&format!("{debug}/readyz")).await, (200, "ready".into()));

    for (fail_mode, expected) in [
        (
            FailMode::Closed,
            (503, "no control plane is serving".to_owned()),
        ),
        (FailMode::Open, (200, "ready".to_owned())),
    ] {
        let alone = Stack::start(StackOptions {
            control_plane: ControlPlane::Down,
            fail_mode,
            ..StackOptions::default()
        })
        .await;
        assert_eq!(
            get(&format!("{}/readyz", alone.proxy)).await,
            expected,
            "{fail_mode:?}"
        );
        assert_eq!(get(&format!("{}/healthz", alone.proxy)).await.0, 200);
    }
}

/// Shutdown: the data plane is not ready at once but still takes calls during the drain
/// delay, and a stream in flight runs to its end; the control plane reports NOT_SERVING
/// before it stops.
#[tokio::test]
async fn a_draining_data_plane_finishes_its_calls_and_the_control_plane_says_it_is_leaving() {
    let stack = Stack::start(StackOptions {
        drain_delay: Duration::from_millis(800),
        ..StackOptions::default()
    })
    .await;
    wait::eventually("ready", Duration::from_secs(10), || async {
        (get(&format!("{}/readyz", stack.proxy)).await.0 == 200).then_some(())
    })
    .await;
    let channel = tonic::transport::Endpoint::from_shared(stack.control_plane.clone().unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "luthien.dataplane.v1.ControlPlaneService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = health.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let url = stack.openai_url();
    let streaming = tokio::spawn(async move {
        let headers = [("x-mock-chunks", "10"), ("x-mock-delay-ms", "100")];
        Client::new().post(&url, &headers, OPENAI_STREAM).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stack.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        get(&format!("{}/readyz", stack.proxy)).await,
        (503, "draining".into())
    );
    let during = Client::new().post(&stack.openai_url(), &[], OPENAI).await;
    assert_eq!(during.status, 200, "still accepting during the drain delay");
    let streamed = streaming.await.unwrap();
    assert_eq!(streamed.status, 200);
    assert!(
        String::from_utf8_lossy(&streamed.body).contains("[DONE]"),
        "the stream in flight ran to its end"
    );

    // Then the control plane leaves: NOT_SERVING before it stops.
    stack.stop_control_plane();
    let update = tokio::time::timeout(Duration::from_secs(5), health.message())
        .await
        .expect("a health update")
        .unwrap()
        .unwrap();
    assert_eq!(update.status(), ServingStatus::NotServing);
}
