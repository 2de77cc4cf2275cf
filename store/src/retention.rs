//! Retention: a background task that deletes calls older than a configured
//! age, with all their events.
//!
//! Deleting a month of calls in one statement would hold locks on every
//! row for as long as it takes (stalling the writer, whose queue then
//! overflows and drops records), and bloat the indexes all at once. So each
//! run deletes in small batches, one short transaction each
//! ([`Store::delete_calls_before`]), with a pause between batches in which
//! the writer gets the lock, until a batch comes back short.
//!
//! Several control planes sharing one PostgreSQL may all run it: batches
//! lock the calls they pick with `FOR UPDATE SKIP LOCKED`, so concurrent
//! runs take disjoint calls and never wait for, or fail on, each other. A
//! failed run (database down) is logged and counted; the next interval
//! tries again. Nothing here can stop the control plane.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Purged, Store, StoreError, StoreMetrics};

/// When and how much retention deletes.
#[derive(Clone, Debug)]
pub struct RetentionOptions {
    /// Calls created longer ago than this are deleted, with their events.
    pub max_age: Duration,
    /// Time from the end of one run to the start of the next.
    pub interval: Duration,
    /// Most calls deleted in one transaction.
    pub batch_size: u32,
    /// Pause between two batches of a run, in which the writer gets the
    /// lock (SQLite) and the rows (PostgreSQL).
    pub pause: Duration,
    /// Where deletions and failures are counted for `/metrics`.
    pub metrics: Arc<StoreMetrics>,
}

impl RetentionOptions {
    /// Calls per batch: with a handful of events each, a few thousand rows
    /// per transaction, a few milliseconds of lock.
    pub const DEFAULT_BATCH_SIZE: u32 = 500;
    pub const DEFAULT_PAUSE: Duration = Duration::from_millis(50);

    /// Deletes calls older than `max_age`, every `interval`, in default
    /// batches.
    pub fn new(max_age: Duration, interval: Duration) -> RetentionOptions {
        RetentionOptions {
            max_age,
            interval,
            batch_size: Self::DEFAULT_BATCH_SIZE,
            pause: Self::DEFAULT_PAUSE,
            metrics: Arc::default(),
        }
    }
}

/// A snapshot of what retention has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionStats {
    /// Calls deleted.
    pub deleted_calls: u64,
    /// Events deleted with them.
    pub deleted_events: u64,
    /// Runs that ended because no old call was left (or on shutdown).
    pub runs: u64,
    /// Runs cut short by a database error (retried at the next interval).
    pub failed_runs: u64,
}

#[derive(Debug, Default)]
struct Counters {
    deleted_calls: AtomicU64,
    deleted_events: AtomicU64,
    runs: AtomicU64,
    failed_runs: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> RetentionStats {
        RetentionStats {
            deleted_calls: self.deleted_calls.load(Ordering::Relaxed),
            deleted_events: self.deleted_events.load(Ordering::Relaxed),
            runs: self.runs.load(Ordering::Relaxed),
            failed_runs: self.failed_runs.load(Ordering::Relaxed),
        }
    }

    fn add(&self, purged: Purged) {
        self.deleted_calls
            .fetch_add(purged.calls, Ordering::Relaxed);
        self.deleted_events
            .fetch_add(purged.events, Ordering::Relaxed);
    }
}

/// Owns the retention task.
#[derive(Debug)]
pub struct RetentionHandle {
    cancel: CancellationToken,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl RetentionHandle {
    /// What retention has done so far.
    pub fn stats(&self) -> RetentionStats {
        self.counters.snapshot()
    }

    /// Stops the task and waits for it. A batch in flight is abandoned
    /// (its transaction rolls back), so this returns promptly.
    pub async fn shutdown(self) -> RetentionStats {
        self.cancel.cancel();
        // The task only ends by returning; a JoinError would be a panic,
        // which the task's code does not do.
        let _ = self.task.await;
        self.counters.snapshot()
    }
}

/// Starts the retention task on `store`: a first run at once, then one
/// every `options.interval`, until `cancel` fires (or
/// [`RetentionHandle::shutdown`]).
pub fn spawn_retention(
    store: Store,
    options: RetentionOptions,
    cancel: CancellationToken,
) -> RetentionHandle {
    let cancel = cancel.child_token();
    let counters = Arc::new(Counters::default());
    let task = tokio::spawn(run(store, options, counters.clone(), cancel.clone()));
    RetentionHandle {
        cancel,
        counters,
        task,
    }
}

async fn run(
    store: Store,
    options: RetentionOptions,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    loop {
        let started = Instant::now();
        let cutoff = cutoff_micros(luthien_api::time::unix_micros(), options.max_age);
        let outcome = purge(&store, cutoff, &options, &counters, &cancel).await;
        let took_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok((purged, batches)) => {
                counters.runs.fetch_add(1, Ordering::Relaxed);
                if purged.calls > 0 || purged.events > 0 {
                    tracing::info!(
                        backend = store.backend(),
                        deleted_calls = purged.calls,
                        deleted_events = purged.events,
                        batches,
                        older_than = %humantime::format_duration(options.max_age),
                        took_ms,
                        "event store retention deleted old calls"
                    );
                }
            }
            Err((purged, error)) => {
                counters.failed_runs.fetch_add(1, Ordering::Relaxed);
                options.metrics.retention_failures.inc();
                tracing::warn!(
                    %error,
                    backend = store.backend(),
                    deleted_calls = purged.calls,
                    deleted_events = purged.events,
                    took_ms,
                    retry_in = %humantime::format_duration(options.interval),
                    "event store retention failed; retrying at the next interval"
                );
            }
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(options.interval) => {}
        }
    }
}

/// One run: batches until one comes back short (nothing older left) or
/// `cancel` fires. Returns what was deleted and in how many batches, or
/// what was deleted before the error.
async fn purge(
    store: &Store,
    cutoff: i64,
    options: &RetentionOptions,
    counters: &Counters,
    cancel: &CancellationToken,
) -> Result<(Purged, u64), (Purged, StoreError)> {
    let batch = options.batch_size.max(1);
    let mut total = Purged::default();
    let mut batches = 0;
    loop {
        let result = tokio::select! {
            biased;
            // Dropping the delete mid-flight rolls its transaction back.
            () = cancel.cancelled() => return Ok((total, batches)),
            result = store.delete_calls_before(cutoff, batch) => result,
        };
        let purged = result.map_err(|error| (total, error))?;
        batches += 1;
        counters.add(purged);
        options.metrics.retention_deleted_calls.inc_by(purged.calls);
        options
            .metrics
            .retention_deleted_events
            .inc_by(purged.events);
        total.calls += purged.calls;
        total.events += purged.events;
        if purged.calls < u64::from(batch) {
            return Ok((total, batches));
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok((total, batches)),
            () = tokio::time::sleep(options.pause) => {}
        }
    }
}

/// Unix microseconds `max_age` before `now` (saturating: an age beyond the
/// epoch deletes nothing).
fn cutoff_micros(now: i64, max_age: Duration) -> i64 {
    now.saturating_sub(i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_is_max_age_before_now_and_saturates() {
        assert_eq!(cutoff_micros(10_000_000, Duration::from_secs(3)), 7_000_000);
        assert_eq!(cutoff_micros(5, Duration::from_micros(10)), -5);
        assert_eq!(cutoff_micros(5, Duration::MAX), 5 - i64::MAX);
        assert_eq!(
            cutoff_micros(i64::MIN + 1, Duration::from_secs(1)),
            i64::MIN
        );
    }
}
