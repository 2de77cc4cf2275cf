//! Both stream reconstructions on any event stream: decoded from any bytes, each event pushed
//! as the control plane pushes it, then the response, usage and finish reasons read. Never
//! panics, whatever the upstream sent.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use luthien_api::Api;
use luthien_policy::reconstruct::Reconstructor;
use luthien_policy::sse::SseDecoder;

fuzz_target!(|data: &[u8]| {
    let mut decoder = SseDecoder::new(1 << 20);
    let mut events = Vec::new();
    let _ = decoder.push(Bytes::copy_from_slice(data), &mut events);
    events.extend(decoder.finish());
    for api in Api::ALL {
        let mut reconstructor = Reconstructor::new(api);
        for event in &events {
            reconstructor.push(event);
        }
        let _ = reconstructor.finish();
        let _ = reconstructor.usage();
        let _ = reconstructor.finish_reasons();
        assert!(reconstructor.events_seen() >= reconstructor.skipped());
    }
});
