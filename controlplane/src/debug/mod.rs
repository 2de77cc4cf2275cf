//! The debug API: one implementation answering two transports.
//!
//! [`DebugService`] holds the logic (queries, diffs, the activity tail);
//! [`grpc`] adapts it to the `luthien.admin.v1.DebugService` gRPC service and [`http`]
//! to the JSON routes under `/debug`. Both check the admin key through
//! [`auth`], so neither can drift from the other.

pub mod auth;
pub mod grpc;
pub mod http;
pub mod session;
pub mod structs;

use std::time::Duration;

use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::activity::{ActivityBus, ActivityMessage};
use crate::diff::{CallDiff, DiffOptions, diff_call};
use crate::policy_source::PolicySource;
use crate::replay::{self, ReplayOutcome};
use luthien_policy::config;
use luthien_policy::shapes::Api;
use luthien_store::events::{Body, CallEvent, CallStatus, CallSummary, EventPayload};
use luthien_store::{CallFilter, CallPage, Store, StoreError};

/// What went wrong answering a debug query; each transport maps it to its
/// own status (404 / NOT_FOUND, …).
#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for DebugError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::InvalidCursor => DebugError::InvalidArgument(error.to_string()),
            error if error.is_transient() => DebugError::Unavailable(error.to_string()),
            error => DebugError::Internal(error.to_string()),
        }
    }
}

/// One call with everything recorded about it.
#[derive(Clone, Debug, Serialize)]
pub struct CallDetail {
    pub call: CallSummary,
    pub events: Vec<CallEvent>,
    pub trace_url: Option<String>,
}

/// Which activity a tail wants; empty fields match everything.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct ActivityFilter {
    pub call_id: Option<String>,
    pub model: Option<String>,
    pub event_type: Option<String>,
}

impl ActivityFilter {
    pub fn matches(&self, message: &ActivityMessage) -> bool {
        let wanted = |filter: &Option<String>, value: &str| {
            filter
                .as_deref()
                .is_none_or(|filter| filter.is_empty() || filter == value)
        };
        wanted(&self.call_id, &message.call_id)
            && wanted(&self.model, &message.model)
            && wanted(&self.event_type, &message.event_type)
    }
}

/// The debug queries, shared by the gRPC and HTTP transports.
#[derive(Clone)]
pub struct DebugService {
    store: Option<Store>,
    activity: ActivityBus,
    policies: PolicySource,
    trace_url_template: Option<String>,
    diff_options: DiffOptions,
}

impl DebugService {
    pub fn new(
        store: Option<Store>,
        activity: ActivityBus,
        policies: PolicySource,
        trace_url_template: Option<String>,
    ) -> Self {
        Self {
            store,
            activity,
            policies,
            trace_url_template,
            diff_options: DiffOptions {
                time_budget: Duration::from_millis(500),
            },
        }
    }

    fn store(&self) -> Result<&Store, DebugError> {
        self.store.as_ref().ok_or_else(|| {
            DebugError::Unavailable(
                "the event store is disabled (--no-store); nothing is recorded".into(),
            )
        })
    }

    pub async fn list_calls(&self, filter: CallFilter) -> Result<CallPage, DebugError> {
        if let Some(event_type) = filter.event_type.as_deref()
            && !matches!(event_type, "request" | "response" | "policy")
        {
            return Err(DebugError::InvalidArgument(format!(
                "unknown event type `{event_type}`; use request, response or policy"
            )));
        }
        if let (Some(since), Some(until)) = (filter.since_micros, filter.until_micros)
            && since > until
        {
            return Err(DebugError::InvalidArgument(
                "`since` is after `until`".into(),
            ));
        }
        Ok(self.store()?.list_calls(&filter).await?)
    }

    pub async fn get_call(&self, call_id: &str) -> Result<CallDetail, DebugError> {
        let Some((call, events)) = self.store()?.get_call(call_id).await? else {
            return Err(DebugError::NotFound(format!("no call with id `{call_id}`")));
        };
        let trace_url = self
            .trace_url_template
            .as_deref()
            .and_then(|template| trace_url(template, &call));
        Ok(CallDetail {
            call,
            events,
            trace_url,
        })
    }

    pub async fn call_diff(&self, call_id: &str) -> Result<CallDiff, DebugError> {
        // A side `--store-payloads` kept out is compared as the side that was kept: what
        // the policies changed cannot be shown, and nothing else is claimed as changed.
        fn comparable(pair: (Option<&Body>, Option<&Body>)) -> (Option<Value>, Option<Value>) {
            fn kept(body: Option<&Body>) -> Option<&Body> {
                body.filter(|body| !luthien_store::redact::is_not_stored_marker(body))
            }
            match (kept(pair.0), kept(pair.1)) {
                (Some(original), Some(final_)) => (Some(original.value()), Some(final_.value())),
                (Some(only), None) | (None, Some(only)) => {
                    let only = only.value();
                    (Some(only.clone()), Some(only))
                }
                (None, None) => (None, None),
            }
        }
        let detail = self.get_call(call_id).await?;
        let api = detail.call.api;
        let mut request = (None, None);
        let mut response = (None, None);
        for event in &detail.events {
            match &event.payload {
                EventPayload::Request {
                    original, final_, ..
                } => request = (Some(original), Some(final_)),
                EventPayload::Response {
                    original, final_, ..
                } => response = (original.as_ref(), final_.as_ref()),
                EventPayload::Policy { .. } => {}
            }
        }
        let options = self.diff_options.clone();
        let diff = tokio::task::spawn_blocking({
            let request = comparable(request);
            let response = comparable(response);
            move || {
                diff_call(
                    api,
                    (request.0.as_ref(), request.1.as_ref()),
                    (response.0.as_ref(), response.1.as_ref()),
                    &options,
                )
            }
        })
        .await
        .map_err(|error| DebugError::Internal(format!("diff task failed: {error}")))?;
        Ok(diff)
    }

