//! The data plane's side of the per-call control-plane stream.
//!
//! [`ControlClient`] sends each call to one control plane of the pool that `discovery` keeps
//! up to date (`pool` holds one lazily connected HTTP/2 channel per control plane, shared by
//! all calls, and each one's health); [`CallSession`] is one call's bidirectional stream. Every wait for
//! the control plane is bounded twice: by the per-message timeout (total) and
//! by the inactivity timeout, which each keepalive restarts.

mod discovery;
mod pool;
mod retry_budget;
mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use luthien_proto::dataplane::v1::CallOutcome;
use luthien_proto::dataplane::v1::control_plane_message::Message as FromControl;
use luthien_proto::dataplane::v1::data_plane_message::Message as ToControl;
use luthien_proto::dataplane::v1::{
    CallEnd, CallStart, ChunkReply, ControlPlaneMessage, DataPlaneMessage,
    RecordUnpolicedCallsRequest, RequestDecision, ResponseDecision,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Streaming;

use crate::config::ControlPlaneTls;
use crate::metrics::{ControlMetrics, OpenStream};
use discovery::Discovery;
use luthien_telemetry::prometheus_client::metrics::gauge::Gauge;
use pool::{ChannelSettings, ControlEndpoint, Pool};
use retry_budget::RetryBudget;

use crate::spool::Spool;
pub use tls::ClientTls;

/// Messages a call may queue towards the control plane before the data plane
/// waits; this is the backpressure bound of observe mode.
const OUTBOUND_QUEUE: usize = 16;

/// Why the control plane could not be used for a call.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    #[error("control plane refused the call: {0}")]
    Refused(String),
    #[error("control plane did not answer within {0:?}")]
    Timeout(Duration),
    #[error("control plane closed the call stream")]
    Closed,
    #[error("control plane protocol violation: {0}")]
    Protocol(String),
}

impl ControlError {
    /// How a call that lost its control plane this way ended: a timeout only when a deadline
    /// passed, so a record tells a slow control plane from a broken one.
    pub fn ending(&self) -> Ending {
        let outcome = match self {
            ControlError::Timeout(_) => CallOutcome::ControlPlaneTimeout,
            ControlError::Unavailable(_)
            | ControlError::Refused(_)
            | ControlError::Closed
            | ControlError::Protocol(_) => CallOutcome::ControlPlaneError,
        };
        Ending::new(outcome, self.to_string())
    }
}

/// How a call ended, as its `CallEnd` tells the control plane.
#[derive(Debug, Default)]
pub struct Ending {
    pub outcome: CallOutcome,
    /// Why, for anything but a completed call.
    pub detail: String,
    /// The upstream's HTTP status, when it answered.
    pub upstream_status: u16,
    /// The start of a non-2xx upstream body.
    pub upstream_error_body: Bytes,
}

impl Ending {
    pub fn new(outcome: CallOutcome, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
            ..Self::default()
        }
    }

    /// A call whose response from upstream (with this status) reached the client.
    pub fn completed(upstream_status: u16) -> Self {
        Self {
            upstream_status,
            ..Self::new(CallOutcome::Completed, "")
        }
    }

    /// The `CallEnd` saying so: the only place a data plane builds one.
    pub fn call_end(self, times: Times) -> CallEnd {
        CallEnd {
            outcome: self.outcome.into(),
            upstream_status: u32::from(self.upstream_status),
            upstream_error_body: self.upstream_error_body,
            detail: self.detail,
            time_to_first_byte_micros: micros(times.first_byte),
            duration_micros: micros(times.duration),
            overhead_micros: micros(times.overhead),
        }
    }
}

/// A call's clock at its end.
#[derive(Clone, Copy, Debug)]
pub struct Times {
    /// From the request received to the call's end.
    pub duration: Duration,
    /// From the request received to the first response byte sent.
    pub first_byte: Duration,
    /// Time spent in Luthien rather than waiting for upstream or the client.
    pub overhead: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub message: Duration,
    pub inactivity: Duration,
}

