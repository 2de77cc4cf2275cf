//! Streamed responses: moves upstream frames to the client, through the
//! control plane when it transforms, beside it when it only observes.
//!
//! The pump is one task per streamed call. Its three queues (upstream socket,
//! control-plane stream, client body channel) are all bounded, so a slow
//! client or a slow control plane slows the upstream read instead of growing
//! memory.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use luthien_proto::dataplane::v1::data_plane_message::Message as ToControl;
use luthien_proto::dataplane::v1::{CallEnd, CallOutcome, StreamChunk, StreamEnd};
use tokio::sync::mpsc;

use crate::api::{Api, ApiError};
use crate::config::FailMode;
use crate::control::{CallSession, ControlError};
use crate::metrics::Metrics;
use crate::proxy::micros;

/// How the pump treats upstream frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamMode {
    /// Write to the client first, then send a copy to the control plane.
    Observe,
    /// The control plane decides what the client gets.
    Transform,
    /// No control plane (fail-open): frames go to the client untouched.
    PassThrough,
}

pub struct StreamPump {
    pub api: Api,
    pub session: Option<CallSession>,
    pub mode: StreamMode,
    pub fail_mode: FailMode,
    pub upstream: Incoming,
    pub upstream_timeout: Duration,
    pub client: mpsc::Sender<Result<Bytes, Infallible>>,
    pub received: Instant,
    pub upstream_wait: Duration,
    pub metrics: std::sync::Arc<Metrics>,
}

/// Why the pump stopped early.
enum Stop {
    ClientGone,
    /// The control plane failed and the fail mode is closed.
    ControlFailed(ControlError),
}

impl StreamPump {
    pub async fn run(mut self) {
        let mut timing = Timing::default();
        let outcome = self.pump(&mut timing).await;
        let (outcome, detail) = match outcome {
            Ok(Finish::Completed) => (CallOutcome::Completed, String::new()),
            Ok(Finish::EndedByControlPlane) => (
                CallOutcome::Completed,
                "control plane ended the stream".to_owned(),
            ),
            Ok(Finish::Upstream(outcome, detail)) => {
                let error = ApiError::new(self.api, StatusCode::BAD_GATEWAY, detail.clone());
                // The client already has a 200: tell it in-band.
                let _ = self.write_event(error.stream_event(), &mut timing).await;
                (outcome, detail)
            }
            Err(Stop::ClientGone) => (
                CallOutcome::ClientDisconnected,
                "client disconnected".to_owned(),
            ),
            Err(Stop::ControlFailed(error)) => {
                tracing::warn!(%error, "control plane failed mid-stream; fail-closed: ending the stream");
                let message = format!("policy control plane unavailable: {error}");
                let error_event = ApiError::new(self.api, StatusCode::SERVICE_UNAVAILABLE, message)
                    .stream_event();
                let _ = self.write_event(error_event, &mut timing).await;
                (error.outcome(), error.to_string())
            }
        };
        let api = self.api.metric_label();
        Metrics::observe(&self.metrics.overhead, api, self.overhead(&timing));
        if let Some(first_byte) = timing.first_byte {
            Metrics::observe(&self.metrics.first_chunk, api, first_byte);
        }
        if timing.chunks > 0 {
            self.metrics
                .chunks
                .get_or_create(&crate::metrics::ApiLabels { api })
                .inc_by(timing.chunks);
        }
        // Dropping `upstream` here (end of scope) cancels the upstream
        // request when it is still running.
        if let Some(session) = self.session.take() {
            let elapsed = self.received.elapsed();
            session.end(CallEnd {
                outcome: outcome.into(),
                detail,
                upstream_status: 200,
                time_to_first_byte_micros: timing.first_byte.map(micros).unwrap_or_default(),
                duration_micros: micros(elapsed),
                overhead_micros: micros(self.overhead(&timing)),
                ..CallEnd::default()
            });
        }
    }

    async fn pump(&mut self, timing: &mut Timing) -> Result<Finish, Stop> {
        let mut seq = 0u64;
        loop {
            let read_started = Instant::now();
            let frame = tokio::select! {
                biased;
                () = self.client.closed() => return Err(Stop::ClientGone),
                frame = tokio::time::timeout(self.upstream_timeout, self.upstream.frame()) => frame,
            };
            self.upstream_wait += read_started.elapsed();
            let data = match frame {
                Err(_) => {
                    return Ok(Finish::Upstream(
                        CallOutcome::UpstreamTimeout,
                        "upstream provider stopped sending".into(),
                    ));
                }
                Ok(None) => break,
                Ok(Some(Err(error))) => {
                    return Ok(Finish::Upstream(
                        CallOutcome::UpstreamUnreachable,
                        format!("upstream connection failed mid-stream: {error}"),
                    ));
                }
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => {
                        timing.chunks += 1;
                        data
                    }
                    // Trailers and empty frames carry nothing for the client.
                    _ => continue,
                },
            };
            match self.mode {
                StreamMode::PassThrough => self.write(data, timing).await?,
                StreamMode::Observe => {
                    self.write(data.clone(), timing).await?;
                    self.observe(ToControl::StreamChunk(StreamChunk { seq, data }))
                        .await?;
                }
                StreamMode::Transform => {
                    if self.transform(seq, data, timing).await? {
                        return Ok(Finish::EndedByControlPlane);
                    }
                }
            }
            seq += 1;
        }

