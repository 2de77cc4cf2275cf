//! The batched background writer: the only way the request path reaches the
//! store.
//!
//! Logging must never slow a request, so [`EventSink::record`] is a
//! non-blocking `try_send` into a bounded queue: when the queue is full the
//! record is dropped and counted (and a warning logged, at most every few
//! seconds), never waited for. One task drains the queue into batches of up
//! to `batch_size` records or `flush_interval` worth, and writes each batch
//! in one transaction.
//!
//! When the database fails, the task keeps the batch and retries it with
//! exponential backoff while the queue keeps absorbing (and, once full,
//! dropping) new records; when the database comes back the queued records
//! land. A record the database refuses outright (bad data, not a bad
//! database) is isolated and dropped so it cannot block the queue forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::redact;
use super::{Record, Store, StoreError, StoreMetrics};

/// Shortest pause between two "records dropped" warnings.
const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

/// Tuning of the writer. The defaults suit one control plane at a few
/// thousand calls per second.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Records the queue holds before new ones are dropped.
    pub queue_capacity: usize,
    /// Most records written in one transaction.
    pub batch_size: usize,
    /// Longest a record waits for its batch to fill.
    pub flush_interval: Duration,
    /// First pause after a failed batch; doubles on each failure...
    pub retry_initial: Duration,
    /// ...up to this.
    pub retry_max: Duration,
    /// Cap on each payload value of a stored event (see
    /// [`redact::sanitize_payload`]); `None` keeps everything.
    pub max_payload_bytes: Option<usize>,
    /// Which bodies are stored (`--store-payloads`).
    pub stored_payloads: redact::StoredPayloads,
    /// Where batch latency is measured for `/metrics`.
    pub metrics: Arc<StoreMetrics>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            queue_capacity: 10_000,
            batch_size: 256,
            flush_interval: Duration::from_millis(50),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            max_payload_bytes: None,
            stored_payloads: redact::StoredPayloads::All,
            metrics: Arc::default(),
        }
    }
}

/// A snapshot of the writer's counters, for metrics and health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Records stored.
    pub written: u64,
    /// Records dropped because the queue was full or the writer stopped.
    pub dropped: u64,
    /// Records the database refused (bad data) and that were dropped.
    pub rejected: u64,
    /// Write attempts that failed (each is retried).
    pub failed_batches: u64,
    /// Batches stored.
    pub batches: u64,
    /// Records waiting in the queue.
    pub queue_depth: u64,
    /// Records in the batch being written (or retried).
    pub in_flight: u64,
    /// Time the last successful batch took to write, in microseconds.
    pub last_batch_micros: u64,
    /// While writes fail: the pause before the next attempt, in microseconds (0 while the store
    /// keeps up). It doubles with each failure, so it also says how long the store has been
    /// behind.
    pub retry_backoff_micros: u64,
}

#[derive(Debug)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    failed_batches: AtomicU64,
    batches: AtomicU64,
    in_flight: AtomicU64,
    last_batch_micros: AtomicU64,
    retry_backoff_micros: AtomicU64,
    /// Milliseconds since `origin` of the last drop warning, plus one (0:
    /// never warned).
    last_drop_warn: AtomicU64,
    origin: std::time::Instant,
}

impl Counters {
    fn note_drop(&self, reason: &'static str) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_drop_warn.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= DROP_WARN_EVERY.as_millis() as u64;
        // The compare-exchange lets exactly one of several racing callers
        // log; the others drop silently.
        if due
            && self
                .last_drop_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                dropped_total = dropped,
                reason,
                "event store queue cannot take more records; dropping them (calls are unaffected)"
            );
        }
    }
}

/// The request path's handle on the writer. Cheap to clone; never blocks.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<Record>,
    counters: Arc<Counters>,
}

impl EventSink {
    /// Queues `record` for storage, or drops and counts it if the queue is
    /// full or the writer has stopped. Never blocks, never awaits.
    pub fn record(&self, record: Record) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.counters.note_drop("queue full"),
            Err(TrySendError::Closed(_)) => self.counters.note_drop("writer stopped"),
        }
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// The writer's counters now.
    pub fn stats(&self) -> WriterStats {
        let c = &self.counters;
        WriterStats {
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            queue_depth: (self.tx.max_capacity() - self.tx.capacity()) as u64,
            in_flight: c.in_flight.load(Ordering::Relaxed),
            last_batch_micros: c.last_batch_micros.load(Ordering::Relaxed),
            retry_backoff_micros: c.retry_backoff_micros.load(Ordering::Relaxed),
        }
    }
}