/// Shared handle to the control planes: discovery keeps the pool of them up to date, and
/// each call's stream goes to one of them.
#[derive(Clone)]
pub struct ControlClient {
    pool: Arc<Pool>,
    discovery: Arc<Discovery>,
    /// `authorization: Bearer <--control-plane-token>`, sent on every call stream.
    token: Option<tonic::metadata::AsciiMetadataValue>,
    /// Other control planes a call may move to when the chosen one cannot take it.
    retries: usize,
    /// And how many calls may move at all.
    budget: Arc<RetryBudget>,
    metrics: ControlMetrics,
    timeouts: Timeouts,
    tasks: TaskTracker,
    open_streams: Gauge,
    /// The last request decision said its chain does not inspect requests: calls may go
    /// upstream before their decision (see [`ControlClient::send_before_decision`]).
    requests_not_inspected: Arc<AtomicBool>,
}

/// How the data plane reaches its control planes.
pub struct ControlSettings<'a> {
    pub targets: &'a str,
    pub tls: &'a ControlPlaneTls,
    pub resolve_interval: Duration,
    pub retries: usize,
    pub connect_timeout: Duration,
    pub timeouts: Timeouts,
    pub token: Option<tonic::metadata::AsciiMetadataValue>,
}

impl ControlClient {
    /// Parses the targets and loads the TLS files; connections are made on first use, so a
    /// data plane starts even while its control planes are down. Nothing is resolved before
    /// [`ControlClient::start`].
    pub fn new(settings: ControlSettings<'_>, metrics: ControlMetrics) -> Result<Self, String> {
        let tls = ClientTls::load(settings.tls)?.map(Arc::new);
        let pool = Arc::new(Pool::new(
            ChannelSettings {
                connect_timeout: settings.connect_timeout,
                tls: tls.clone(),
            },
            metrics.clone(),
        ));
        let discovery = Discovery::new(
            settings.targets,
            settings.tls.clone(),
            settings.resolve_interval,
            Arc::clone(&pool),
            tls,
        )?;
        Ok(Self {
            pool,
            discovery: Arc::new(discovery),
            token: settings.token,
            retries: settings.retries,
            budget: Arc::default(),
            timeouts: settings.timeouts,
            tasks: TaskTracker::new(),
            open_streams: metrics.open_streams.clone(),
            metrics,
            requests_not_inspected: Arc::default(),
        })
    }

    /// Decides (and counts) whether the next call goes upstream at the same time as its
    /// `CallStart`, without
    /// waiting for its request decision: the last decision received said its chain does not
    /// inspect requests, so the decision can only be "continue, unchanged". It is still awaited
    /// before the response is handled (it carries the response mode).
    ///
    /// The window: a reload that makes the chain inspect requests is heard of with the first
    /// decision after it; the calls this data plane sent in between (one round trip's worth)
    /// reach upstream unpoliced on the request side. The control plane records each as
    /// `request_not_policed` and counts it in `luthien_request_decisions_skipped_total`, and
    /// polices their responses. Every other chain change needs no such care.
    pub fn send_before_decision(&self) -> bool {
        let may = self.requests_not_inspected.load(Ordering::Relaxed);
        if may {
            self.metrics.sent_before_decision.inc();
        }
        may
    }

    /// Finds the control planes (the first round before returning, bounded) and keeps
    /// following them, and their health, until [`ControlClient::stop`].
    pub async fn start(&self, tasks: &TaskTracker, stop: CancellationToken) {
        self.discovery.start(tasks, stop).await;
    }

    /// Stops the health watches.
    pub async fn stop(&self) {
        self.pool.stop().await;
    }

    /// Whether some control plane reports SERVING.
    pub fn any_serving(&self) -> bool {
        self.pool.any_serving()
    }

