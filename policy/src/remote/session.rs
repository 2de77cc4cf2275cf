//! The wire side of a remote policy: the shared channel, the cached `Describe`, and one call's
//! `ProcessCall` stream with bounded waits.
//!
//! Every wait for the server is bounded twice, like the data plane's waits for the control
//! plane: by the per-message timeout (from sending a message to its result) and by the
//! inactivity timeout, which every keepalive or record from the server restarts.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use luthien_proto::policy::v1::policy_request::Message as ToServer;
use luthien_proto::policy::v1::policy_response::Message as FromServer;
use luthien_proto::policy::v1::policy_service_client::PolicyServiceClient;
use luthien_proto::policy::v1::{
    DescribeRequest, Phase, PolicyRecord, PolicyRequest, PolicyResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout_at};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

use super::stats::{RemoteStats, StatPhase};
use crate::PolicyEvent;
use luthien_api::limits;

/// Messages a call may queue towards a server it waits for (it waits for each result, so a
/// few are plenty).
const OUTBOUND_QUEUE: usize = 8;

/// Messages a call may queue towards a read-only server before further ones are dropped.
pub const AUDIT_QUEUE: usize = 256;

/// Why a remote policy server could not be used for a phase.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RemoteError {
    /// Connect failure, or the server answered with a gRPC error.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The server ended the call's stream before answering.
    #[error("the server closed the call stream")]
    Closed,
    /// An answer that breaks the protocol (wrong kind, wrong `seq`, a body that is not JSON…).
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl RemoteError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }

    /// Short kind, for the client-facing message and records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::Closed => "closed",
            Self::Protocol(_) => "protocol_error",
        }
    }

    /// Whether the connection may be gone, so the cached description is stale.
    fn connection_lost(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Closed)
    }
}

impl From<Status> for RemoteError {
    fn from(status: Status) -> Self {
        let message = status.message();
        if message.is_empty() {
            Self::Unavailable(format!("{:?}", status.code()))
        } else {
            Self::Unavailable(format!("{:?}: {message}", status.code()))
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub message: Duration,
    pub inactivity: Duration,
}

/// Which phases, as a small set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases {
    pub request: bool,
    pub response: bool,
    pub stream: bool,
}

impl Phases {
    pub const ALL: Phases = Phases {
        request: true,
        response: true,
        stream: true,
    };

    pub fn intersect(self, other: Phases) -> Phases {
        Phases {
            request: self.request && other.request,
            response: self.response && other.response,
            stream: self.stream && other.stream,
        }
    }

    /// The set a server declared; empty (or only unknown values) means all.
    fn from_declared(phases: &[i32]) -> Phases {
        let mut set = Phases::default();
        for phase in phases {
            match Phase::try_from(*phase) {
                Ok(Phase::Request) => set.request = true,
                Ok(Phase::Response) => set.response = true,
                Ok(Phase::Stream) => set.stream = true,
                Ok(Phase::Unspecified) | Err(_) => {}
            }
        }
        if set == Phases::default() {
            Phases::ALL
        } else {
            set
        }
    }
}

/// What a server said about itself in `Describe`.
#[derive(Clone, Debug)]
pub struct Description {
    pub name: String,
    pub phases: Phases,
    pub read_only: bool,
}

/// One remote policy entry's connection to its server(s): shared by all its calls.
pub struct Connection {
    /// The chain entry's name, for logs.
    policy: String,
    endpoints: Vec<Endpoint>,
    client: OnceLock<PolicyServiceClient<Channel>>,
    authorization: Option<AsciiMetadataValue>,
    description: ArcSwapOption<Description>,
    pub timeouts: Timeouts,
    pub stats: Arc<RemoteStats>,
    /// Streams that outlive their call: a read-only server's, read until it ends, and a
    /// finished call's, read until the server closes its side (each bounded by the
    /// per-message timeout). Shutdown waits for them through [`Policy::background_tasks`].
    ///
    /// [`Policy::background_tasks`]: crate::Policy::background_tasks
    pub background: TaskTracker,
}

impl Connection {
    pub fn new(
        policy: String,
        endpoints: Vec<Endpoint>,
        authorization: Option<AsciiMetadataValue>,
        timeouts: Timeouts,
        stats: Arc<RemoteStats>,
    ) -> Self {
        Self {
            policy,
            endpoints,
            client: OnceLock::new(),
            authorization,
            description: ArcSwapOption::empty(),
            timeouts,
            stats,
            background: TaskTracker::new(),
        }
    }

    /// The shared client. The channel is made on first use, inside the runtime (tonic spawns
    /// its connection tasks there); it connects lazily, keeps the HTTP/2 connection alive and
    /// reconnects after failures. Several endpoints are balanced (power of two choices).
    fn client(&self) -> PolicyServiceClient<Channel> {
        self.client
            .get_or_init(|| {
                let channel = match self.endpoints.as_slice() {
                    [single] => single.connect_lazy(),
                    several => Channel::balance_list(several.iter().cloned()),
                };
                PolicyServiceClient::new(channel)
                    .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(limits::MAX_MESSAGE_BYTES)
            })
            .clone()
    }

