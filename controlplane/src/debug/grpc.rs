//! `luthien.admin.v1.DebugService` over gRPC: a thin adapter from protobuf messages to
//! [`DebugService`] and back. Payloads travel as `google.protobuf.Struct`,
//! the same JSON the HTTP routes return.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use luthien_api::Api;
use luthien_proto::admin::v1::debug_service_server::DebugService as Debug;
use luthien_proto::admin::v1::policies_service_server::PoliciesService as Policies;
use luthien_proto::admin::v1::{
    ActivityEvent, CallEvent as ProtoCallEvent, CallSummary as ProtoCallSummary,
    GetCallDiffRequest, GetCallDiffResponse, GetCallRequest, GetCallResponse, ListCallsRequest,
    ListCallsResponse, StreamActivityRequest,
};
use luthien_proto::admin::v1::{
    GetPolicyRequest, GetPolicyResponse, PolicyEntry, ReplayCallRequest, ReplayCallResponse,
};
use tonic::{Request, Response, Status};

use super::auth::AdminKey;
use super::structs::to_struct;
use super::{ActivityFilter, DebugError, DebugService, payload_json};
use crate::activity::ActivityMessage;
use luthien_store::CallFilter;
use luthien_store::events::CallSummary;

/// The gRPC face of the debug service.
#[derive(Clone)]
pub struct DebugGrpc {
    service: DebugService,
}

impl DebugGrpc {
    pub fn new(service: DebugService) -> Self {
        Self { service }
    }
}

/// Rejects calls without the admin key (when one is configured).
pub fn interceptor(
    key: AdminKey,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        if key.accepts(AdminKey::from_bearer(presented)) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "the debug API needs `authorization: Bearer <admin key>`",
            ))
        }
    }
}

impl From<DebugError> for Status {
    fn from(error: DebugError) -> Self {
        match error {
            DebugError::NotFound(message) => Status::not_found(message),
            DebugError::InvalidArgument(message) => Status::invalid_argument(message),
            DebugError::Unavailable(message) => Status::unavailable(message),
            DebugError::Internal(message) => Status::internal(message),
        }
    }
}

