//! Calls a data plane let through without policies — fail-open while no control plane could
//! take them — reported once a control plane is back (`RecordUnpolicedCalls`). Each is
//! recorded like any call, from its request to its response (a stream reconstructed from its
//! raw events), with the status `unpoliced` and the reason the policies did not run.

use std::sync::Arc;

use bytes::Bytes;
use luthien_api::Api;
use luthien_policy::sse::SseDecoder;
use luthien_proto::dataplane::v1::UnpolicedCall;

use crate::recorder::{CallRecorder, Recording};

/// Records `call`; `false` when it cannot be (no start or end, an unknown API).
pub fn record(recording: &Arc<Recording>, call: UnpolicedCall, max_event_bytes: usize) -> bool {
    let (Some(mut start), Some(end)) = (call.start, call.end) else {
        return false;
    };
    let Some(api) = Api::from_kind(start.api) else {
        return false;
    };
    let info = crate::service::call_info(&mut start, api);
    // No span of this plane ran the call: its trace is the data plane's.
    let trace_id = info.trace.trace_id().map(str::to_owned);
    let headers = Arc::clone(&info.headers);
    let mut recorder = CallRecorder::new(
        Arc::clone(recording),
        info,
        start.received_at_unix_micros,
        trace_id,
    );
    recorder.request(&start.body, None, &headers);
    let body = call.response_body;
    if start.stream && end.upstream_status / 100 == 2 {
        record_stream(&mut recorder, body, max_event_bytes);
    } else if !body.is_empty() {
        recorder.response(&body, None);
    }
    recorder.finish_unpoliced(&end, call.truncated);
    true
}

/// The raw events of a stream, as the client got them (no policy changed any).
fn record_stream(recorder: &mut CallRecorder, body: Bytes, max_event_bytes: usize) {
    let mut decoder = SseDecoder::new(max_event_bytes);
    let mut events = Vec::new();
    if let Err(error) = decoder.push(body, &mut events) {
        recorder.stream_truncated(error.to_string());
    }
    events.extend(decoder.finish());
    for event in &events {
        recorder.observed_event(event);
    }
}
