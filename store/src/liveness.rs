//! Which control planes are alive, and the calls a dead one left in progress.
//!
//! Each control plane writes its instance id on the calls it records and refreshes its row of
//! `control_planes` (a heartbeat, [`Store::heartbeat`](crate::Store::heartbeat)). A call still
//! `in_progress` that started before a cutoff, and whose control plane has not been seen since
//! that cutoff, can no longer end: [`Store::sweep_abandoned`](crate::Store::sweep_abandoned)
//! marks it `abandoned` and adds a response event saying why, so the debug API shows it. Any
//! control plane on the same database sweeps; the update only takes a call still in progress,
//! so two sweepers never both mark one.

use crate::events::{CallEvent, CallStatus, EventPayload, SCHEMA_VERSION};

/// A call the sweep marked `abandoned`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swept {
    pub call_id: String,
    /// The control plane that had recorded it (`None` for calls recorded before control
    /// planes wrote their id).
    pub control_plane_id: Option<String>,
}

/// Why a swept call ended, as its response event says.
pub(crate) fn detail(control_plane_id: Option<&str>, sweeper: &str) -> String {
    let owner = control_plane_id.map_or_else(
        || "the control plane that recorded this call".to_owned(),
        |id| format!("control plane {id}, which recorded this call,"),
    );
    format!(
        "{owner} stopped before the call ended (no heartbeat since); marked abandoned by control plane {sweeper}"
    )
}

/// The response event recording the sweep.
pub(crate) fn abandoned_event(
    call_id: &str,
    sequence: u32,
    now_micros: i64,
    detail: String,
) -> CallEvent {
    CallEvent {
        call_id: call_id.to_owned(),
        sequence,
        timestamp_micros: now_micros,
        schema_version: SCHEMA_VERSION,
        payload: EventPayload::Response {
            original: None,
            final_: None,
            status: CallStatus::Abandoned,
            upstream_status: None,
            detail: Some(detail),
            chunks_received: 0,
            chunks_sent: 0,
            time_to_first_chunk_ms: None,
            duration_ms: None,
            overhead_ms: None,
            usage: Default::default(),
        },
    }
}