/// How shutdown went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    pub stats: WriterStats,
    /// Records still queued or in flight when the deadline passed.
    pub lost: u64,
    /// Whether the deadline passed before everything was written.
    pub timed_out: bool,
}

/// Owns the writer task. Dropping it leaves the task running until `cancel`
/// fires and the queue is drained; call [`WriterHandle::shutdown`] for a
/// bounded stop.
#[derive(Debug)]
pub struct WriterHandle {
    sink: EventSink,
    drain: CancellationToken,
    abort: CancellationToken,
    task: JoinHandle<u64>,
}

impl WriterHandle {
    /// The writer's counters now.
    pub fn stats(&self) -> WriterStats {
        self.sink.stats()
    }

    /// Closes the queue (later records are dropped and counted), writes
    /// what it holds, and gives up after `deadline`, logging how many
    /// records were lost.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        self.drain.cancel();
        let mut task = self.task;
        let (lost, timed_out) = match tokio::time::timeout(deadline, &mut task).await {
            Ok(lost) => (lost.unwrap_or(0), false),
            Err(_) => {
                self.abort.cancel();
                (task.await.unwrap_or(0), true)
            }
        };
        ShutdownReport {
            stats: self.sink.stats(),
            lost,
            timed_out,
        }
    }
}

/// Starts the writer task on `store`. When `cancel` fires, the writer stops
/// taking records and drains the queue (bounded only by
/// [`WriterHandle::shutdown`]'s deadline).
pub fn spawn_writer(
    store: Store,
    options: WriterOptions,
    cancel: CancellationToken,
) -> (EventSink, WriterHandle) {
    let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
    let counters = Arc::new(Counters {
        written: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        failed_batches: AtomicU64::new(0),
        batches: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        last_batch_micros: AtomicU64::new(0),
        retry_backoff_micros: AtomicU64::new(0),
        last_drop_warn: AtomicU64::new(0),
        origin: std::time::Instant::now(),
    });
    let sink = EventSink { tx, counters };
    let drain = cancel.child_token();
    let abort = CancellationToken::new();
    let task = tokio::spawn(
        Writer {
            store,
            options,
            rx,
            counters: sink.counters.clone(),
            drain: drain.clone(),
            abort: abort.clone(),
            draining: false,
        }
        .run(),
    );
    let handle = WriterHandle {
        sink: sink.clone(),
        drain,
        abort,
        task,
    };
    (sink, handle)
}

struct Writer {
    store: Store,
    options: WriterOptions,
    rx: mpsc::Receiver<Record>,
    counters: Arc<Counters>,
    /// Draining: stop taking records, write the rest, end.
    drain: CancellationToken,
    /// Past the shutdown deadline: end now.
    abort: CancellationToken,
    draining: bool,
}

impl Writer {
    /// Returns how many records were lost (only on abort).
    async fn run(mut self) -> u64 {
        let batch_size = self.options.batch_size.max(1);
        let mut batch: Vec<Record> = Vec::with_capacity(batch_size);
        loop {
            if !self.fill(&mut batch, batch_size).await {
                break;
            }
            if !self.write_with_retry(&mut batch).await {
                break;
            }
        }
        // Ended by abort, or by a closed and empty queue (lost is then 0).
        self.rx.close();
        let mut lost = batch.len() as u64;
        while self.rx.try_recv().is_ok() {
            lost += 1;
        }
        if lost > 0 {
            tracing::error!(
                lost,
                "event writer stopped at its shutdown deadline; these records were not stored"
            );
        }
        lost
    }

    fn start_draining(&mut self) {
        if !self.draining {
            self.draining = true;
            // Senders now fail fast; what is queued can still be received.
            self.rx.close();
        }
    }

    fn take(&self, batch: &mut Vec<Record>, mut record: Record) {
        match &mut record {
            Record::Event(event) => {
                redact::sanitize_payload(
                    &mut event.payload,
                    self.options.max_payload_bytes,
                    self.options.stored_payloads,
                );
                crate::unchanged::fold(&mut event.payload);
            }
            Record::Call(call) => redact::sanitize_summary(call, self.options.stored_payloads),
        }
        batch.push(record);
    }

