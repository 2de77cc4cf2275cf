//! PostgreSQL backend: `timestamptz` columns, `jsonb` payloads, and batches
//! written as one `INSERT … SELECT FROM UNNEST(arrays)` per table, so a
//! batch costs two statements whatever its size.
//!
//! Timestamps cross the wire as unix microseconds (`int8`) and are converted
//! in SQL (`'epoch' + n * 1 µs`, `EXTRACT(EPOCH …)`), exactly and without a
//! date-time crate.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};

use super::query::{self, Cursor, Dialect, EventRow, SummaryRow};
use super::{CallFilter, CallPage, Purged, Record, StoreError, StoreOptions, encode_payload};
use crate::events::{CallEvent, CallSummary, SCHEMA_VERSION};
use crate::liveness::{self, Swept};

/// `created_at` and friends read back as unix microseconds.
const SUMMARY_COLUMNS: &str = "call_id, \
    (EXTRACT(EPOCH FROM created_at) * 1000000)::int8 AS created_at, \
    (EXTRACT(EPOCH FROM completed_at) * 1000000)::int8 AS completed_at, \
    api, model, stream, status, duration_ms, time_to_first_chunk_ms, \
    input_tokens, output_tokens, session_id, trace_id, policy_changed, \
    schema_version::int8 AS schema_version, control_plane_id, preview, policies";

const DIALECT: Dialect = Dialect {
    time_open: "(TIMESTAMPTZ 'epoch' + ",
    time_close: " * INTERVAL '1 microsecond')",
    position_fn: "strpos",
};

pub(super) async fn open(url: &str, options: &StoreOptions) -> Result<PgPool, StoreError> {
    let connect = PgConnectOptions::from_str(url)?.application_name("luthien-controlplane");
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await?;
    if options.migrate {
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
    }
    Ok(pool)
}

