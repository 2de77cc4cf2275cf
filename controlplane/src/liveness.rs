//! This control plane's heartbeat, and the sweep of calls that control planes which stopped
//! left in progress (see `luthien_store::liveness`).
//!
//! Every quarter of `--abandon-after` (at most 15 s), the control plane refreshes its row of
//! `control_planes`, then marks `abandoned` the calls still in progress that started more than
//! `--abandon-after` ago on a control plane not seen for as long. It runs on start-up too, so
//! a control plane restarted on a SQLite file sweeps what its previous life left.

use std::sync::Arc;
use std::time::Duration;

use luthien_store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Calls swept per statement batch; more are taken in the next batch at once.
const SWEEP_BATCH: u32 = 500;

/// The longest pause between two heartbeats.
const MAX_INTERVAL: Duration = Duration::from_secs(15);

pub fn spawn(
    store: Store,
    id: Arc<str>,
    abandon_after: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let interval = (abandon_after / 4).clamp(Duration::from_millis(100), MAX_INTERVAL);
    let started = luthien_api::time::unix_micros();
    let after_micros = i64::try_from(abandon_after.as_micros()).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        loop {
            let now = luthien_api::time::unix_micros();
            if let Err(error) = store.heartbeat(&id, started, now).await {
                tracing::warn!(%error, "cannot record this control plane's heartbeat; retrying");
            } else {
                sweep(&store, &id, now.saturating_sub(after_micros), now).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    })
}

async fn sweep(store: &Store, id: &str, cutoff: i64, now: i64) {
    loop {
        match store.sweep_abandoned(cutoff, now, id, SWEEP_BATCH).await {
            Ok(swept) => {
                for call in &swept {
                    tracing::warn!(
                        call_id = %call.call_id,
                        control_plane = call.control_plane_id.as_deref().unwrap_or("unknown"),
                        "call marked abandoned: the control plane recording it stopped before it ended"
                    );
                }
                let count = u64::try_from(swept.len()).unwrap_or(u64::MAX);
                crate::metrics::global().store.abandoned_swept.inc_by(count);
                if swept.len() < SWEEP_BATCH as usize {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot sweep abandoned calls; retrying at the next heartbeat");
                return;
            }
        }
    }
}
