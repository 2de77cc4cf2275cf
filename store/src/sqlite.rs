//! SQLite backend: one file in WAL mode (readers never wait for the writer),
//! timestamps as integer unix microseconds, payloads as JSON text. A batch
//! is one `BEGIN IMMEDIATE` transaction of a few multi-row statements; the
//! commit is its only disk sync.

use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use super::query::{self, Cursor, Dialect, EventRow, SummaryRow};
use super::{CallFilter, CallPage, Purged, Record, StoreError, StoreOptions, encode_payload};
use crate::events::{CallEvent, CallSummary, SCHEMA_VERSION};
use crate::liveness::{self, Swept};

const SUMMARY_COLUMNS: &str = "call_id, created_at, completed_at, api, model, stream, status, \
    duration_ms, time_to_first_chunk_ms, input_tokens, output_tokens, session_id, trace_id, \
    policy_changed, schema_version, control_plane_id, preview, policies";

const DIALECT: Dialect = Dialect {
    time_open: "",
    time_close: "",
    position_fn: "instr",
};

pub(super) async fn open(url: &str, options: &StoreOptions) -> Result<SqlitePool, StoreError> {
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let mut connect = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .busy_timeout(options.sqlite_busy_timeout);
    let mut pool = SqlitePoolOptions::new().acquire_timeout(options.acquire_timeout);
    if in_memory {
        // An in-memory database lives as long as its last connection: keep
        // exactly one, forever.
        pool = pool
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    } else {
        if let Some(parent) = connect.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
        }
        // WAL: the debug API reads while the writer writes. NORMAL sync in
        // WAL mode can lose the last commits on power loss, never corrupt
        // the file; acceptable for a call log, and much faster per batch.
        connect = connect
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        pool = pool.max_connections(options.max_connections);
    }
    let pool = pool.connect_with(connect).await?;
    if options.migrate {
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
    }
    Ok(pool)
}

pub(super) async fn write_batch(pool: &SqlitePool, batch: &[Record]) -> Result<(), StoreError> {
    let calls = super::latest_calls(batch);
    let events: Vec<&CallEvent> = batch
        .iter()
        .filter_map(|record| match record {
            Record::Event(event) => Some(event),
            Record::Call(_) => None,
        })
        .collect();
    // IMMEDIATE takes the write lock up front, so a busy database makes us
    // wait (busy_timeout) at BEGIN instead of failing halfway through.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for chunk in chunks(&calls) {
        upsert_calls(chunk).execute(&mut *tx).await?;
    }
    for chunk in chunks(&events) {
        insert_events(chunk)?.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Rows per multi-row statement. Each statement is a round trip to the
/// connection's worker thread, which costs more than SQLite's own work, so
/// rows go in large statements; the sizes are few and fixed so the prepared
/// statements stay cached (a size per batch length would not).
const CHUNK_SIZES: [usize; 3] = [64, 8, 1];

fn chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = CHUNK_SIZES
            .iter()
            .copied()
            .find(|&size| size <= rows.len())?;
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// `INSERT … VALUES (?, …), (?, …)` for `rows` rows of `columns` values.
fn values_sql(head: &str, rows: usize, columns: usize, tail: &str) -> sqlx::AssertSqlSafe<String> {
    let row = format!("({})", vec!["?"; columns].join(", "));
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * (row.len() + 2));
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&row);
    }
    sql.push(' ');
    sql.push_str(tail);
    sqlx::AssertSqlSafe(sql)
}

type SqliteQuery = sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments>;

