//! Replay: runs a recorded call's original request and original response
//! through a chain — no LLM is called — and diffs the outcome against what
//! was recorded, so a policy change can be tried on real traffic before it
//! goes live.
//!
//! Streamed calls are replayed in their reconstructed (non-streamed) form
//! through the response hooks: the store keeps the reconstruction, not the
//! individual chunks. Policies that behave the same on a stream and on the
//! whole response (all built-ins do) give the same verdict.

use serde::Serialize;
use serde_json::{Value, json};

use crate::debug::CallDetail;
use crate::diff::{CallDiff, DiffOptions, diff_call};
use luthien_policy::{CallInfo, Chain, RequestVerdict};
use luthien_store::events::{Body, EventPayload};
use luthien_store::redact;

/// What a chain made of one recorded call.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayOutcome {
    pub call_id: String,
    /// The chain answered the request itself; the reason it gave.
    pub blocked: Option<String>,
    /// Whether the replayed final request or response differs from the
    /// recorded final one.
    pub changed: bool,
    /// Recorded final (before) vs replayed final (after).
    pub diff: CallDiff,
    /// Events the replayed policies recorded.
    pub policy_events: Vec<Value>,
    /// A policy failed during the replay (what the live proxy would have
    /// done is applied: request errors reject, response errors pass).
    pub error: Option<String>,
}

/// Replays `call` through `chain`.
pub async fn replay(chain: &Chain, call: &CallDetail, diff_options: &DiffOptions) -> ReplayOutcome {
    let api = call.call.api;
    let mut recorded_request = (None, None);
    let mut recorded_response = (None, None);
    for event in &call.events {
        match &event.payload {
            EventPayload::Request {
                original, final_, ..
            } => recorded_request = (Some(original), Some(final_)),
            EventPayload::Response {
                original, final_, ..
            } => recorded_response = (original.as_ref(), final_.as_ref()),
            EventPayload::Policy { .. } => {}
        }
    }
    // Without the original bodies there is nothing to run the chain on.
    let withheld = [recorded_request.0, recorded_response.0]
        .into_iter()
        .flatten()
        .find(|value| redact::is_not_stored_marker(value));
    let tree =
        |pair: (Option<&Body>, Option<&Body>)| (pair.0.map(Body::value), pair.1.map(Body::value));
    let (recorded_request, recorded_response) = (tree(recorded_request), tree(recorded_response));
    if let Some(marker) = withheld {
        let unchanged = diff_call(
            api,
            (recorded_request.1.as_ref(), recorded_request.1.as_ref()),
            (recorded_response.1.as_ref(), recorded_response.1.as_ref()),
            diff_options,
        );
        return ReplayOutcome {
            call_id: call.call.call_id.clone(),
            blocked: None,
            changed: false,
            diff: unchanged,
            policy_events: Vec::new(),
            error: Some(format!(
                "the call's original bodies were not stored ({}); it cannot be replayed",
                marker.value()["setting"]
                    .as_str()
                    .unwrap_or("--store-payloads")
            )),
        };
    }
    // Replies are built non-streamed: the replay compares bodies.
    let info = CallInfo::new(
        call.call.call_id.clone(),
        api,
        call.call.model.clone(),
        false,
    );
    let mut policies = chain.start_call(&info);
    let mut error = None;
    let mut blocked = None;

    let mut request = recorded_request.0.unwrap_or(Value::Null);
    let mut response = None;
    match policies.on_request(&mut request).await {
        Ok(RequestVerdict::Respond(immediate)) => {
            blocked = Some(immediate.reason.clone());
            response = Some(serde_json::from_slice(&immediate.body).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&immediate.body).into_owned())
            }));
        }
        Ok(RequestVerdict::Continue) => {
            if let Some(original) = &recorded_response.0 {
                let mut replayed = original.clone();
                match policies.on_response(&mut replayed).await {
                    Ok(()) => response = Some(replayed),
                    Err(failure) => {
                        error = Some(failure.to_string());
                        response = Some(original.clone());
                    }
                }
            }
        }
        Err(failure) => {
            error = Some(failure.to_string());
            blocked = Some(format!("request rejected: {failure}"));
            response = Some(json!({"error": failure.to_string()}));
        }
    }
    let policy_events = policies
        .take_events()
        .into_iter()
        .map(|(policy, event)| {
            json!({
                "policy": policy,
                "action": event.action,
                "summary": event.summary,
                "data": event.data,
            })
        })
        .collect();
    let diff = diff_call(
        api,
        (recorded_request.1.as_ref(), Some(&request)),
        (recorded_response.1.as_ref(), response.as_ref()),
        diff_options,
    );
    ReplayOutcome {
        call_id: call.call.call_id.clone(),
        blocked,
        changed: diff.request.changed || diff.response.changed,
        diff,
        policy_events,
        error,
    }
}
