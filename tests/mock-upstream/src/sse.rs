//! Streaming response bodies: one body frame per SSE event, optionally paced, and counted as
//! completed or abandoned.
//!
//! Whether a client (the proxy under test) let go of a stream early is observable only from
//! the body's side: hyper drops the body when the connection goes away, and polls it to the
//! end otherwise. A drop guard inside the body stream therefore tells the two apart.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use tokio::sync::watch;

/// How many streams ended, and how.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamCounts {
    /// Streams whose last event was handed to the connection.
    pub completed: usize,
    /// Streams dropped before their last event was handed to the connection.
    pub abandoned: usize,
}

/// Shared stream counters that tests can wait on.
#[derive(Debug)]
pub struct StreamStats {
    // A watch channel rather than atomics so that waiters are woken on every change.
    counts: watch::Sender<StreamCounts>,
}

impl Default for StreamStats {
    fn default() -> Self {
        Self {
            counts: watch::Sender::new(StreamCounts::default()),
        }
    }
}

impl StreamStats {
    /// The counts as of now.
    pub fn counts(&self) -> StreamCounts {
        *self.counts.borrow()
    }

    /// Waits until `done` holds for the counts, or `timeout` passes; says whether it held.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl FnMut(&StreamCounts) -> bool,
    ) -> bool {
        let mut receiver = self.counts.subscribe();
        matches!(
            tokio::time::timeout(timeout, receiver.wait_for(done)).await,
            Ok(Ok(_))
        )
    }

    fn record(&self, update: impl FnOnce(&mut StreamCounts)) {
        self.counts.send_modify(update);
    }
}

/// One named event: `event: KIND\ndata: JSON\n\n` (the Anthropic and Responses streams).
pub fn event(kind: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// A response body that sends `events` one frame each, sleeping `delay` between two events.
pub fn body(events: Vec<Bytes>, delay: Duration, stats: Arc<StreamStats>) -> Body {
    let events: BoxStream<'static, Bytes> = if delay.is_zero() {
        stream::iter(events).boxed()
    } else {
        stream::iter(events.into_iter().enumerate())
            .then(move |(index, event)| async move {
                if index > 0 {
                    tokio::time::sleep(delay).await;
                }
                event
            })
            .boxed()
    };
    Body::from_stream(Tracked {
        events,
        stats,
        finished: false,
    })
}

/// Passes the events through and records, when it ends or is dropped, whether it got to the
/// end.
struct Tracked {
    events: BoxStream<'static, Bytes>,
    stats: Arc<StreamStats>,
    finished: bool,
}

impl Stream for Tracked {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.events.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(event))),
            Poll::Ready(None) => {
                if !this.finished {
                    this.finished = true;
                    this.stats.record(|counts| counts.completed += 1);
                }
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.finished {
            self.stats.record(|counts| counts.abandoned += 1);
        }
    }
}
