//! The debug web UI: the diff viewer and the live activity monitor.
//!
//! Not built yet; the control plane will serve these pages on its HTTP port
//! once the debug API exists. The crate exists so the workspace layout shows
//! where the UI lives.
