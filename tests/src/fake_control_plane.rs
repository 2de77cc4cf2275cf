//! A scripted control plane that misbehaves on purpose: goes silent, stalls
//! with keepalives, or dies mid-stream. Used to test the data plane's
//! deadlines and fail modes against the real protocol. Every `CallEnd` it
//! receives is kept, so a test can read how the data plane says a call ended.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use luthien_proto::dataplane::v1::control_plane_message::Message as ToData;
use luthien_proto::dataplane::v1::control_plane_service_server::{
    ControlPlaneService, ControlPlaneServiceServer,
};
use luthien_proto::dataplane::v1::data_plane_message::Message as FromData;
use luthien_proto::dataplane::v1::request_decision::Action;
use luthien_proto::dataplane::v1::{
    CallEnd, ChunkReply, ContinueRequest, ControlPlaneMessage, DataPlaneMessage, Keepalive,
    RequestDecision, ResponseMode,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// What the fake does with each call.
#[derive(Clone, Copy, Debug)]
pub enum Script {
    /// Reads the CallStart and never answers.
    Silent,
    /// Sends a keepalive every `every` for `for_`, then continues the call
    /// unchanged in observe mode.
    KeepaliveThenContinue { every: Duration, for_: Duration },
    /// Continues in transform mode, echoes `chunks` stream chunks unchanged,
    /// then fails the call stream.
    DieAfterChunks { chunks: u64 },
    /// Answers `CallStart` at once with a message that is not a decision,
    /// then keeps listening.
    AnswerOutOfTurn,
    /// Continues in transform mode, echoes the first stream chunk with
    /// `pass_through_rest`, and answers nothing after it.
    PassThroughAfterFirstChunk,
}

#[derive(Clone)]
struct Fake {
    script: Script,
    ends: CallEnds,
}

type CallEnds = Arc<Mutex<Vec<CallEnd>>>;

type Replies = mpsc::Sender<Result<ControlPlaneMessage, Status>>;

#[tonic::async_trait]
impl ControlPlaneService for Fake {
    type ProcessCallStream = ReceiverStream<Result<ControlPlaneMessage, Status>>;

    /// A fake records nothing: the data plane keeps its unpoliced calls for a real one.
    async fn record_unpoliced_calls(
        &self,
        _request: Request<luthien_proto::dataplane::v1::RecordUnpolicedCallsRequest>,
    ) -> Result<Response<luthien_proto::dataplane::v1::RecordUnpolicedCallsResponse>, Status> {
        Err(Status::unimplemented(
            "a fake control plane records nothing",
        ))
    }

    async fn process_call(
        &self,
        request: Request<Streaming<DataPlaneMessage>>,
    ) -> Result<Response<Self::ProcessCallStream>, Status> {
        let (replies, stream) = mpsc::channel(8);
        tokio::spawn(run(
            self.script,
            request.into_inner(),
            replies,
            self.ends.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

async fn run(
    script: Script,
    mut inbound: Streaming<DataPlaneMessage>,
    replies: Replies,
    ends: CallEnds,
) {
    // The CallStart.
    let Ok(Some(_)) = inbound.message().await else {
        return;
    };
    // Reads until the data plane leaves, keeping its CallEnd.
    let listen = |mut inbound: Streaming<DataPlaneMessage>| async move {
        while let Ok(Some(message)) = inbound.message().await {
            if let Some(FromData::CallEnd(end)) = message.message
                && let Ok(mut ends) = ends.lock()
            {
                ends.push(end);
            }
        }
    };
    match script {
        Script::Silent => {
            // Hold the stream open without a word until the data plane leaves.
            listen(inbound).await;
        }
        Script::AnswerOutOfTurn => {
            send(&replies, ToData::ChunkReply(ChunkReply::default())).await;
            listen(inbound).await;
        }
        Script::PassThroughAfterFirstChunk => {
            send(&replies, continue_call(ResponseMode::Transform)).await;
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(FromData::StreamChunk(chunk)) = message.message {
                    let reply = ChunkReply {
                        seq: chunk.seq,
                        chunks: vec![chunk.data],
                        pass_through_rest: true,
                        ..ChunkReply::default()
                    };
                    send(&replies, ToData::ChunkReply(reply)).await;
                    break;
                }
            }
            listen(inbound).await;
        }
        Script::KeepaliveThenContinue { every, for_ } => {
            let until = tokio::time::Instant::now() + for_;
            while tokio::time::Instant::now() < until {
                send(&replies, ToData::Keepalive(Keepalive {})).await;
                tokio::time::sleep(every).await;
            }
            send(&replies, continue_call(ResponseMode::Observe)).await;
            listen(inbound).await;
        }
        Script::DieAfterChunks { chunks } => {
            send(&replies, continue_call(ResponseMode::Transform)).await;
            let mut echoed = 0;
            while let Ok(Some(message)) = inbound.message().await {
                let Some(FromData::StreamChunk(chunk)) = message.message else {
                    continue;
                };
                if echoed == chunks {
                    let _ = replies
                        .send(Err(Status::internal("scripted failure")))
                        .await;
                    return;
                }
                let reply = ChunkReply {
                    seq: chunk.seq,
                    chunks: vec![chunk.data],
                    ..ChunkReply::default()
                };
                send(&replies, ToData::ChunkReply(reply)).await;
                echoed += 1;
            }
        }
    }
}

fn continue_call(mode: ResponseMode) -> ToData {
    ToData::RequestDecision(RequestDecision {
        action: Some(Action::ContinueRequest(ContinueRequest { body: None })),
        response_mode: mode.into(),
        // A scripted control plane keeps the data plane waiting for each decision.
        requests_not_inspected: false,
    })
}

async fn send(replies: &Replies, message: ToData) {
    let _ = replies
        .send(Ok(ControlPlaneMessage {
            message: Some(message),
        }))
        .await;
}

/// A running fake; stops when dropped.
pub struct FakeControlPlane {
    pub url: String,
    ends: CallEnds,
    shutdown: CancellationToken,
}

impl FakeControlPlane {
    pub async fn start(script: Script) -> FakeControlPlane {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake control plane");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let shutdown = CancellationToken::new();
        let ends = CallEnds::default();
        let fake = Fake {
            script,
            ends: ends.clone(),
        };
        // Reports SERVING like a real one, whatever its script does to calls.
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<ControlPlaneServiceServer<Fake>>()
            .await;
        let server = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(ControlPlaneServiceServer::new(fake))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        FakeControlPlane {
            url,
            ends,
            shutdown,
        }
    }

    /// The `CallEnd`s received so far, oldest first.
    pub fn call_ends(&self) -> Vec<CallEnd> {
        self.ends
            .lock()
            .map(|ends| ends.clone())
            .unwrap_or_default()
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
