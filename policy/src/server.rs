//! Any [`Policy`] served as a remote policy server (`luthien.policy.v1.PolicyService`).
//!
//! The other side of [`crate::remote`]: a policy written in Rust against this crate's traits —
//! the built-in helpers included, such as [`crate::tool_calls`]' tool-call holding — runs in a
//! process of its own and joins any control plane's chain as `type: remote`. The adapter
//! translates each phase of the protocol into the matching [`CallPolicy`] hook:
//!
//! | protocol | hook | result |
//! |---|---|---|
//! | `start` | [`Policy::start_call`] | — |
//! | `request` | [`CallPolicy::on_request`] | `request_result`: continue (body only when changed) or respond |
//! | `response` | [`CallPolicy::on_response`] | `response_result` (body only when changed) |
//! | `event` | [`CallPolicy::on_event`] | `event_result` with what the hook emitted |
//! | `stream_end` | [`CallPolicy::on_stream_end`] | `stream_end_result` |
//!
//! What the hooks record ([`CallPolicy::take_events`]) goes out as `record`s before each
//! result. A hook that fails ends the call's stream with an error status, and the control
//! plane applies the chain entry's `on_error`. `Describe` is answered from the policy: the
//! request phase when it [inspects requests](Policy::inspects_requests), the response and
//! stream phases when it [transforms responses](Policy::transforms_responses).

use std::sync::Arc;

use bytes::Bytes;
use luthien_api::{Api, limits};
use luthien_proto::policy::v1::policy_request::Message as FromControl;
use luthien_proto::policy::v1::policy_request_result::Action;
use luthien_proto::policy::v1::policy_response::Message as ToControl;
use luthien_proto::policy::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use luthien_proto::policy::v1::{
    DescribeRequest, Phase, PolicyCallStart, PolicyContinue, PolicyDescription, PolicyEventResult,
    PolicyImmediateResponse, PolicyRecord, PolicyRequest, PolicyRequestResult, PolicyResponse,
    PolicyResponseResult, PolicyStreamEndResult,
};
use luthien_telemetry::propagation::W3cContext;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::remote::{event_from_remote, event_to_remote};
use crate::{CallInfo, CallPolicy, Policy, RequestVerdict, SseEvent};

/// Answers a call may queue before the policy waits for the control plane to read them.
const REPLY_QUEUE: usize = 16;

/// A [`Policy`] as a `PolicyService`.
#[derive(Clone)]
pub struct PolicyServer {
    policy: Arc<dyn Policy>,
    calls: TaskTracker,
}

impl PolicyServer {
    pub fn new(policy: Arc<dyn Policy>) -> Self {
        Self {
            policy,
            calls: TaskTracker::new(),
        }
    }

    /// The tonic service, accepting bodies as large as the control plane sends.
    pub fn into_service(self) -> PolicyServiceServer<Self> {
        PolicyServiceServer::new(self)
            .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(limits::MAX_MESSAGE_BYTES)
    }

    /// Calls in progress; a server's shutdown waits for them.
    pub fn calls(&self) -> &TaskTracker {
        &self.calls
    }
}

#[tonic::async_trait]
impl PolicyService for PolicyServer {
    async fn describe(
        &self,
        _: Request<DescribeRequest>,
    ) -> Result<Response<PolicyDescription>, Status> {
        let mut phases = Vec::new();
        if self.policy.inspects_requests() {
            phases.push(Phase::Request as i32);
        }
        if self.policy.transforms_responses() {
            phases.extend([Phase::Response as i32, Phase::Stream as i32]);
        }
        Ok(Response::new(PolicyDescription {
            name: self.policy.name().to_owned(),
            phases,
            read_only: self.policy.read_only(),
        }))
    }

    type ProcessCallStream = ReceiverStream<Result<PolicyResponse, Status>>;