    /// Hands the spool's calls to a serving control plane, a batch at a time, until the spool
    /// is empty or no control plane takes them (they wait for the next try).
    pub async fn deliver(&self, spool: &Spool) {
        while !spool.is_empty() {
            let Some(endpoint) = self
                .pool
                .order()
                .into_iter()
                .find(|endpoint| endpoint.is_serving())
            else {
                return;
            };
            let batch = spool.take_batch();
            let count = batch.len();
            let mut request = tonic::Request::new(RecordUnpolicedCallsRequest {
                calls: batch.clone(),
            });
            request.set_timeout(self.timeouts.message);
            if let Some(token) = &self.token {
                request
                    .metadata_mut()
                    .insert("authorization", token.clone());
            }
            let mut client = endpoint.client.clone();
            match client.record_unpoliced_calls(request).await {
                Ok(recorded) => {
                    spool.delivered(count);
                    tracing::info!(
                        endpoint = %endpoint.found.address,
                        calls = count,
                        recorded = recorded.into_inner().recorded,
                        "calls let through without policies handed to a control plane"
                    );
                }
                Err(status) => {
                    spool.put_back(batch);
                    tracing::warn!(endpoint = %endpoint.found.address, %status, "a control plane did not take the unpoliced calls; trying again later");
                    return;
                }
            }
        }
    }

    /// Background call endings still running; shutdown waits for them.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Opens the call's stream with its first message, on the first control plane that takes
    /// it. A control plane that cannot take the stream (unreachable, refusing new streams) is
    /// ejected and passed over for the next, up to `--control-plane-retries` times and as the
    /// retry budget allows: nothing of the call reached it, and nothing has gone upstream yet.
    /// A timeout is not retried, since the control plane may have the call.
    pub async fn open(&self, start: CallStart) -> Result<CallSession, ControlError> {
        self.budget.deposit();
        let mut order = self.pool.order();
        order.truncate(self.retries.saturating_add(1));
        let last = order.len().saturating_sub(1);
        let mut start = Some(start);
        let mut unavailable = None;
        for (attempt, endpoint) in order.into_iter().enumerate() {
            // Only an attempt the call may move on from keeps a copy of its start.
            let this = if attempt == last {
                start.take()
            } else {
                start.clone()
            };
            let Some(this) = this else { break };
            if attempt > 0 {
                if !self.budget.withdraw() {
                    self.metrics.retries_refused.inc();
                    tracing::debug!(
                        "retry budget spent: the call does not move to another control plane"
                    );
                    break;
                }
                self.metrics.retries.inc();
            }
            match self.open_on(&endpoint, this).await {
                Err(ControlError::Unavailable(reason)) => {
                    endpoint.failed(&reason);
                    tracing::debug!(endpoint = %endpoint.found.address, %reason, "control plane did not take the call; trying the next");
                    unavailable = Some(ControlError::Unavailable(reason));
                }
                Err(error @ ControlError::Timeout(_)) => {
                    endpoint.failed(&error.to_string());
                    return Err(error);
                }
                opened => return opened,
            }
        }
        Err(unavailable
            .unwrap_or_else(|| ControlError::Unavailable("no control plane found yet".into())))
    }

    async fn open_on(
        &self,
        endpoint: &Arc<ControlEndpoint>,
        start: CallStart,
    ) -> Result<CallSession, ControlError> {
        let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
        let first = DataPlaneMessage {
            message: Some(ToControl::CallStart(start)),
        };
        outbound
            .try_send(first)
            .map_err(|_| ControlError::Protocol("fresh queue refused the first message".into()))?;
        let deadline = Instant::now() + self.timeouts.message.min(self.timeouts.inactivity);
        let open = OpenStream::new(&self.open_streams);
        let mut client = endpoint.client.clone();
        let mut request = tonic::Request::new(ReceiverStream::new(queue));
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        let response = timeout_at(deadline, client.process_call(request))
            .await
            .map_err(|_| ControlError::Timeout(self.timeouts.inactivity))?
            .map_err(not_opened)?;
        endpoint.streams.inc();
        endpoint.succeeded();
        Ok(CallSession {
            outbound,
            inbound: Some(response.into_inner()),
            endpoint: Arc::clone(endpoint),
            timeouts: self.timeouts,
            tasks: self.tasks.clone(),
            ended: false,
            requests_not_inspected: Arc::clone(&self.requests_not_inspected),
            _open: open,
        })
    }
}