pub(super) async fn write_batch(pool: &PgPool, batch: &[Record]) -> Result<(), StoreError> {
    let calls = super::latest_calls(batch);
    let events: Vec<&CallEvent> = batch
        .iter()
        .filter_map(|record| match record {
            Record::Event(event) => Some(event),
            Record::Call(_) => None,
        })
        .collect();
    let mut tx = pool.begin().await?;
    if !calls.is_empty() {
        upsert_calls(&calls).execute(&mut *tx).await?;
    }
    if !events.is_empty() {
        insert_events(&events)?.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

type PgQuery = sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments>;

/// One upsert for all the batch's call rows (at most one per call: a
/// statement may not update the same row twice). `created_at` keeps the
/// earliest value so a call does not move in the list when it completes;
/// every other column takes the later record, as long as the stored call is
/// in progress (see [`Record::Call`]).
fn upsert_calls(calls: &[(&CallSummary, i64)]) -> PgQuery {
    let mut ids = Vec::with_capacity(calls.len());
    let mut created = Vec::with_capacity(calls.len());
    let mut completed = Vec::with_capacity(calls.len());
    let mut apis = Vec::with_capacity(calls.len());
    let mut models = Vec::with_capacity(calls.len());
    let mut streams = Vec::with_capacity(calls.len());
    let mut statuses = Vec::with_capacity(calls.len());
    let mut durations = Vec::with_capacity(calls.len());
    let mut first_chunks = Vec::with_capacity(calls.len());
    let mut inputs = Vec::with_capacity(calls.len());
    let mut outputs = Vec::with_capacity(calls.len());
    let mut sessions = Vec::with_capacity(calls.len());
    let mut traces = Vec::with_capacity(calls.len());
    let mut changed = Vec::with_capacity(calls.len());
    let mut control_planes = Vec::with_capacity(calls.len());
    let mut previews = Vec::with_capacity(calls.len());
    let mut policies = Vec::with_capacity(calls.len());
    for (call, earliest) in calls {
        ids.push(call.call_id.clone());
        created.push(*earliest);
        completed.push(call.completed_at_micros);
        apis.push(call.api.name());
        models.push(call.model.clone());
        streams.push(call.stream);
        statuses.push(call.status.as_str().to_owned());
        durations.push(call.duration_ms);
        first_chunks.push(call.time_to_first_chunk_ms);
        inputs.push(query::tokens(call.usage.input_tokens));
        outputs.push(query::tokens(call.usage.output_tokens));
        sessions.push(call.session_id.clone());
        traces.push(call.trace_id.clone());
        changed.push(call.policy_changed);
        control_planes.push(call.control_plane_id.clone());
        previews.push(call.preview.clone());
        policies.push(query::policies(&call.policies));
    }
    sqlx::query(
        "INSERT INTO calls (call_id, created_at, completed_at, api, model, stream, status, \
             duration_ms, time_to_first_chunk_ms, input_tokens, output_tokens, session_id, \
             trace_id, policy_changed, schema_version, control_plane_id, preview, policies) \
         SELECT c.call_id, \
             TIMESTAMPTZ 'epoch' + c.created * INTERVAL '1 microsecond', \
             TIMESTAMPTZ 'epoch' + c.completed * INTERVAL '1 microsecond', \
             c.api, c.model, c.stream, c.status, c.duration_ms, c.ttfc, c.input_tokens, \
             c.output_tokens, c.session_id, c.trace_id, c.policy_changed, $15, \
             c.control_plane_id, c.preview, c.policies \
         FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::bool[], \
             $7::text[], $8::float8[], $9::float8[], $10::int8[], $11::int8[], $12::text[], \
             $13::text[], $14::bool[], $16::text[], $17::text[], $18::text[]) \
           AS c(call_id, created, completed, api, model, stream, status, duration_ms, ttfc, \
             input_tokens, output_tokens, session_id, trace_id, policy_changed, \
             control_plane_id, preview, policies) \
         ON CONFLICT (call_id) DO UPDATE SET \
             created_at = LEAST(calls.created_at, EXCLUDED.created_at), \
             completed_at = EXCLUDED.completed_at, api = EXCLUDED.api, \
             model = EXCLUDED.model, stream = EXCLUDED.stream, status = EXCLUDED.status, \
             duration_ms = EXCLUDED.duration_ms, \
             time_to_first_chunk_ms = EXCLUDED.time_to_first_chunk_ms, \
             input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens, \
             session_id = EXCLUDED.session_id, trace_id = EXCLUDED.trace_id, \
             policy_changed = EXCLUDED.policy_changed, \
             schema_version = EXCLUDED.schema_version, \
             control_plane_id = COALESCE(EXCLUDED.control_plane_id, calls.control_plane_id), \
             preview = EXCLUDED.preview, policies = EXCLUDED.policies \
         WHERE calls.status = 'in_progress'",
    )
    .bind(ids)
    .bind(created)
    .bind(completed)
    .bind(apis)
    .bind(models)
    .bind(streams)
    .bind(statuses)
    .bind(durations)
    .bind(first_chunks)
    .bind(inputs)
    .bind(outputs)
    .bind(sessions)
    .bind(traces)
    .bind(changed)
    .bind(SCHEMA_VERSION as i32)
    .bind(control_planes)
    .bind(previews)
    .bind(policies)
}

/// One insert for all the batch's events; `DO NOTHING` on an existing
/// (call_id, sequence) makes a retried batch harmless.
fn insert_events(events: &[&CallEvent]) -> Result<PgQuery, StoreError> {
    let mut ids = Vec::with_capacity(events.len());
    let mut sequences = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    let mut created = Vec::with_capacity(events.len());
    let mut versions = Vec::with_capacity(events.len());
    for event in events {
        ids.push(event.call_id.clone());
        sequences.push(i64::from(event.sequence));
        types.push(event.payload.event_type().to_owned());
        payloads.push(strip_nul(encode_payload(event)?));
        created.push(event.timestamp_micros);
        versions.push(i64::from(event.schema_version));
    }
    // Payloads travel as text and are parsed by `::jsonb` into objects
    // (never stored as a JSON string: the table's CHECK refuses that).
    Ok(sqlx::query(
        "INSERT INTO conversation_events \
             (call_id, sequence, event_type, payload, created_at, schema_version) \
         SELECT e.call_id, e.sequence, e.event_type, e.payload::jsonb, \
             TIMESTAMPTZ 'epoch' + e.created * INTERVAL '1 microsecond', e.schema_version::int4 \
         FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::int8[]) \
           AS e(call_id, sequence, event_type, payload, created, schema_version) \
         ON CONFLICT (call_id, sequence) DO NOTHING",
    )
    .bind(ids)
    .bind(sequences)
    .bind(types)
    .bind(payloads)
    .bind(created)
    .bind(versions))
}

/// `jsonb` refuses the escape `\u0000` (its text type cannot hold NUL),
/// which would make the whole event unstorable; NUL has no meaning in LLM
/// traffic, so it is stored as U+FFFD instead. The common case (no NUL)
/// costs one substring search.
fn strip_nul(json: String) -> String {
    if !json.contains("\\u0000") {
        return json;
    }
    // Replace only real escapes: `\\u0000` is an escaped backslash followed
    // by the text "u0000", which must stay.
    let mut out = String::with_capacity(json.len());
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('\\') => {
                out.push_str("\\\\");
                chars.next();
            }
            Some('u') => {
                let rest: String = chars.clone().take(5).collect();
                if rest == "u0000" {
                    out.push_str("\\ufffd");
                    for _ in 0..5 {
                        chars.next();
                    }
                } else {
                    out.push('\\');
                }
            }
            _ => out.push('\\'),
        }
    }
    out
}