    /// Fills `batch` (empty on entry): waits for a first record, then takes
    /// more until the batch is full or `flush_interval` has passed. False
    /// when the writer must end (aborted, or queue closed and empty).
    async fn fill(&mut self, batch: &mut Vec<Record>, batch_size: usize) -> bool {
        let first = loop {
            tokio::select! {
                biased;
                () = self.abort.cancelled() => return false,
                () = self.drain.cancelled(), if !self.draining => self.start_draining(),
                record = self.rx.recv() => match record {
                    Some(record) => break record,
                    None => return false,
                },
            }
        };
        self.take(batch, first);
        let flush_at = Instant::now() + self.options.flush_interval;
        while batch.len() < batch_size {
            match self.rx.try_recv() {
                Ok(record) => {
                    self.take(batch, record);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                // Draining: write what there is now, no waiting.
                Err(TryRecvError::Empty) if self.draining => break,
                Err(TryRecvError::Empty) => {}
            }
            tokio::select! {
                biased;
                () = self.abort.cancelled() => return true,
                () = self.drain.cancelled(), if !self.draining => {
                    self.start_draining();
                }
                () = tokio::time::sleep_until(flush_at) => break,
                record = self.rx.recv() => match record {
                    Some(record) => self.take(batch, record),
                    None => break,
                },
            }
        }
        true
    }

    /// Writes `batch` until it is stored (true, batch emptied) or the
    /// writer is aborted (false, batch kept for the lost count).
    async fn write_with_retry(&mut self, batch: &mut Vec<Record>) -> bool {
        if self.abort.is_cancelled() {
            return false;
        }
        self.counters
            .in_flight
            .store(batch.len() as u64, Ordering::Relaxed);
        let mut backoff = self.options.retry_initial;
        loop {
            let started = Instant::now();
            let span = tracing::info_span!(
                "luthien.store.batch",
                luthien.store.backend = self.store.backend(),
                luthien.store.records = batch.len(),
                otel.status_code = tracing::field::Empty,
            );
            let result = tokio::select! {
                biased;
                () = self.abort.cancelled() => return false,
                result = write_isolating(&self.store, batch, &self.counters).instrument(span.clone()) => result,
            };
            if result.is_err() {
                span.record("otel.status_code", "ERROR");
            }
            drop(span);
            match result {
                Ok(()) => {
                    let elapsed = started.elapsed();
                    self.options
                        .metrics
                        .batch_latency
                        .observe(elapsed.as_secs_f64());
                    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                    self.counters
                        .last_batch_micros
                        .store(micros, Ordering::Relaxed);
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    self.counters.in_flight.store(0, Ordering::Relaxed);
                    self.counters
                        .retry_backoff_micros
                        .store(0, Ordering::Relaxed);
                    batch.clear();
                    return true;
                }
                Err(error) => {
                    self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                    let waits = u64::try_from(backoff.as_micros()).unwrap_or(u64::MAX);
                    self.counters
                        .retry_backoff_micros
                        .store(waits, Ordering::Relaxed);
                    tracing::warn!(
                        %error,
                        backend = self.store.backend(),
                        records = batch.len(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "event store write failed; keeping the batch and retrying"
                    );
                    tokio::select! {
                        biased;
                        () = self.abort.cancelled() => return false,
                        // Shutdown does not wait for the backoff to finish.
                        () = self.drain.cancelled(), if !self.draining => self.start_draining(),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff =
                        (backoff * 2).min(self.options.retry_max.max(self.options.retry_initial));
                }
            }
        }
    }
}

/// Writes the batch in one transaction. If the database refuses its data
/// (not a transient failure), writes its records one by one and drops the
/// refused ones, so one bad record cannot hold the rest back. On a
/// transient error the records not yet stored stay in `batch`.
async fn write_isolating(
    store: &Store,
    batch: &mut Vec<Record>,
    counters: &Counters,
) -> Result<(), StoreError> {
    let error = match store.write_batch(batch).await {
        Ok(()) => {
            counters
                .written
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        Err(error) if error.is_transient() => return Err(error),
        Err(error) => error,
    };
    tracing::warn!(
        %error,
        records = batch.len(),
        "event store refused a batch; writing its records one by one"
    );
    let mut done = 0;
    while let Some(record) = batch.get(done) {
        match store.write_batch(std::slice::from_ref(record)).await {
            Ok(()) => {
                counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) if error.is_transient() => {
                batch.drain(..done);
                return Err(error);
            }
            Err(error) => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    %error,
                    call_id = record.call_id(),
                    "event store refused a record; dropping it"
                );
            }
        }
        done += 1;
    }
    batch.clear();
    Ok(())
}
