//! The SSE decoder on any bytes, cut into frames anywhere: it never panics, never holds more
//! than its cap, and finds the same events however the body is cut (frames ignore event
//! boundaries on the wire).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use luthien_policy::sse::{SseDecoder, SseEvent};

const CAP: usize = 4096;

fn decode(frames: &[Bytes]) -> (Vec<Bytes>, bool) {
    let mut decoder = SseDecoder::new(CAP);
    let mut events: Vec<SseEvent> = Vec::new();
    let mut overflowed = false;
    for frame in frames {
        if decoder.push(frame.clone(), &mut events).is_err() {
            overflowed = true;
            break;
        }
        assert!(
            decoder.buffered_len() <= CAP,
            "the decoder holds past its cap"
        );
    }
    if !overflowed {
        events.extend(decoder.finish());
    }
    (events.iter().map(SseEvent::to_bytes).collect(), overflowed)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, body)) = data.split_first() else {
        return;
    };
    let whole = Bytes::copy_from_slice(body);
    // Cut points from the first byte: every `step`-th byte starts a frame.
    let step = usize::from(cuts.max(1));
    let frames: Vec<Bytes> = (0..whole.len())
        .step_by(step)
        .map(|start| whole.slice(start..(start + step).min(whole.len())))
        .collect();
    let (at_once, overflowed_at_once) = decode(&[whole.clone()]);
    let (cut, overflowed_cut) = decode(&frames);
    if !overflowed_at_once && !overflowed_cut {
        assert_eq!(at_once, cut, "the events depend on where the body was cut");
        // Nothing is lost or invented: the events are the body, in order.
        assert_eq!(at_once.concat(), body, "the events are not the body");
    }
    // Inspecting any event never panics.
    let mut decoder = SseDecoder::new(CAP);
    let mut events = Vec::new();
    let _ = decoder.push(whole, &mut events);
    for event in &events {
        let _ = (
            event.event_type(),
            event.data(),
            event.json(),
            event.is_done(),
        );
        let _ = event.is_server_sent_event();
    }
});
