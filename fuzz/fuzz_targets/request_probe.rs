//! The data plane's request probe on any body: the UTF-8 and depth scan, then the JSON probe.
//! Never panics; what it accepts is a JSON object, and the only thing a full parse may refuse
//! in it is a number beyond what a double holds (valid JSON, which the providers take; the
//! control plane records such a body as text).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(probe) = luthien_dataplane::probe::probe(data) {
        match serde_json::from_slice::<serde_json::Value>(data) {
            Ok(value) => assert!(value.is_object(), "an accepted body is an object"),
            Err(error) => assert!(
                error.to_string().starts_with("number out of range"),
                "an accepted body is valid JSON: {error}"
            ),
        }
        let _ = (probe.model(), probe.stream(), probe.max_tokens());
    }
});