        let end = ToControl::StreamEnd(StreamEnd { chunks: seq });
        match self.mode {
            StreamMode::PassThrough => {}
            StreamMode::Observe => self.observe(end).await?,
            StreamMode::Transform => {
                let reply = match self.session.as_mut() {
                    Some(session) => match session.send(end).await {
                        Ok(()) => session.chunk_reply(seq).await,
                        Err(error) => Err(error),
                    },
                    None => return Ok(Finish::Completed),
                };
                match reply {
                    Ok(reply) => {
                        for chunk in reply.chunks {
                            self.write(chunk, timing).await?;
                        }
                    }
                    // Whatever the control plane held is lost; the client
                    // still gets a clean end in fail-open mode.
                    Err(error) => self.control_failed(error)?,
                }
            }
        }
        Ok(Finish::Completed)
    }

    /// Sends one frame through the control plane. Returns true when the
    /// control plane ended the stream.
    async fn transform(
        &mut self,
        seq: u64,
        data: Bytes,
        timing: &mut Timing,
    ) -> Result<bool, Stop> {
        let Some(session) = self.session.as_mut() else {
            self.write(data, timing).await?;
            return Ok(false);
        };
        let chunk = ToControl::StreamChunk(StreamChunk {
            seq,
            data: data.clone(),
        });
        let reply = match session.send(chunk).await {
            Ok(()) => session.chunk_reply(seq).await,
            Err(error) => Err(error),
        };
        match reply {
            Ok(reply) => {
                for chunk in reply.chunks {
                    self.write(chunk, timing).await?;
                }
                if reply.pass_through_rest {
                    self.mode = StreamMode::Observe;
                }
                Ok(reply.end_stream)
            }
            Err(error) => {
                self.control_failed(error)?;
                // Fail-open: this frame was never answered, so it goes out
                // as upstream sent it.
                self.write(data, timing).await?;
                Ok(false)
            }
        }
    }

    async fn observe(&mut self, message: ToControl) -> Result<(), Stop> {
        let Some(session) = self.session.as_ref() else {
            return Ok(());
        };
        match session.send(message).await {
            Ok(()) => Ok(()),
            Err(error) => self.control_failed(error),
        }
    }

    /// Fail-open drops the control plane and carries on; fail-closed stops.
    fn control_failed(&mut self, error: ControlError) -> Result<(), Stop> {
        match self.fail_mode {
            FailMode::Closed => Err(Stop::ControlFailed(error)),
            FailMode::Open => {
                tracing::warn!(%error, "control plane failed mid-stream; fail-open: rest of the stream passes unmodified");
                if let Some(session) = self.session.take() {
                    session.end(CallEnd {
                        outcome: error.outcome().into(),
                        detail: error.to_string(),
                        ..CallEnd::default()
                    });
                }
                self.mode = StreamMode::PassThrough;
                Ok(())
            }
        }
    }

    async fn write(&mut self, data: Bytes, timing: &mut Timing) -> Result<(), Stop> {
        if data.is_empty() {
            return Ok(());
        }
        timing.at_event_boundary = data.ends_with(b"\n\n");
        timing
            .first_byte
            .get_or_insert_with(|| self.received.elapsed());
        let started = Instant::now();
        let sent = self.client.send(Ok(data)).await;
        timing.client_wait += started.elapsed();
        sent.map_err(|_| Stop::ClientGone)
    }

    /// Writes an event Luthien generated, first closing any event the
    /// upstream left half-written so the client's parser stays in sync.
    async fn write_event(&mut self, event: Bytes, timing: &mut Timing) -> Result<(), Stop> {
        if timing.first_byte.is_some() && !timing.at_event_boundary {
            self.write(Bytes::from_static(b"\n\n"), timing).await?;
        }
        self.write(event, timing).await
    }

    /// Time spent in Luthien: everything except waiting for upstream and
    /// waiting for the client to take bytes.
    fn overhead(&self, timing: &Timing) -> Duration {
        self.received
            .elapsed()
            .saturating_sub(self.upstream_wait)
            .saturating_sub(timing.client_wait)
    }
}

enum Finish {
    Completed,
    EndedByControlPlane,
    Upstream(CallOutcome, String),
}

#[derive(Default)]
struct Timing {
    first_byte: Option<Duration>,
    client_wait: Duration,
    at_event_boundary: bool,
    /// Upstream frames read.
    chunks: u64,
}