/// Why a stream did not open. A status the control plane sent refuses the call; one the
/// data plane's own connection made up means no policy saw it, so the next control plane may
/// take it: `Unavailable` (unreachable), `Cancelled` (the connection was closing, a GOAWAY from
/// a control plane shutting down, and the request was never sent), and any transport failure,
/// such as a connection reset under a stream just opened on it (a control plane killed between
/// two calls: `Unknown`, "transport error").
fn not_opened(status: tonic::Status) -> ControlError {
    let transport =
        std::iter::successors(std::error::Error::source(&status), |error| error.source())
            .any(|error| error.is::<tonic::transport::Error>());
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled => {
            ControlError::Unavailable(status.message().to_owned())
        }
        _ if transport => ControlError::Unavailable(status.message().to_owned()),
        _ => ControlError::Refused(status.message().to_owned()),
    }
}

/// One call's stream. Dropping it before [`CallSession::end`] tells the
/// control plane the client went away.
pub struct CallSession {
    outbound: mpsc::Sender<DataPlaneMessage>,
    /// Taken by the task that ends the call.
    inbound: Option<Streaming<ControlPlaneMessage>>,
    /// The control plane it is on, told when the stream breaks or goes silent.
    endpoint: Arc<ControlEndpoint>,
    timeouts: Timeouts,
    tasks: TaskTracker,
    ended: bool,
    /// Where its request decision says whether the chain inspects requests.
    requests_not_inspected: Arc<AtomicBool>,
    /// Counts this stream in the open-streams gauge while it lives.
    _open: OpenStream,
}

