//! Calls let through without policies — fail-open while no control plane could take them —
//! kept until a control plane can record them. These are exactly the calls an audit needs, so
//! they are not lost with the control plane: each call's start, end and response (bodies cut
//! at [`PAYLOAD_CAP`]) waits in a bounded in-memory spool (`--unpoliced-spool-bytes`), and is
//! handed to the first control plane serving again (`RecordUnpolicedCalls`), which records it
//! as `unpoliced`. A spool that is full drops the newest and counts it; a data plane that is
//! killed loses what it held (drained on SIGTERM, it tries one last delivery).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::BytesMut;
use luthien_proto::dataplane::v1::{CallEnd, CallStart, UnpolicedCall};

use crate::metrics::SpoolMetrics;

/// Of each body (request, response), at most this much is kept.
pub const PAYLOAD_CAP: usize = 256 * 1024;

/// What a batch sent to a control plane holds at most.
const BATCH_CALLS: usize = 100;
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// One unpoliced call while it runs: its start, and the response as it goes by.
#[derive(Debug)]
pub struct Unpoliced {
    start: CallStart,
    response: BytesMut,
    truncated: bool,
}

impl Unpoliced {
    pub fn new(mut start: CallStart) -> Self {
        let truncated = start.body.len() > PAYLOAD_CAP;
        if truncated {
            start.body = start.body.slice(..PAYLOAD_CAP);
        }
        Self {
            start,
            response: BytesMut::new(),
            truncated,
        }
    }

    /// Keeps `bytes` of the response, up to the cap.
    pub fn capture(&mut self, bytes: &[u8]) {
        let room = PAYLOAD_CAP.saturating_sub(self.response.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.response
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    pub fn finish(self, end: CallEnd) -> UnpolicedCall {
        UnpolicedCall {
            start: Some(self.start),
            end: Some(end),
            response_body: self.response.freeze(),
            truncated: self.truncated,
        }
    }
}

/// The calls waiting for a control plane.
pub struct Spool {
    inner: Mutex<Inner>,
    max_bytes: usize,
    metrics: SpoolMetrics,
}

#[derive(Default)]
struct Inner {
    calls: VecDeque<(UnpolicedCall, usize)>,
    bytes: usize,
}

/// What a spooled call costs against the cap: its bodies and a little for the rest.
fn weight(call: &UnpolicedCall) -> usize {
    let start = call.start.as_ref().map_or(0, |start| start.body.len());
    start + call.response_body.len() + 1024
}

impl Spool {
    pub fn new(max_bytes: usize, metrics: SpoolMetrics) -> Self {
        Self {
            inner: Mutex::default(),
            max_bytes,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Keeps `call` for a control plane, or drops and counts it when the spool is full.
    pub fn push(&self, call: UnpolicedCall) {
        let weight = weight(&call);
        let mut inner = self.lock();
        if inner.bytes + weight > self.max_bytes {
            drop(inner);
            self.metrics.dropped.inc();
            tracing::error!(
                call_id = call
                    .start
                    .as_ref()
                    .map_or("", |start| start.call_id.as_str()),
                "unpoliced-call spool full (--unpoliced-spool-bytes): this call will not be recorded"
            );
            return;
        }
        inner.bytes += weight;
        inner.calls.push_back((call, weight));
        drop(inner);
        self.metrics.spooled.inc();
    }

    pub fn is_empty(&self) -> bool {
        self.lock().calls.is_empty()
    }

    /// The oldest calls, up to a batch; they leave the spool until [`Spool::put_back`].
    pub fn take_batch(&self) -> Vec<UnpolicedCall> {
        let mut inner = self.lock();
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some((_, weight)) = inner.calls.front() {
            if batch.len() == BATCH_CALLS || (bytes > 0 && bytes + weight > BATCH_BYTES) {
                break;
            }
            let Some((call, weight)) = inner.calls.pop_front() else {
                break;
            };
            bytes += weight;
            inner.bytes -= weight;
            batch.push(call);
        }
        batch
    }

    /// A batch no control plane took goes back to the front, in order.
    pub fn put_back(&self, batch: Vec<UnpolicedCall>) {
        let mut inner = self.lock();
        for call in batch.into_iter().rev() {
            let weight = weight(&call);
            inner.bytes += weight;
            inner.calls.push_front((call, weight));
        }
    }

    /// A batch a control plane recorded.
    pub fn delivered(&self, count: usize) {
        self.metrics
            .recorded
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn call(id: &str, body: usize) -> UnpolicedCall {
        Unpoliced::new(CallStart {
            call_id: id.to_owned(),
            body: Bytes::from(vec![b'x'; body]),
            ..CallStart::default()
        })
        .finish(CallEnd::default())
    }

    #[test]
    fn bodies_are_capped_and_a_full_spool_drops_and_counts() {
        let mut unpoliced = Unpoliced::new(CallStart {
            body: Bytes::from(vec![b'x'; PAYLOAD_CAP + 1]),
            ..CallStart::default()
        });
        unpoliced.capture(&vec![b'y'; PAYLOAD_CAP + 5]);
        let spooled = unpoliced.finish(CallEnd::default());
        assert!(spooled.truncated);
        assert_eq!(spooled.start.unwrap().body.len(), PAYLOAD_CAP);
        assert_eq!(spooled.response_body.len(), PAYLOAD_CAP);

        let metrics = SpoolMetrics::default();
        let spool = Spool::new(3 * 1024 + 300, metrics.clone());
        for id in ["a", "b", "c", "d"] {
            spool.push(call(id, 100));
        }
        assert_eq!(metrics.spooled.get(), 3);
        assert_eq!(metrics.dropped.get(), 1);
        let batch = spool.take_batch();
        let ids: Vec<String> = batch
            .iter()
            .map(|call| call.start.clone().unwrap().call_id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(spool.is_empty());
        spool.put_back(batch);
        spool.push(call("e", 100));
        assert_eq!(
            metrics.dropped.get(),
            2,
            "put back, the spool is full again"
        );
        assert_eq!(spool.take_batch().len(), 3);
    }
}