    /// A live tail of activity matching `filter`. A consumer too slow for
    /// the bus misses messages rather than slowing anyone down.
    pub fn activity(
        &self,
        filter: ActivityFilter,
    ) -> impl Stream<Item = ActivityMessage> + Send + use<> {
        BroadcastStream::new(self.activity.subscribe())
            .filter_map(Result::ok)
            .filter(move |message| filter.matches(message))
    }

    /// The chain new calls run with.
    pub fn policy(&self) -> PolicyView {
        let loaded = self.policies.current();
        PolicyView {
            policies: loaded
                .chain
                .policies()
                .iter()
                .map(|policy| PolicyEntryView {
                    kind: policy.kind().to_owned(),
                    name: policy.name().to_owned(),
                    read_only: policy.read_only(),
                })
                .collect(),
            path: loaded.path.as_ref().map(|path| path.display().to_string()),
            yaml: loaded.yaml.clone(),
            loaded_at_micros: loaded.loaded_at_micros,
            last_reload_error: self.policies.last_failure().map(|failure| ReloadErrorView {
                error: failure.error,
                at_micros: failure.at_micros,
            }),
        }
    }

    /// Replays a recorded call through `policy_yaml` (or the active chain).
    pub async fn replay_call(
        &self,
        call_id: &str,
        policy_yaml: Option<&str>,
    ) -> Result<ReplayOutcome, DebugError> {
        let chain = match policy_yaml.filter(|yaml| !yaml.trim().is_empty()) {
            Some(yaml) => std::sync::Arc::new(
                config::parse_chain(yaml, "replay policy")
                    .map_err(|error| DebugError::InvalidArgument(error.to_string()))?,
            ),
            None => self.policies.chain(),
        };
        let detail = self.get_call(call_id).await?;
        Ok(replay::replay(&chain, &detail, &self.diff_options).await)
    }

    /// Parses a status filter value.
    pub fn parse_status(status: &str) -> Result<CallStatus, DebugError> {
        CallStatus::parse(status)
            .ok_or_else(|| DebugError::InvalidArgument(format!("unknown status `{status}`")))
    }

    /// The `api` filter, by [`Api::name`].
    pub fn parse_api(api: &str) -> Result<Api, DebugError> {
        api.parse().map_err(|error: luthien_api::UnknownApi| {
            DebugError::InvalidArgument(error.to_string())
        })
    }
}

/// The active chain, as the policy routes show it.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyView {
    pub policies: Vec<PolicyEntryView>,
    pub path: Option<String>,
    pub yaml: String,
    pub loaded_at_micros: i64,
    /// The last reload refused since this chain was loaded: the file on disk is not what runs.
    pub last_reload_error: Option<ReloadErrorView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReloadErrorView {
    pub error: String,
    pub at_micros: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyEntryView {
    pub kind: String,
    pub name: String,
    pub read_only: bool,
}

/// The JSON form of an event's payload (what both transports show).
pub fn payload_json(event: &CallEvent) -> Value {
    serde_json::to_value(&event.payload).unwrap_or(Value::Null)
}

/// The link from a call to its trace: `template` with `{trace_id}` and
/// `{call_id}` filled in. None when the template names neither, or needs a
/// trace id the call does not have (it was not traced).
fn trace_url(template: &str, call: &CallSummary) -> Option<String> {
    let wants_trace = template.contains("{trace_id}");
    if !wants_trace && !template.contains("{call_id}") {
        return None;
    }
    let mut url = template.replace("{call_id}", &call.call_id);
    if wants_trace {
        url = url.replace("{trace_id}", call.trace_id.as_deref()?);
    }
    Some(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use luthien_store::events::TokenUsage;

    fn call(trace_id: Option<&str>) -> CallSummary {
        CallSummary {
            call_id: "c-1".to_owned(),
            created_at_micros: 1,
            completed_at_micros: None,
            api: luthien_api::Api::OpenAiChat,
            model: "m".to_owned(),
            stream: false,
            status: CallStatus::Completed,
            duration_ms: None,
            time_to_first_chunk_ms: None,
            usage: TokenUsage::default(),
            session_id: None,
            trace_id: trace_id.map(str::to_owned),
            policy_changed: false,
            control_plane_id: None,
            preview: None,
            policies: Vec::new(),
        }
    }

    #[test]
    fn trace_links_fill_in_the_trace_and_call_ids() {
        let traced = call(Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            trace_url("https://g/explore?trace={trace_id}&call={call_id}", &traced).as_deref(),
            Some("https://g/explore?trace=4bf92f3577b34da6a3ce929d0e0e4736&call=c-1")
        );
        assert_eq!(
            trace_url("https://g/search?q={call_id}", &call(None)).as_deref(),
            Some("https://g/search?q=c-1")
        );
        // A link that needs a trace id is left out for an untraced call.
        assert_eq!(trace_url("https://g/trace/{trace_id}", &call(None)), None);
        assert_eq!(trace_url("https://g/static", &traced), None);
    }
}
