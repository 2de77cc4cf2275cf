//! The policy configuration parser on any text: an operator's file is parsed into a chain or
//! refused with an error, never a panic.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// Remote policies set up lazy channels, which need a runtime to exist.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _entered = runtime().enter();
    let _ = luthien_policy::config::parse_chain(text, "fuzz.yaml");
});
