//! The stored event decoder on any payload text: it decodes or refuses, never panics, and
//! what it decodes encodes back to the same event (what the writer stores, the reader reads).

#![no_main]

use libfuzzer_sys::fuzz_target;
use luthien_store::events::EventPayload;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<EventPayload>(data) else {
        return;
    };
    let encoded = serde_json::to_vec(&payload).expect("a decoded event encodes");
    let again: EventPayload = serde_json::from_slice(&encoded).expect("an encoded event decodes");
    assert_eq!(
        payload, again,
        "the event changed through the store's encoding"
    );
});