    async fn process_call(
        &self,
        request: Request<Streaming<PolicyRequest>>,
    ) -> Result<Response<Self::ProcessCallStream>, Status> {
        let (replies, stream) = mpsc::channel(REPLY_QUEUE);
        let call = RemoteCall {
            policy: Arc::clone(&self.policy),
            replies,
        };
        self.calls.spawn(call.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// One call's stream.
struct RemoteCall {
    policy: Arc<dyn Policy>,
    replies: mpsc::Sender<Result<PolicyResponse, Status>>,
}

impl RemoteCall {
    async fn run(self, mut inbound: Streaming<PolicyRequest>) {
        let mut call: Option<Box<dyn CallPolicy>> = None;
        while let Ok(Some(PolicyRequest {
            message: Some(message),
        })) = inbound.message().await
        {
            let answered = match (message, call.as_mut()) {
                (FromControl::Start(start), None) => {
                    call = Some(self.policy.start_call(&call_info(start)));
                    continue;
                }
                (message, Some(call)) => answer(call.as_mut(), message).await,
                (_, None) => Err(Status::failed_precondition(
                    "the first message must be start",
                )),
            };
            let records = call
                .as_mut()
                .map(|call| call.take_events())
                .unwrap_or_default();
            for record in records {
                let data_json = Bytes::from(record.data.to_string());
                let record = ToControl::Record(PolicyRecord {
                    action: record.action,
                    summary: record.summary,
                    data_json,
                });
                if !self.send(Ok(record)).await {
                    return;
                }
            }
            match answered {
                Ok(result) => {
                    if !self.send(Ok(result)).await {
                        return;
                    }
                }
                Err(status) => {
                    tracing::warn!(%status, "policy failed; ending the call's stream");
                    let _ = self.replies.send(Err(status)).await;
                    return;
                }
            }
        }
    }

    /// False when the control plane is gone.
    async fn send(&self, message: Result<ToControl, Status>) -> bool {
        let message = message.map(|message| PolicyResponse {
            message: Some(message),
        });
        self.replies.send(message).await.is_ok()
    }
}

/// Runs the hook a phase asks for; its result is the phase's answer.
async fn answer(call: &mut dyn CallPolicy, message: FromControl) -> Result<ToControl, Status> {
    let failed = |error: crate::PolicyError| Status::internal(error.to_string());
    match message {
        FromControl::Start(_) => Err(Status::failed_precondition("start sent twice")),
        FromControl::Request(phase) => request(call, phase.body)
            .await
            .map(ToControl::RequestResult),
        FromControl::Response(phase) => response(call, phase.body)
            .await
            .map(ToControl::ResponseResult),
        FromControl::Event(event) => {
            let seq = event.seq;
            let event = event_from_remote(event, None)
                .map_err(|error| Status::invalid_argument(error.to_string()))?;
            let mut out = Vec::new();
            call.on_event(event, &mut out).await.map_err(failed)?;
            Ok(ToControl::EventResult(PolicyEventResult {
                seq,
                events: remote_events(&out),
            }))
        }
        FromControl::StreamEnd(_) => {
            let mut out = Vec::new();
            call.on_stream_end(&mut out).await.map_err(failed)?;
            Ok(ToControl::StreamEndResult(PolicyStreamEndResult {
                events: remote_events(&out),
            }))
        }
    }
}

fn call_info(start: PolicyCallStart) -> CallInfo {
    CallInfo {
        call_id: start.call_id,
        // An API this build does not know is treated as OpenAI's shape, which every
        // OpenAI-compatible provider speaks.
        api: Api::from_kind(start.api).unwrap_or(Api::OpenAiChat),
        model: start.model,
        stream: start.stream,
        headers: Arc::from(start.headers),
        trace: W3cContext {
            traceparent: start.traceparent,
            tracestate: start.tracestate,
        },
    }
}

fn parse(body: &[u8]) -> Result<Value, Status> {
    serde_json::from_slice(body)
        .map_err(|error| Status::invalid_argument(format!("body is not JSON: {error}")))
}

/// A changed body, or `None` when the hook left it as it was.
fn changed(before: &Value, after: &Value) -> Result<Option<Bytes>, Status> {
    if before == after {
        return Ok(None);
    }
    serde_json::to_vec(after)
        .map(|body| Some(Bytes::from(body)))
        .map_err(|error| Status::internal(error.to_string()))
}

async fn request(call: &mut dyn CallPolicy, body: Bytes) -> Result<PolicyRequestResult, Status> {
    let original = parse(&body)?;
    let mut request = original.clone();
    let verdict = call
        .on_request(&mut request)
        .await
        .map_err(|error| Status::internal(error.to_string()))?;
    let action = match verdict {
        RequestVerdict::Continue => Action::ContinueRequest(PolicyContinue {
            body: changed(&original, &request)?,
        }),
        RequestVerdict::Respond(response) => Action::Respond(PolicyImmediateResponse {
            status: u32::from(response.status),
            content_type: response.content_type.to_owned(),
            body: response.body,
            reason: response.reason,
        }),
    };
    Ok(PolicyRequestResult {
        action: Some(action),
    })
}

async fn response(call: &mut dyn CallPolicy, body: Bytes) -> Result<PolicyResponseResult, Status> {
    let original = parse(&body)?;
    let mut response = original.clone();
    call.on_response(&mut response)
        .await
        .map_err(|error| Status::internal(error.to_string()))?;
    Ok(PolicyResponseResult {
        body: changed(&original, &response)?,
    })
}

fn remote_events(events: &[SseEvent]) -> Vec<luthien_proto::policy::v1::PolicyStreamEvent> {
    events
        .iter()
        .map(|event| event_to_remote(0, event))
        .collect()
}
