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
use luthien_proto::dataplane::v1::{CallOutcome, StreamChunk, StreamEnd};
use tokio::sync::mpsc;

use crate::api::{Api, ApiError};
use crate::control::{CallSession, ControlError, Ending, Times};
use crate::fail_mode::{FailMode, Ruling, Stage};
use crate::metrics::Metrics;
use crate::spool::{Spool, Unpoliced};

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
    /// The call's place among `--max-concurrent-calls`, held until the stream ends.
    pub slot: Option<crate::edge::CallSlot>,
    pub api: Api,
    /// The upstream's (2xx) status, for the call's end.
    pub status: u16,
    pub session: Option<CallSession>,
    /// A call no control plane took: its stream is kept (capped) for the spool.
    pub unpoliced: Option<Unpoliced>,
    pub spool: std::sync::Arc<Spool>,
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
    /// The control plane failed and the fail mode refused the rest of the call.
    Refused {
        refusal: ApiError,
        ending: Ending,
    },
}

impl StreamPump {
    pub async fn run(mut self) {
        let mut timing = Timing::default();
        let ending = match self.pump(&mut timing).await {
            Ok(Finish::Completed) => Ending::completed(self.status),
            Ok(Finish::EndedByControlPlane) => Ending {
                detail: "control plane ended the stream".to_owned(),
                ..Ending::completed(self.status)
            },
            Ok(Finish::Upstream(outcome, detail)) => {
                let error = ApiError::new(self.api, StatusCode::BAD_GATEWAY, detail.clone());
                // The client already has a 200: tell it in-band.
                let _ = self.write_event(error.stream_event(), &mut timing).await;
                Ending::new(outcome, detail)
            }
            Err(Stop::ClientGone) => {
                Ending::new(CallOutcome::ClientDisconnected, "client disconnected")
            }
            Err(Stop::Refused { refusal, ending }) => {
                let _ = self.write_event(refusal.stream_event(), &mut timing).await;
                ending
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
        self.end(ending, &timing);
        // The call is over: its slot goes to the next one.
        drop(self.slot.take());
    }

    /// Ends the control-plane session, if the stream still has one; the one place it happens
    /// once the pump has the call.
    fn end(&mut self, mut ending: Ending, timing: &Timing) {
        ending.upstream_status = self.status;
        let times = Times {
            duration: self.received.elapsed(),
            first_byte: timing.first_byte.unwrap_or_default(),
            overhead: self.overhead(timing),
        };
        if let Some(session) = self.session.take() {
            session.end(ending, times);
        } else if let Some(unpoliced) = self.unpoliced.take() {
            self.spool.push(unpoliced.finish(ending.call_end(times)));
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
                StreamMode::PassThrough => {
                    if let Some(unpoliced) = self.unpoliced.as_mut() {
                        unpoliced.capture(&data);
                    }
                    self.write(data, timing).await?
                }
                StreamMode::Observe => {
                    self.write(data.clone(), timing).await?;
                    self.observe(ToControl::StreamChunk(StreamChunk { seq, data }), timing)
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
            StreamMode::Observe => self.observe(end, timing).await?,
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
                    Err(error) => self.control_failed(error, timing)?,
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
                self.control_failed(error, timing)?;
                // Fail-open: this frame was never answered, so it goes out
                // as upstream sent it.
                self.write(data, timing).await?;
                Ok(false)
            }
        }
    }

    async fn observe(&mut self, message: ToControl, timing: &Timing) -> Result<(), Stop> {
        let Some(session) = self.session.as_ref() else {
            return Ok(());
        };
        match session.send(message).await {
            Ok(()) => Ok(()),
            Err(error) => self.control_failed(error, timing),
        }
    }

    /// The fail mode rules: refused, the stream ends with an in-band error; allowed, the
    /// session ends and the rest of the stream passes unmodified.
    fn control_failed(&mut self, error: ControlError, timing: &Timing) -> Result<(), Stop> {
        let ending = error.ending();
        match self.fail_mode.rule(self.api, Stage::MidStream, &error) {
            Ruling::Refuse(refusal) => Err(Stop::Refused { refusal, ending }),
            Ruling::Proceed => {
                self.end(ending, timing);
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
