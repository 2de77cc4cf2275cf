//! The event store: one `calls` row per call (the request log) and the
//! call's events (`conversation_events`), in PostgreSQL or SQLite.
//!
//! [`Store`] is both the writer side ([`Store::write_batch`]) and the reader
//! side ([`Store::get_call`], [`Store::list_calls`]), on the shared types of
//! [`crate::events`]: one type doing both is how writer and reader stay in
//! step (the previous system's diff endpoint read event types its writer
//! never wrote, and mocked-row tests kept that hidden for months).
//!
//! The request path never talks to the database: it hands [`Record`]s to an
//! [`EventSink`], which queues them (bounded, counting drops) for the batched
//! background writer of [`writer`]. [`redact`] strips credentials and caps
//! payload sizes before anything is stored. [`retention`] deletes calls older
//! than the configured age, in small batches, when retention is set.
//!
//! Schema: `migrations/{postgres,sqlite}/`, embedded at compile time and run
//! by [`Store::open`] when [`StoreOptions::migrate`] is set.

pub mod events;

mod body;

mod error;
pub mod liveness;
mod metrics;
mod postgres;
mod query;
pub mod redact;
pub mod retention;
mod sqlite;
pub mod unchanged;
pub mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use crate::events::{CallEvent, CallSummary};

pub use error::StoreError;
pub use liveness::Swept;
pub use metrics::StoreMetrics;
pub use query::{CallFilter, CallPage, DEFAULT_LIMIT, MAX_LIMIT};
pub use retention::{RetentionHandle, RetentionOptions, RetentionStats, spawn_retention};
pub use writer::{
    EventSink, ShutdownReport, WriterHandle, WriterOptions, WriterStats, spawn_writer,
};

/// One thing to store.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// Upsert of the call's row: typically once at start (`in_progress`)
    /// and once at completion; the later record wins while the stored call is
    /// in progress. A call that has ended is never rewritten: a stream that
    /// reuses its id (a forged or replayed `CallStart`) cannot change history.
    Call(CallSummary),
    /// One event; storing the same (call_id, sequence) twice keeps the first.
    Event(CallEvent),
}

impl Record {
    pub fn call_id(&self) -> &str {
        match self {
            Record::Call(call) => &call.call_id,
            Record::Event(event) => &event.call_id,
        }
    }
}

/// What one retention batch ([`Store::delete_calls_before`]) deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// `calls` rows.
    pub calls: u64,
    /// `conversation_events` rows of those calls.
    pub events: u64,
}

/// How [`Store::open`] connects.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Run the embedded migrations on open (off when an operator migrates
    /// separately).
    pub migrate: bool,
    /// Pool size. SQLite in-memory databases always use one connection.
    pub max_connections: u32,
    /// Longest wait for a pooled connection before an operation fails (and
    /// the writer retries later).
    pub acquire_timeout: Duration,
    /// Longest wait for SQLite's write lock held by another connection.
    pub sqlite_busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            migrate: true,
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            sqlite_busy_timeout: Duration::from_secs(5),
        }
    }
}