impl CallSession {
    /// Queues a message, waiting (bounded) while the control plane is behind.
    pub async fn send(&self, message: ToControl) -> Result<(), ControlError> {
        let message = DataPlaneMessage {
            message: Some(message),
        };
        match tokio::time::timeout(self.timeouts.message, self.outbound.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ControlError::Closed),
            Err(_) => Err(ControlError::Timeout(self.timeouts.message)),
        }
    }

    /// Waits for the next decision, skipping keepalives. A control plane that went silent or
    /// whose stream broke is ejected: the calls after this one go elsewhere.
    async fn receive(&mut self) -> Result<FromControl, ControlError> {
        let received = self.receive_inner().await;
        if let Err(error @ (ControlError::Timeout(_) | ControlError::Unavailable(_))) = &received {
            self.endpoint.failed(&error.to_string());
        }
        received
    }

    async fn receive_inner(&mut self) -> Result<FromControl, ControlError> {
        let message_deadline = Instant::now() + self.timeouts.message;
        loop {
            let silence_deadline = Instant::now() + self.timeouts.inactivity;
            let deadline = silence_deadline.min(message_deadline);
            let waited = if deadline == message_deadline {
                self.timeouts.message
            } else {
                self.timeouts.inactivity
            };
            let Some(inbound) = self.inbound.as_mut() else {
                return Err(ControlError::Closed);
            };
            let next = timeout_at(deadline, inbound.message())
                .await
                .map_err(|_| ControlError::Timeout(waited))?;
            match next {
                Ok(Some(ControlPlaneMessage {
                    message: Some(FromControl::Keepalive(_)),
                })) => continue,
                Ok(Some(ControlPlaneMessage {
                    message: Some(message),
                })) => return Ok(message),
                Ok(Some(ControlPlaneMessage { message: None })) => {
                    return Err(ControlError::Protocol("empty message".into()));
                }
                Ok(None) => return Err(ControlError::Closed),
                Err(status) => return Err(ControlError::Unavailable(status.message().to_owned())),
            }
        }
    }

    /// The request decision; what it says of the chain steers the next calls (see
    /// [`ControlClient::send_before_decision`]).
    pub async fn request_decision(&mut self) -> Result<RequestDecision, ControlError> {
        match self.receive().await? {
            FromControl::RequestDecision(decision) => {
                self.requests_not_inspected
                    .store(decision.requests_not_inspected, Ordering::Relaxed);
                Ok(decision)
            }
            other => Err(unexpected("RequestDecision", &other)),
        }
    }

    pub async fn response_decision(&mut self) -> Result<ResponseDecision, ControlError> {
        match self.receive().await? {
            FromControl::ResponseDecision(decision) => Ok(decision),
            other => Err(unexpected("ResponseDecision", &other)),
        }
    }

    pub async fn chunk_reply(&mut self, seq: u64) -> Result<ChunkReply, ControlError> {
        match self.receive().await? {
            FromControl::ChunkReply(reply) if reply.seq == seq => Ok(reply),
            FromControl::ChunkReply(reply) => Err(ControlError::Protocol(format!(
                "ChunkReply for seq {} while waiting for {seq}",
                reply.seq
            ))),
            other => Err(unexpected("ChunkReply", &other)),
        }
    }

    /// Sends the call's last message in the background, half-closes the
    /// stream and lets the control plane finish its side. The client never
    /// waits for this.
    pub fn end(mut self, ending: Ending, times: Times) {
        self.close(ending, times);
    }

    /// [`CallSession::end`], from `&mut self` so that `Drop` ends the same way.
    fn close(&mut self, ending: Ending, times: Times) {
        self.ended = true;
        let end = ending.call_end(times);
        // The session's own sender goes with it; once this clone is dropped
        // too, the stream is half-closed.
        let outbound = self.outbound.clone();
        let inbound = self.inbound.take();
        let linger = self.timeouts.message;
        // `Drop` may run while the runtime winds down, where nothing can be spawned.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ending = async move {
            let message = DataPlaneMessage {
                message: Some(ToControl::CallEnd(end)),
            };
            // Best effort: a control plane that is gone cannot learn anything more.
            if !matches!(
                tokio::time::timeout(linger, outbound.send(message)).await,
                Ok(Ok(()))
            ) {
                return;
            }
            drop(outbound);
            // Keep the response stream open until the control plane closes
            // it; dropping it early would reset the HTTP/2 stream and could
            // discard the CallEnd still in flight.
            if let Some(mut inbound) = inbound {
                let _ = tokio::time::timeout(linger, async {
                    while let Ok(Some(_)) = inbound.message().await {}
                })
                .await;
            }
        };
        self.tasks.spawn_on(ending, &runtime);
    }
}

impl Drop for CallSession {
    fn drop(&mut self) {
        if !self.ended {
            // The handler was dropped mid-call: hyper does that when the
            // client disconnects. The end goes out like any other (in the
            // background, the stream kept open until it is delivered); the
            // durations are unknown here.
            let ending = Ending::new(CallOutcome::ClientDisconnected, "client disconnected");
            let unknown = Times {
                duration: Duration::ZERO,
                first_byte: Duration::ZERO,
                overhead: Duration::ZERO,
            };
            self.close(ending, unknown);
        }
    }
}

/// A duration in whole microseconds, as the protocol carries them.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn unexpected(wanted: &str, got: &FromControl) -> ControlError {
    let got = match got {
        FromControl::RequestDecision(_) => "RequestDecision",
        FromControl::ResponseDecision(_) => "ResponseDecision",
        FromControl::ChunkReply(_) => "ChunkReply",
        FromControl::Keepalive(_) => "Keepalive",
    };
    ControlError::Protocol(format!("expected {wanted}, got {got}"))
}