    fn authorize(&self, metadata: &mut MetadataMap) {
        if let Some(value) = &self.authorization {
            metadata.insert("authorization", value.clone());
        }
    }

    /// The server's description: cached after the first success, asked again after a
    /// connection failure (the server may have been replaced).
    pub async fn describe(&self) -> Result<Arc<Description>, RemoteError> {
        if let Some(description) = self.description.load_full() {
            return Ok(description);
        }
        let started = std::time::Instant::now();
        self.stats.request(StatPhase::Describe);
        let mut request = tonic::Request::new(DescribeRequest {});
        self.authorize(request.metadata_mut());
        let mut client = self.client();
        let wait = self.timeouts.message;
        let outcome = match tokio::time::timeout(wait, client.describe(request)).await {
            Err(_) => Err(RemoteError::Timeout(wait)),
            Ok(Err(status)) => Err(RemoteError::from(status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        };
        self.stats.latency(StatPhase::Describe, started.elapsed());
        let described = match outcome {
            Ok(described) => described,
            Err(error) => {
                self.stats.error(StatPhase::Describe, error.is_timeout());
                return Err(error);
            }
        };
        let description = Arc::new(Description {
            name: described.name,
            phases: Phases::from_declared(&described.phases),
            read_only: described.read_only,
        });
        tracing::info!(
            policy = %self.policy, server = %description.name, phases = ?description.phases,
            read_only = description.read_only, "remote policy server described"
        );
        self.description.store(Some(Arc::clone(&description)));
        Ok(description)
    }

    /// Called on every failure: a lost connection makes the next call describe again.
    pub fn failed(&self, error: &RemoteError) {
        if error.connection_lost() {
            self.description.store(None);
        }
    }

    /// Starts a call's stream with `first` queued; nothing is awaited yet.
    pub fn open(&self, first: PolicyRequest) -> Session {
        let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
        let mut request = tonic::Request::new(ReceiverStream::new(queue));
        self.authorize(request.metadata_mut());
        trace_metadata(request.metadata_mut(), &first);
        // A fresh queue always has room for the first message.
        let _ = outbound.try_send(first);
        let mut client = self.client();
        self.stats.stream_opened();
        Session {
            outbound: Some(outbound),
            inbound: Inbound::Opening(Box::pin(async move {
                client
                    .process_call(request)
                    .await
                    .map(tonic::Response::into_inner)
            })),
            timeouts: self.timeouts,
            records: Vec::new(),
            background: self.background.clone(),
        }
    }

    /// Starts a call's stream to a read-only server: messages are queued without waiting
    /// and dropped (counted) when the queue is full; a background task reads what the server
    /// sends, keeps its records for the call and ends once the call is over.
    pub fn open_audit(&self, first: PolicyRequest) -> AuditSession {
        let (outbound, queue) = mpsc::channel(AUDIT_QUEUE);
        let mut request = tonic::Request::new(ReceiverStream::new(queue));
        self.authorize(request.metadata_mut());
        trace_metadata(request.metadata_mut(), &first);
        let _ = outbound.try_send(first);
        let mut client = self.client();
        let records = Arc::new(Mutex::new(Vec::new()));
        let (ended, call_over) = oneshot::channel::<()>();
        let task_records = Arc::clone(&records);
        let linger = self.timeouts.message;
        let stats = Arc::clone(&self.stats);
        self.stats.stream_opened();
        self.background.spawn(async move {
            let drain = async {
                let mut inbound = client.process_call(request).await?.into_inner();
                while let Some(message) = inbound.message().await? {
                    if let Some(FromServer::Record(record)) = message.message
                        && let Ok(mut records) = task_records.lock()
                    {
                        records.push(record_event(record));
                    }
                }
                Ok::<(), Status>(())
            };
            tokio::pin!(drain);
            // Read for as long as the call runs, then give the server `linger` to finish.
            let outcome = tokio::select! {
                outcome = &mut drain => Some(outcome),
                _ = call_over => None,
            };
            let outcome = match outcome {
                Some(outcome) => outcome,
                None => match tokio::time::timeout(linger, drain).await {
                    Ok(outcome) => outcome,
                    Err(_) => Ok(()),
                },
            };
            if let Err(status) = outcome {
                stats.error(StatPhase::Request, false);
                tracing::debug!(%status, "read-only remote policy stream failed");
            }
        });
        AuditSession {
            outbound,
            records,
            _ended: ended,
        }
    }
}

type Opening = Pin<Box<dyn Future<Output = Result<Streaming<PolicyResponse>, Status>> + Send>>;

enum Inbound {
    /// Waiting for the server's response headers.
    Opening(Opening),
    Open(Box<Streaming<PolicyResponse>>),
    /// Failed; the session is unusable.
    Broken,
}

/// One call's stream to a server the call waits for.
pub struct Session {
    outbound: Option<mpsc::Sender<PolicyRequest>>,
    inbound: Inbound,
    timeouts: Timeouts,
    /// Records received since the last [`Session::take_records`].
    records: Vec<PolicyEvent>,
    /// The connection's [`Connection::background`], for the stream's end after the call.
    background: TaskTracker,
}

impl Session {
    /// Sends `message` and waits for the result that answers it, skipping keepalives and
    /// keeping records. The caller checks the result's kind.
    pub async fn exchange(&mut self, message: ToServer) -> Result<FromServer, RemoteError> {
        let message_deadline = Instant::now() + self.timeouts.message;
        let Some(outbound) = &self.outbound else {
            return Err(RemoteError::Closed);
        };
        let request = PolicyRequest {
            message: Some(message),
        };
        match timeout_at(message_deadline, outbound.send(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return self.broken(RemoteError::Closed),
            Err(_) => return self.broken(RemoteError::Timeout(self.timeouts.message)),
        }
        let result = self.receive(message_deadline).await;
        if result.is_err() {
            self.inbound = Inbound::Broken;
        }
        result
    }

    fn broken<T>(&mut self, error: RemoteError) -> Result<T, RemoteError> {
        self.inbound = Inbound::Broken;
        Err(error)
    }

    async fn receive(&mut self, message_deadline: Instant) -> Result<FromServer, RemoteError> {
        let timeouts = self.timeouts;
        // Both bounds, and which one it was.
        let deadline = || {
            let silence = Instant::now() + timeouts.inactivity;
            if silence < message_deadline {
                (silence, timeouts.inactivity)
            } else {
                (message_deadline, timeouts.message)
            }
        };
        if let Inbound::Opening(opening) = &mut self.inbound {
            let (at, waited) = deadline();
            let stream = timeout_at(at, opening)
                .await
                .map_err(|_| RemoteError::Timeout(waited))??;
            self.inbound = Inbound::Open(Box::new(stream));
        }
        let Inbound::Open(inbound) = &mut self.inbound else {
            return Err(RemoteError::Closed);
        };
        loop {
            let (at, waited) = deadline();
            let next = timeout_at(at, inbound.message())
                .await
                .map_err(|_| RemoteError::Timeout(waited))??;
            match next {
                None => return Err(RemoteError::Closed),
                Some(PolicyResponse { message: None }) => {
                    return Err(RemoteError::Protocol("empty PolicyResponse".to_owned()));
                }
                Some(PolicyResponse {
                    message: Some(FromServer::Keepalive(_)),
                }) => {}
                Some(PolicyResponse {
                    message: Some(FromServer::Record(record)),
                }) => self.records.push(record_event(record)),
                Some(PolicyResponse {
                    message: Some(message),
                }) => return Ok(message),
            }
        }
    }

    pub fn take_records(&mut self) -> Vec<PolicyEvent> {
        std::mem::take(&mut self.records)
    }
}

impl Drop for Session {
    /// Half-closes the stream and lets the server finish its side in the background (bounded
    /// by the per-message timeout), so it sees a clean end rather than a reset.
    fn drop(&mut self) {
        let outbound = self.outbound.take();
        let inbound = std::mem::replace(&mut self.inbound, Inbound::Broken);
        drop(outbound);
        let Inbound::Open(mut inbound) = inbound else {
            return;
        };
        let linger = self.timeouts.message;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.background.spawn_on(
                async move {
                    let _ = tokio::time::timeout(linger, async {
                        while let Ok(Some(_)) = inbound.message().await {}
                    })
                    .await;
                },
                &runtime,
            );
        }
    }
}

/// One call's stream to a read-only server; dropping it ends the call's stream.
pub struct AuditSession {
    outbound: mpsc::Sender<PolicyRequest>,
    records: Arc<Mutex<Vec<PolicyEvent>>>,
    /// Dropped with the session: tells the reader the call is over.
    _ended: oneshot::Sender<()>,
}

impl AuditSession {
    /// Queues a message without waiting; false when it was dropped (queue full or the stream
    /// is gone).
    pub fn send(&self, message: ToServer) -> bool {
        self.outbound
            .try_send(PolicyRequest {
                message: Some(message),
            })
            .is_ok()
    }

    /// Records the server sent so far (they arrive asynchronously, so late ones may miss the
    /// call's record).
    pub fn take_records(&self) -> Vec<PolicyEvent> {
        self.records
            .lock()
            .map(|mut records| std::mem::take(&mut *records))
            .unwrap_or_default()
    }
}

/// A `PolicyRecord` as a policy event; `data_json` that is not JSON is kept as a string.
fn record_event(record: PolicyRecord) -> PolicyEvent {
    let data = if record.data_json.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&record.data_json).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&record.data_json).into_owned())
        })
    };
    PolicyEvent {
        action: record.action,
        summary: record.summary,
        data,
    }
}

/// Copies the call's W3C context from its `start` message into the stream's
/// gRPC metadata, where OpenTelemetry gRPC instrumentation reads it.
fn trace_metadata(metadata: &mut MetadataMap, first: &PolicyRequest) {
    let Some(ToServer::Start(start)) = &first.message else {
        return;
    };
    for (key, value) in [
        ("traceparent", &start.traceparent),
        ("tracestate", &start.tracestate),
    ] {
        if let Ok(value) = AsciiMetadataValue::try_from(value.as_str())
            && !value.is_empty()
        {
            metadata.insert(key, value);
        }
    }
}