/// `created_at` keeps the earliest value so a call does not move in the
/// list when it completes; every other column takes the later record, as
/// long as the stored call is in progress (see [`Record::Call`]).
fn upsert_calls(calls: &[(&CallSummary, i64)]) -> SqliteQuery {
    let sql = values_sql(
        "INSERT INTO calls (call_id, created_at, completed_at, api, model, stream, status, \
             duration_ms, time_to_first_chunk_ms, input_tokens, output_tokens, session_id, \
             trace_id, policy_changed, schema_version, control_plane_id, preview, policies)",
        calls.len(),
        18,
        "ON CONFLICT (call_id) DO UPDATE SET \
             created_at = min(calls.created_at, excluded.created_at), \
             completed_at = excluded.completed_at, api = excluded.api, \
             model = excluded.model, stream = excluded.stream, status = excluded.status, \
             duration_ms = excluded.duration_ms, \
             time_to_first_chunk_ms = excluded.time_to_first_chunk_ms, \
             input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, \
             session_id = excluded.session_id, trace_id = excluded.trace_id, \
             policy_changed = excluded.policy_changed, schema_version = excluded.schema_version, \
             control_plane_id = coalesce(excluded.control_plane_id, calls.control_plane_id), \
             preview = excluded.preview, policies = excluded.policies \
         WHERE calls.status = 'in_progress'",
    );
    let mut query = sqlx::query(sql);
    for (call, earliest_created_micros) in calls {
        query = query
            .bind(call.call_id.clone())
            .bind(*earliest_created_micros)
            .bind(call.completed_at_micros)
            .bind(call.api.name())
            .bind(call.model.clone())
            .bind(call.stream)
            .bind(call.status.as_str())
            .bind(call.duration_ms)
            .bind(call.time_to_first_chunk_ms)
            .bind(query::tokens(call.usage.input_tokens))
            .bind(query::tokens(call.usage.output_tokens))
            .bind(call.session_id.clone())
            .bind(call.trace_id.clone())
            .bind(call.policy_changed)
            .bind(i64::from(SCHEMA_VERSION))
            .bind(call.control_plane_id.clone())
            .bind(call.preview.clone())
            .bind(query::policies(&call.policies));
    }
    query
}

/// `DO NOTHING` on an existing (call_id, sequence) makes a retried batch
/// harmless.
fn insert_events(events: &[&CallEvent]) -> Result<SqliteQuery, StoreError> {
    let sql = values_sql(
        "INSERT INTO conversation_events \
             (call_id, sequence, event_type, payload, created_at, schema_version)",
        events.len(),
        6,
        "ON CONFLICT (call_id, sequence) DO NOTHING",
    );
    let mut query = sqlx::query(sql);
    for event in events {
        query = query
            .bind(event.call_id.clone())
            .bind(i64::from(event.sequence))
            .bind(event.payload.event_type())
            .bind(encode_payload(event)?)
            .bind(event.timestamp_micros)
            .bind(i64::from(event.schema_version));
    }
    Ok(query)
}

/// The calls a retention batch deletes: the oldest `?2` created before `?1`,
/// through `calls_created_at_idx` (scanned backwards, covering: no table
/// reads, no sort). `call_id` breaks ties, so the set is the same each time
/// it is evaluated inside one transaction.
macro_rules! doomed_calls {
    () => {
        "SELECT call_id FROM calls WHERE created_at < ?1 ORDER BY created_at, call_id LIMIT ?2"
    };
}

/// Deletes up to `batch` of the oldest calls created before `cutoff_micros`
/// and their events, in one `BEGIN IMMEDIATE` transaction: the write lock
/// is taken up front (waiting up to `busy_timeout` for the writer) and held
/// only for this one batch. Events go first, by `call_id` through the
/// `(call_id, sequence)` unique index, then the calls by primary key; both
/// statements select the same calls, as nothing else can write meanwhile.
pub(super) async fn delete_calls_before(
    pool: &SqlitePool,
    cutoff_micros: i64,
    batch: u32,
) -> Result<Purged, StoreError> {
    let batch = i64::from(batch.max(1));
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let events = sqlx::query(concat!(
        "DELETE FROM conversation_events WHERE call_id IN (",
        doomed_calls!(),
        ")"
    ))
    .bind(cutoff_micros)
    .bind(batch)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let calls = sqlx::query(concat!(
        "DELETE FROM calls WHERE call_id IN (",
        doomed_calls!(),
        ")"
    ))
    .bind(cutoff_micros)
    .bind(batch)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Purged { calls, events })
}