type ActivityStream = Pin<Box<dyn Stream<Item = Result<ActivityEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Debug for DebugGrpc {
    async fn list_calls(
        &self,
        request: Request<ListCallsRequest>,
    ) -> Result<Response<ListCallsResponse>, Status> {
        let request = request.into_inner();
        let text = |value: String| (!value.is_empty()).then_some(value);
        let status = match text(request.status) {
            Some(status) => Some(DebugService::parse_status(&status)?),
            None => None,
        };
        let filter =
            CallFilter {
                since_micros: (request.since_micros != 0).then_some(request.since_micros),
                until_micros: (request.until_micros != 0).then_some(request.until_micros),
                model: text(request.model),
                api: match request.api {
                    0 => None,
                    kind => Some(Api::from_kind(kind).ok_or_else(|| {
                        DebugError::InvalidArgument(format!("unknown api {kind}"))
                    })?),
                },
                status,
                session_id: text(request.session_id),
                event_type: text(request.event_type),
                call_id_contains: text(request.call_id_contains),
                limit: (request.limit != 0).then_some(request.limit),
                cursor: text(request.cursor),
            };
        let page = self.service.list_calls(filter).await?;
        Ok(Response::new(ListCallsResponse {
            calls: page.calls.into_iter().map(summary).collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn get_call(
        &self,
        request: Request<GetCallRequest>,
    ) -> Result<Response<GetCallResponse>, Status> {
        let detail = self.service.get_call(&request.into_inner().call_id).await?;
        let events = detail
            .events
            .iter()
            .map(|event| ProtoCallEvent {
                sequence: event.sequence,
                timestamp_micros: event.timestamp_micros,
                schema_version: event.schema_version,
                event_type: event.payload.event_type().to_owned(),
                payload: Some(to_struct(payload_json(event))),
            })
            .collect();
        Ok(Response::new(GetCallResponse {
            call: Some(summary(detail.call)),
            events,
            trace_url: detail.trace_url.unwrap_or_default(),
        }))
    }

    async fn get_call_diff(
        &self,
        request: Request<GetCallDiffRequest>,
    ) -> Result<Response<GetCallDiffResponse>, Status> {
        let diff = self
            .service
            .call_diff(&request.into_inner().call_id)
            .await?;
        let diff = serde_json::to_value(diff)
            .map_err(|error| Status::internal(format!("diff not encodable: {error}")))?;
        Ok(Response::new(GetCallDiffResponse {
            diff: Some(to_struct(diff)),
        }))
    }

    type StreamActivityStream = ActivityStream;

    async fn stream_activity(
        &self,
        request: Request<StreamActivityRequest>,
    ) -> Result<Response<Self::StreamActivityStream>, Status> {
        let request = request.into_inner();
        let text = |value: String| (!value.is_empty()).then_some(value);
        let filter = ActivityFilter {
            call_id: text(request.call_id),
            model: text(request.model),
            event_type: text(request.event_type),
        };
        let stream = self
            .service
            .activity(filter)
            .map(|message| Ok(activity(message)));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The gRPC face of policy administration (same service, same key).
#[derive(Clone)]
pub struct PoliciesGrpc {
    service: DebugService,
}

impl PoliciesGrpc {
    pub fn new(service: DebugService) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl Policies for PoliciesGrpc {
    async fn get_policy(
        &self,
        _request: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        let view = self.service.policy();
        Ok(Response::new(GetPolicyResponse {
            policies: view
                .policies
                .into_iter()
                .map(|entry| PolicyEntry {
                    kind: entry.kind,
                    name: entry.name,
                    read_only: entry.read_only,
                })
                .collect(),
            path: view.path.unwrap_or_default(),
            yaml: view.yaml,
            loaded_at_micros: view.loaded_at_micros,
            last_reload_error_at_micros: view
                .last_reload_error
                .as_ref()
                .map_or(0, |failure| failure.at_micros),
            last_reload_error: view
                .last_reload_error
                .map(|failure| failure.error)
                .unwrap_or_default(),
        }))
    }

    async fn replay_call(
        &self,
        request: Request<ReplayCallRequest>,
    ) -> Result<Response<ReplayCallResponse>, Status> {
        let request = request.into_inner();
        let outcome = self
            .service
            .replay_call(&request.call_id, Some(&request.policy_yaml))
            .await?;
        let diff = serde_json::to_value(&outcome.diff)
            .map_err(|error| Status::internal(format!("diff not encodable: {error}")))?;
        Ok(Response::new(ReplayCallResponse {
            call_id: outcome.call_id,
            blocked: outcome.blocked.is_some(),
            block_reason: outcome.blocked.unwrap_or_default(),
            changed: outcome.changed,
            diff: Some(to_struct(diff)),
            policy_events: outcome.policy_events.into_iter().map(to_struct).collect(),
        }))
    }
}

fn summary(call: CallSummary) -> ProtoCallSummary {
    ProtoCallSummary {
        call_id: call.call_id,
        created_at_micros: call.created_at_micros,
        completed_at_micros: call.completed_at_micros.unwrap_or_default(),
        api: call.api.kind().into(),
        model: call.model,
        stream: call.stream,
        status: call.status.as_str().to_owned(),
        duration_ms: call.duration_ms,
        time_to_first_chunk_ms: call.time_to_first_chunk_ms,
        input_tokens: call.usage.input_tokens,
        output_tokens: call.usage.output_tokens,
        session_id: call.session_id.unwrap_or_default(),
        trace_id: call.trace_id.unwrap_or_default(),
        policy_changed: call.policy_changed,
        preview: call.preview.unwrap_or_default(),
        policies: call.policies,
    }
}

fn activity(message: ActivityMessage) -> ActivityEvent {
    ActivityEvent {
        call_id: message.call_id,
        sequence: message.sequence,
        event_type: message.event_type,
        model: message.model,
        api: message.api.kind().into(),
        timestamp_micros: message.timestamp_micros,
        summary: message.summary,
        status: message.status.unwrap_or_default(),
        control_plane: message.control_plane,
    }
}