/// Deletes up to `batch` of the oldest calls created before `cutoff_micros`
/// and their events, in one transaction.
///
/// The calls are picked through `calls_created_at_idx` (a backward index
/// scan: oldest first) and locked with `FOR UPDATE SKIP LOCKED`, so several
/// control planes running retention on one database pick disjoint calls and
/// never wait for each other, and a call row the writer is upserting right
/// now is left for the next round instead of waited for. Events go by
/// `call_id = ANY(…)` through the `(call_id, sequence)` unique index, then
/// the calls by primary key.
pub(super) async fn delete_calls_before(
    pool: &PgPool,
    cutoff_micros: i64,
    batch: u32,
) -> Result<Purged, StoreError> {
    let mut tx = pool.begin().await?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT call_id FROM calls \
         WHERE created_at < TIMESTAMPTZ 'epoch' + $1 * INTERVAL '1 microsecond' \
         ORDER BY created_at, call_id \
         LIMIT $2 \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(cutoff_micros)
    .bind(i64::from(batch.max(1)))
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        tx.rollback().await?;
        return Ok(Purged::default());
    }
    let events = sqlx::query("DELETE FROM conversation_events WHERE call_id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let calls = sqlx::query("DELETE FROM calls WHERE call_id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Purged { calls, events })
}

pub(super) async fn get_call(
    pool: &PgPool,
    call_id: &str,
) -> Result<Option<(CallSummary, Vec<CallEvent>)>, StoreError> {
    let sql = format!("SELECT {SUMMARY_COLUMNS} FROM calls WHERE call_id = $1");
    let Some(row) = sqlx::query_as::<_, SummaryRow>(sqlx::AssertSqlSafe(sql))
        .bind(call_id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let summary = row.into_summary()?;
    let events = sqlx::query_as::<_, EventRow>(
        "SELECT call_id, sequence, payload::text AS payload, \
             (EXTRACT(EPOCH FROM created_at) * 1000000)::int8 AS created_at, \
             schema_version::int8 AS schema_version \
         FROM conversation_events WHERE call_id = $1 ORDER BY sequence",
    )
    .bind(call_id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(EventRow::into_event)
    .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((summary, events)))
}

pub(super) async fn list_calls(pool: &PgPool, filter: &CallFilter) -> Result<CallPage, StoreError> {
    let after = filter.cursor.as_deref().map(Cursor::decode).transpose()?;
    let limit = filter.effective_limit();
    let mut qb = QueryBuilder::<Postgres>::new(format!("SELECT {SUMMARY_COLUMNS} FROM calls"));
    query::push_conditions(&mut qb, filter, after.as_ref(), &DIALECT);
    qb.push(" ORDER BY created_at DESC, call_id DESC LIMIT ")
        .push_bind(i64::from(limit) + 1);
    let rows = qb.build_query_as::<SummaryRow>().fetch_all(pool).await?;
    query::into_page(rows, limit)
}

pub(super) async fn heartbeat(
    pool: &PgPool,
    id: &str,
    started_micros: i64,
    now_micros: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO control_planes (id, started_at, last_seen_at) \
         VALUES ($1, TIMESTAMPTZ 'epoch' + $2 * INTERVAL '1 microsecond', \
             TIMESTAMPTZ 'epoch' + $3 * INTERVAL '1 microsecond') \
         ON CONFLICT (id) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at",
    )
    .bind(id)
    .bind(started_micros)
    .bind(now_micros)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn sweep_abandoned(
    pool: &PgPool,
    cutoff_micros: i64,
    now_micros: i64,
    sweeper: &str,
    limit: u32,
) -> Result<Vec<Swept>, StoreError> {
    let candidates: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT call_id, control_plane_id FROM calls \
         WHERE status = 'in_progress' \
           AND created_at < TIMESTAMPTZ 'epoch' + $1 * INTERVAL '1 microsecond' \
           AND NOT EXISTS (SELECT 1 FROM control_planes cp \
               WHERE cp.id = calls.control_plane_id \
                 AND cp.last_seen_at >= TIMESTAMPTZ 'epoch' + $1 * INTERVAL '1 microsecond') \
         ORDER BY created_at LIMIT $2",
    )
    .bind(cutoff_micros)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    let mut swept = Vec::new();
    for (call_id, control_plane_id) in candidates {
        let mut tx = pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE calls SET status = 'abandoned', \
                 completed_at = TIMESTAMPTZ 'epoch' + $2 * INTERVAL '1 microsecond' \
             WHERE call_id = $1 AND status = 'in_progress'",
        )
        .bind(&call_id)
        .bind(now_micros)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 1 {
            let next: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(sequence), -1) + 1 FROM conversation_events WHERE call_id = $1",
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
    use super::strip_nul;

    #[test]
    fn nul_escapes_are_replaced_and_nothing_else() {
        assert_eq!(
            strip_nul(r#"{"a":"x\u0000y"}"#.into()),
            r#"{"a":"x\ufffdy"}"#
        );
        assert_eq!(
            strip_nul(r#"{"a":"x\\u0000y"}"#.into()),
            r#"{"a":"x\\u0000y"}"#
        );
        assert_eq!(
            strip_nul(r#"{"a":"\\\u0000\u00e9"}"#.into()),
            r#"{"a":"\\\ufffd\u00e9"}"#
        );
        let plain = r#"{"a":"b"}"#.to_owned();
        assert_eq!(strip_nul(plain.clone()), plain);
    }
}