pub(super) async fn get_call(
    pool: &SqlitePool,
    call_id: &str,
) -> Result<Option<(CallSummary, Vec<CallEvent>)>, StoreError> {
    let sql = format!("SELECT {SUMMARY_COLUMNS} FROM calls WHERE call_id = ?1");
    let Some(row) = sqlx::query_as::<_, SummaryRow>(sqlx::AssertSqlSafe(sql))
        .bind(call_id.to_owned())
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let summary = row.into_summary()?;
    let events = sqlx::query_as::<_, EventRow>(
        "SELECT call_id, sequence, payload, created_at, schema_version \
         FROM conversation_events WHERE call_id = ?1 ORDER BY sequence",
    )
    .bind(call_id.to_owned())
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(EventRow::into_event)
    .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((summary, events)))
}

pub(super) async fn list_calls(
    pool: &SqlitePool,
    filter: &CallFilter,
) -> Result<CallPage, StoreError> {
    let after = filter.cursor.as_deref().map(Cursor::decode).transpose()?;
    let limit = filter.effective_limit();
    let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {SUMMARY_COLUMNS} FROM calls"));
    query::push_conditions(&mut qb, filter, after.as_ref(), &DIALECT);
    qb.push(" ORDER BY created_at DESC, call_id DESC LIMIT ")
        .push_bind(i64::from(limit) + 1);
    let rows = qb.build_query_as::<SummaryRow>().fetch_all(pool).await?;
    query::into_page(rows, limit)
}

pub(super) async fn heartbeat(
    pool: &SqlitePool,
    id: &str,
    started_micros: i64,
    now_micros: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO control_planes (id, started_at, last_seen_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (id) DO UPDATE SET last_seen_at = excluded.last_seen_at",
    )
    .bind(id)
    .bind(started_micros)
    .bind(now_micros)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn sweep_abandoned(
    pool: &SqlitePool,
    cutoff_micros: i64,
    now_micros: i64,
    sweeper: &str,
    limit: u32,
) -> Result<Vec<Swept>, StoreError> {
    let candidates: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT call_id, control_plane_id FROM calls \
         WHERE status = 'in_progress' AND created_at < ?1 \
           AND NOT EXISTS (SELECT 1 FROM control_planes cp \
               WHERE cp.id = calls.control_plane_id AND cp.last_seen_at >= ?1) \
         ORDER BY created_at LIMIT ?2",
    )
    .bind(cutoff_micros)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    let mut swept = Vec::new();
    for (call_id, control_plane_id) in candidates {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let updated = sqlx::query(
            "UPDATE calls SET status = 'abandoned', completed_at = ?2 \
             WHERE call_id = ?1 AND status = 'in_progress'",
        )
        .bind(&call_id)
        .bind(now_micros)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 1 {
            let next: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(sequence), -1) + 1 FROM conversation_events WHERE call_id = ?1",
            )
            .bind(&call_id)
            .fetch_one(&mut *tx)
            .await?;
            let detail = liveness::detail(control_plane_id.as_deref(), sweeper);
            let event = liveness::abandoned_event(
                &call_id,
                u32::try_from(next).unwrap_or(u32::MAX),
                now_micros,
                detail,
            );
            insert_events(&[&event])?.execute(&mut *tx).await?;
            swept.push(Swept {
                call_id,
                control_plane_id,
            });
        }
        tx.commit().await?;
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn rows_split_into_few_statement_sizes() {
        let rows: Vec<u32> = (0..75).collect();
        let sizes: Vec<usize> = chunks(&rows).map(<[u32]>::len).collect();
        assert_eq!(sizes, [64, 8, 1, 1, 1]);
        assert_eq!(chunks(&rows).flatten().count(), 75);
        assert_eq!(chunks::<u32>(&[]).count(), 0);
    }
}
