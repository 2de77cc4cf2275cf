//! Waiting for what happens after a response: the event store's writer
//! batches, so a call is recorded a moment after its client is answered.

use std::future::Future;
use std::time::Duration;

use luthien_store::Store;
use luthien_store::events::{CallEvent, CallStatus, CallSummary};
use serde_json::Value;

use crate::client::{Client, read};

/// Retries `attempt` every 25 ms until it yields a value; fails the test
/// naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The call as stored once it has ended (its status is final).
pub async fn ended_call(store: &Store, call_id: &str) -> (CallSummary, Vec<CallEvent>) {
    eventually(
        &format!("call {call_id} recorded as ended"),
        Duration::from_secs(15),
        || async {
            store
                .get_call(call_id)
                .await
                .expect("read call")
                .filter(|(call, _)| call.status != CallStatus::InProgress)
        },
    )
    .await
}

/// `GET {debug_http}/debug/calls/{call_id}` once the call is recorded as
/// completed: the debug API's JSON for it.
pub async fn completed_call_json(debug_http: &str, call_id: &str) -> Value {
    let url = format!("{debug_http}/debug/calls/{call_id}");
    eventually(
        &format!("call {call_id} recorded as completed"),
        Duration::from_secs(15),
        || async {
            let detail = read(Client::new().send("GET", &url, &[], "").await).await;
            (detail.status == 200 && detail.json()["call"]["status"] == "completed")
                .then(|| detail.json())
        },
    )
    .await
}
