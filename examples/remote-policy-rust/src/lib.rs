//! An example Luthien remote policy server: removes tool calls that touch paths outside an
//! allowed directory (see [`guard`] for what it does, [`paths`] for how paths are found).
//!
//! It implements `luthien.policy.v1.PolicyService`: `Describe` asks for the response and stream
//! phases only (it never sees requests), and `ProcessCall` answers each phase with exactly one
//! result, sending a `PolicyRecord` for every removed call.
//!
//! Start it in-process with [`serve`], or run the `remote-policy-example` binary.

pub mod guard;
pub mod paths;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use luthien_proto::policy::v1::policy_request::Message as FromLuthien;
use luthien_proto::policy::v1::policy_request_result::Action;
use luthien_proto::policy::v1::policy_response::Message as ToLuthien;
use luthien_proto::policy::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use luthien_proto::policy::v1::{
    DescribeRequest, Phase, PolicyContinue, PolicyDescription, PolicyEventResult, PolicyRecord,
    PolicyRequest, PolicyRequestResult, PolicyResponse, PolicyResponseResult,
    PolicyStreamEndResult,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use crate::guard::{Api, Blocked, Guard, StreamGuard};

/// The gRPC service.
#[derive(Clone, Debug)]
pub struct PathGuardService {
    guard: Arc<Guard>,
}

impl PathGuardService {
    pub fn new(guard: Guard) -> Self {
        Self {
            guard: Arc::new(guard),
        }
    }

    pub fn into_server(self) -> PolicyServiceServer<Self> {
        PolicyServiceServer::new(self)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }
}

/// Serves the policy on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    guard: Guard,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(PathGuardService::new(guard).into_server())
        // TCP_NODELAY on every connection: a result written in two pieces would otherwise
        // wait for Luthien's delayed ACK (~40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

#[tonic::async_trait]
impl PolicyService for PathGuardService {
    async fn describe(
        &self,
        _: Request<DescribeRequest>,
    ) -> Result<Response<PolicyDescription>, Status> {
        Ok(Response::new(PolicyDescription {
            name: "path-guard".to_owned(),
            phases: vec![Phase::Response as i32, Phase::Stream as i32],
            read_only: false,
        }))
    }

    type ProcessCallStream = ReceiverStream<Result<PolicyResponse, Status>>;

    async fn process_call(
        &self,
        request: Request<Streaming<PolicyRequest>>,
    ) -> Result<Response<Self::ProcessCallStream>, Status> {
        let (replies, stream) = mpsc::channel(16);
        let call = Call {
            guard: Arc::clone(&self.guard),
            inbound: request.into_inner(),
            replies,
        };
        tokio::spawn(call.run());
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// One call's stream.
struct Call {
    guard: Arc<Guard>,
    inbound: Streaming<PolicyRequest>,
    replies: mpsc::Sender<Result<PolicyResponse, Status>>,
}

impl Call {
    async fn run(mut self) {
        if let Err(status) = self.serve().await {
            tracing::warn!(%status, "call failed");
            let _ = self.replies.send(Err(status)).await;
        }
    }

    async fn serve(&mut self) -> Result<(), Status> {
        let mut api = None;
        let mut stream: Option<StreamGuard> = None;
        while let Some(PolicyRequest { message }) = self.inbound.message().await? {
            let Some(message) = message else {
                continue;
            };
            let mut removed = Vec::new();
            let reply = match message {
                FromLuthien::Start(start) => {
                    api = Api::parse(start.api);
                    tracing::debug!(call_id = %start.call_id, api = %start.api, "call started");
                    continue;
                }
                // Not asked for in `Describe`; answered anyway, unchanged.
                FromLuthien::Request(_) => ToLuthien::RequestResult(PolicyRequestResult {
                    action: Some(Action::ContinueRequest(PolicyContinue { body: None })),
                }),
                FromLuthien::Response(response) => {
                    let mut rewritten = None;
                    if let (Some(api), Ok(mut body)) =
                        (api, serde_json::from_slice::<Value>(&response.body))
                    {
                        removed = self.guard.response(api, &mut body);
                        if !removed.is_empty() {
                            rewritten = Some(Bytes::from(body.to_string()));
                        }
                    }
                    ToLuthien::ResponseResult(PolicyResponseResult { body: rewritten })
                }
                FromLuthien::Event(event) => {
                    let seq = event.seq;
                    let mut events = Vec::new();
                    match api {
                        Some(api) => stream.get_or_insert_with(|| StreamGuard::new(api)).event(
                            &self.guard,
                            event,
                            &mut events,
                            &mut removed,
                        ),
                        None => events.push(event),
                    }
                    ToLuthien::EventResult(PolicyEventResult { seq, events })
                }
                FromLuthien::StreamEnd(_) => {
                    let mut events = Vec::new();
                    if let Some(stream) = &mut stream {
                        stream.end(&self.guard, &mut events, &mut removed);
                    }
                    ToLuthien::StreamEndResult(PolicyStreamEndResult { events })
                }
            };
            // Records first: they belong to the phase whose result follows.
            for blocked in removed {
                self.send(ToLuthien::Record(self.record(&blocked))).await?;
            }
            self.send(reply).await?;
        }
        Ok(())
    }

    fn record(&self, blocked: &Blocked) -> PolicyRecord {
        PolicyRecord {
            action: "blocked".to_owned(),
            summary: format!(
                "removed tool call `{}` touching {}",
                blocked.tool,
                blocked.paths.join(", ")
            ),
            data_json: Bytes::from(
                json!({
                    "tool": blocked.tool,
                    "paths": blocked.paths,
                    "allowed_dir": self.guard.allowed_dir().display().to_string(),
                })
                .to_string(),
            ),
        }
    }

    async fn send(&self, message: ToLuthien) -> Result<(), Status> {
        self.replies
            .send(Ok(PolicyResponse {
                message: Some(message),
            }))
            .await
            .map_err(|_| Status::cancelled("Luthien went away"))
    }
}