/// An open event store. Cloning is cheap (pools are shared).
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Store {
    /// Opens `sqlite://PATH` (the file and its folder are created when
    /// missing), `sqlite::memory:`, or `postgres://…` / `postgresql://…`,
    /// and runs the migrations when `options.migrate` is set.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Ok(Store::Sqlite(sqlite::open(url, &options).await?)),
            "postgres" | "postgresql" => Ok(Store::Postgres(postgres::open(url, &options).await?)),
            _ => Err(StoreError::UnsupportedScheme {
                scheme: scheme.chars().take(32).collect(),
            }),
        }
    }

    /// `postgres` or `sqlite`, for logs and metrics labels.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Writes `batch` in one transaction: all of it or none of it. Call
    /// records are upserts applied in order; events already stored (same
    /// call_id and sequence) are skipped, so retrying a batch is safe.
    pub async fn write_batch(&self, batch: &[Record]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        match self {
            Store::Postgres(pool) => postgres::write_batch(pool, batch).await,
            Store::Sqlite(pool) => sqlite::write_batch(pool, batch).await,
        }
    }

    /// The call's row and its events ordered by sequence; `None` when the
    /// call has no row (unknown, or its row was dropped under load).
    pub async fn get_call(
        &self,
        call_id: &str,
    ) -> Result<Option<(CallSummary, Vec<CallEvent>)>, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::get_call(pool, call_id).await,
            Store::Sqlite(pool) => sqlite::get_call(pool, call_id).await,
        }
    }

    /// One page of calls matching `filter`, newest first.
    pub async fn list_calls(&self, filter: &CallFilter) -> Result<CallPage, StoreError> {
        match self {
            Store::Postgres(pool) => postgres::list_calls(pool, filter).await,
            Store::Sqlite(pool) => sqlite::list_calls(pool, filter).await,
        }
    }

    /// Deletes up to `batch` of the oldest calls created before
    /// `cutoff_micros` (unix microseconds) together with all their events,
    /// in one transaction, and says how many rows went. Fewer than `batch`
    /// calls deleted means none older is left (except calls another
    /// control plane is deleting right now, on PostgreSQL). Safe to run
    /// from several control planes on one database at once; a `batch` of 0
    /// counts as 1.
    ///
    /// Events whose call row was never stored (the writer dropped it under
    /// load) have no call to be found by, and are not deleted.
    pub async fn delete_calls_before(
        &self,
        cutoff_micros: i64,
        batch: u32,
    ) -> Result<Purged, StoreError> {
        match self {
            Store::Postgres(pool) => {
                postgres::delete_calls_before(pool, cutoff_micros, batch).await
            }
            Store::Sqlite(pool) => sqlite::delete_calls_before(pool, cutoff_micros, batch).await,
        }
    }

    /// Records that control plane `id` (started at `started_micros`) is alive at `now_micros`.
    pub async fn heartbeat(
        &self,
        id: &str,
        started_micros: i64,
        now_micros: i64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Postgres(pool) => {
                postgres::heartbeat(pool, id, started_micros, now_micros).await
            }
            Store::Sqlite(pool) => sqlite::heartbeat(pool, id, started_micros, now_micros).await,
        }
    }

    /// Marks `abandoned` up to `limit` calls still in progress that started before
    /// `cutoff_micros` and whose control plane has not been seen since (see [`liveness`]),
    /// each with a response event naming `sweeper`; returns them.
    pub async fn sweep_abandoned(
        &self,
        cutoff_micros: i64,
        now_micros: i64,
        sweeper: &str,
        limit: u32,
    ) -> Result<Vec<Swept>, StoreError> {
        match self {
            Store::Postgres(pool) => {
                postgres::sweep_abandoned(pool, cutoff_micros, now_micros, sweeper, limit).await
            }
            Store::Sqlite(pool) => {
                sqlite::sweep_abandoned(pool, cutoff_micros, now_micros, sweeper, limit).await
            }
        }
    }

    /// Whether the store can serve: reachable, and migrated (the `calls` table answers).
    pub async fn check(&self) -> Result<(), StoreError> {
        const PROBE: &str = "SELECT 1 FROM calls LIMIT 1";
        match self {
            Store::Postgres(pool) => sqlx::query(PROBE).fetch_optional(pool).await.map(drop)?,
            Store::Sqlite(pool) => sqlx::query(PROBE).fetch_optional(pool).await.map(drop)?,
        }
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match self {
            Store::Postgres(pool) => pool.close().await,
            Store::Sqlite(pool) => pool.close().await,
        }
    }
}

/// The batch's call rows, one per call (its last record) with the earliest
/// `created_at` seen for it, in first-seen order: applying them equals
/// applying every record in order, in one statement per call.
fn latest_calls(batch: &[Record]) -> Vec<(&CallSummary, i64)> {
    let mut rows: Vec<(&CallSummary, i64)> = Vec::new();
    let mut position: HashMap<&str, usize> = HashMap::new();
    for record in batch {
        let Record::Call(call) = record else { continue };
        match position
            .get(call.call_id.as_str())
            .and_then(|&i| rows.get_mut(i))
        {
            Some(row) => *row = (call, row.1.min(call.created_at_micros)),
            None => {
                position.insert(&call.call_id, rows.len());
                rows.push((call, call.created_at_micros));
            }
        }
    }
    rows
}

/// The payload as stored: the tagged JSON object of
/// [`EventPayload`](crate::events::EventPayload).
fn encode_payload(event: &CallEvent) -> Result<String, StoreError> {
    serde_json::to_string(&event.payload).map_err(|e| StoreError::Encode {
        what: format!("event {} #{}", event.call_id, event.sequence),
        detail: e.to_string(),
    })
}
