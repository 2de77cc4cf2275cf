//! The reader's vocabulary shared by both backends: list filters, pages and
//! their opaque cursor, the `WHERE` clause built from a filter, and the
//! conversion of raw rows back into the shared event schema (with the
//! schema-version check).

use luthien_api::{Api, UnknownApi};
use serde::{Deserialize, Serialize};
use sqlx::{Database, Encode, QueryBuilder, Type};

use super::StoreError;
use crate::events::{CallEvent, CallStatus, CallSummary, EventPayload, SCHEMA_VERSION, TokenUsage};

/// Page size when a filter names none.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page a caller can ask for; larger limits are lowered to it.
pub const MAX_LIMIT: u32 = 500;

/// What [`Store::list_calls`](super::Store::list_calls) returns: calls
/// newest first, matching every field that is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallFilter {
    /// Calls created at or after this unix time (microseconds).
    pub since_micros: Option<i64>,
    /// Calls created strictly before this unix time (microseconds).
    pub until_micros: Option<i64>,
    pub model: Option<String>,
    pub api: Option<Api>,
    pub status: Option<CallStatus>,
    pub session_id: Option<String>,
    /// Calls that have at least one event of this type (`request`,
    /// `response`, `policy`).
    pub event_type: Option<String>,
    /// Calls whose id contains this text (case-sensitive).
    pub call_id_contains: Option<String>,
    /// Page size: [`DEFAULT_LIMIT`] when absent, at most [`MAX_LIMIT`].
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
}

impl CallFilter {
    /// The page size actually used.
    pub fn effective_limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }
}

/// One page of calls, newest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallPage {
    pub calls: Vec<CallSummary>,
    /// Pass back as [`CallFilter::cursor`] for the next (older) page; absent
    /// on the last page.
    pub next_cursor: Option<String>,
}

/// Where a page ended: the list's sort key of its last call. Keyset
/// pagination on `(created_at, call_id)` instead of OFFSET, so pages stay
/// cheap deep into the table and calls arriving meanwhile neither shift nor
/// duplicate rows across pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub created_at_micros: i64,
    pub call_id: String,
}

/// Version prefix inside the cursor, so its format can change later.
const CURSOR_VERSION: &str = "1";

impl Cursor {
    /// Hex of `1:<micros>:<call_id>`: opaque to clients, URL-safe, and
    /// needs no extra dependency.
    pub fn encode(&self) -> String {
        let plain = format!(
            "{CURSOR_VERSION}:{}:{}",
            self.created_at_micros, self.call_id
        );
        plain.bytes().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(text: &str) -> Result<Cursor, StoreError> {
        if !text.len().is_multiple_of(2) || !text.is_ascii() {
            return Err(StoreError::InvalidCursor);
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| StoreError::InvalidCursor)?;
        let plain = String::from_utf8(bytes).map_err(|_| StoreError::InvalidCursor)?;
        let mut parts = plain.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(CURSOR_VERSION), Some(micros), Some(call_id)) => Ok(Cursor {
                created_at_micros: micros.parse().map_err(|_| StoreError::InvalidCursor)?,
                call_id: call_id.to_owned(),
            }),
            _ => Err(StoreError::InvalidCursor),
        }
    }
}

/// The few SQL spellings in which the backends differ for a list query.
pub(crate) struct Dialect {
    /// Wrapped around a bound unix-microseconds value to compare it with a
    /// `created_at` column.
    pub time_open: &'static str,
    pub time_close: &'static str,
    /// Function `f(haystack, needle)` returning the 1-based position or 0.
    pub position_fn: &'static str,
}

/// Appends ` WHERE …` (or nothing) for `filter` and the page start, binding
/// every value: no user text is ever spliced into the SQL.
pub(crate) fn push_conditions<DB>(
    qb: &mut QueryBuilder<DB>,
    filter: &CallFilter,
    after: Option<&Cursor>,
    dialect: &Dialect,
) where
    DB: Database,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut first = true;
    let mut and = |qb: &mut QueryBuilder<DB>| {
        qb.push(if first { " WHERE " } else { " AND " });
        first = false;
    };
    let time = |qb: &mut QueryBuilder<DB>, micros: i64| {
        qb.push(dialect.time_open);
        qb.push_bind(micros);
        qb.push(dialect.time_close);
    };
    if let Some(since) = filter.since_micros {
        and(qb);
        qb.push("created_at >= ");
        time(qb, since);
    }
    if let Some(until) = filter.until_micros {
        and(qb);
        qb.push("created_at < ");
        time(qb, until);
    }
    let api = filter.api.map(|api| api.name().to_owned());
    let equal = [
        ("model", &filter.model),
        ("api", &api),
        ("session_id", &filter.session_id),
    ];
    for (column, value) in equal {
        if let Some(value) = value {
            and(qb);
            qb.push(column).push(" = ").push_bind(value.clone());
        }
    }
    if let Some(status) = filter.status {
        and(qb);
        qb.push("status = ").push_bind(status.as_str().to_owned());
    }
    if let Some(event_type) = &filter.event_type {
        and(qb);
        qb.push(
            "EXISTS (SELECT 1 FROM conversation_events e \
             WHERE e.call_id = calls.call_id AND e.event_type = ",
        )
        .push_bind(event_type.clone())
        .push(")");
    }
    if let Some(part) = &filter.call_id_contains {
        // A position function rather than LIKE: no wildcard escaping, and
        // the same case-sensitive meaning on both databases.
        and(qb);
        qb.push(dialect.position_fn)
            .push("(call_id, ")
            .push_bind(part.clone())
            .push(") > 0");
    }
    if let Some(cursor) = after {
        // Row-value comparison matches the (created_at DESC, call_id DESC)
        // index, so each page is an index range scan.
        and(qb);
        qb.push("(created_at, call_id) < (");
        time(qb, cursor.created_at_micros);
        qb.push(", ").push_bind(cursor.call_id.clone()).push(")");
    }
}

/// A `calls` row with timestamps already in unix microseconds.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SummaryRow {
    pub call_id: String,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub api: String,
    pub model: String,
    pub stream: bool,
    pub status: String,
    pub duration_ms: Option<f64>,
    pub time_to_first_chunk_ms: Option<f64>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub session_id: Option<String>,
    pub trace_id: Option<String>,
    pub policy_changed: bool,
    pub schema_version: i64,
    pub control_plane_id: Option<String>,
    pub preview: Option<String>,
    pub policies: Option<String>,
}

/// The `policies` column: the names as a JSON array.
pub(crate) fn policies(names: &[String]) -> String {
    serde_json::Value::from(names).to_string()
}

impl SummaryRow {
    pub fn into_summary(self) -> Result<CallSummary, StoreError> {
        check_version(&self.schema_version, || format!("call {}", self.call_id))?;
        let status = CallStatus::parse(&self.status).ok_or_else(|| StoreError::Corrupt {
            what: format!("call {}", self.call_id),
            detail: format!("unknown status `{}`", self.status),
        })?;
        let api = self
            .api
            .parse()
            .map_err(|error: UnknownApi| StoreError::Corrupt {
                what: format!("call {}", self.call_id),
                detail: error.to_string(),
            })?;
        let policies = match self.policies.as_deref() {
            None => Vec::new(),
            Some(text) => serde_json::from_str(text).map_err(|error| StoreError::Corrupt {
                what: format!("call {}", self.call_id),
                detail: format!("policies `{text}`: {error}"),
            })?,
        };
        Ok(CallSummary {
            call_id: self.call_id,
            created_at_micros: self.created_at,
            completed_at_micros: self.completed_at,
            api,
            model: self.model,
            stream: self.stream,
            status,
            duration_ms: self.duration_ms,
            time_to_first_chunk_ms: self.time_to_first_chunk_ms,
            usage: TokenUsage {
                input_tokens: self.input_tokens.and_then(|n| u64::try_from(n).ok()),
                output_tokens: self.output_tokens.and_then(|n| u64::try_from(n).ok()),
            },
            session_id: self.session_id,
            trace_id: self.trace_id,
            policy_changed: self.policy_changed,
            control_plane_id: self.control_plane_id,
            preview: self.preview,
            policies,
        })
    }
}

/// A `conversation_events` row with the payload as JSON text.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub call_id: String,
    pub sequence: i64,
    pub payload: String,
    pub created_at: i64,
    pub schema_version: i64,
}

impl EventRow {
    pub fn into_event(self) -> Result<CallEvent, StoreError> {
        let what = || format!("event {} #{}", self.call_id, self.sequence);
        check_version(&self.schema_version, what)?;
        let corrupt = |detail: String| StoreError::Corrupt {
            what: what(),
            detail,
        };
        // Decoded into the typed payload, so a payload stored as a JSON
        // string (double-encoded) fails loudly instead of showing up empty.
        let mut payload: EventPayload =
            serde_json::from_str(&self.payload).map_err(|e| corrupt(e.to_string()))?;
        if self.schema_version >= 2 {
            crate::unchanged::unfold(&mut payload);
        }
        Ok(CallEvent {
            sequence: u32::try_from(self.sequence)
                .map_err(|_| corrupt(format!("sequence {} out of range", self.sequence)))?,
            schema_version: u32::try_from(self.schema_version)
                .map_err(|_| corrupt(format!("schema version {}", self.schema_version)))?,
            call_id: self.call_id,
            timestamp_micros: self.created_at,
            payload,
        })
    }
}

fn check_version(found: &i64, what: impl FnOnce() -> String) -> Result<(), StoreError> {
    if *found > i64::from(SCHEMA_VERSION) {
        return Err(StoreError::NewerSchema {
            what: what(),
            found: *found,
            known: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Builds the page from up to `limit + 1` rows: the extra row only says
/// that another page exists.
pub(crate) fn into_page(rows: Vec<SummaryRow>, limit: u32) -> Result<CallPage, StoreError> {
    let limit = limit as usize;
    let more = rows.len() > limit;
    let calls = rows
        .into_iter()
        .take(limit)
        .map(SummaryRow::into_summary)
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = match calls.last() {
        Some(last) if more => Some(
            Cursor {
                created_at_micros: last.created_at_micros,
                call_id: last.call_id.clone(),
            }
            .encode(),
        ),
        _ => None,
    };
    Ok(CallPage { calls, next_cursor })
}

/// Saturating conversion for token counts (no provider reports 2^63).
pub(crate) fn tokens(count: Option<u64>) -> Option<i64> {
    count.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor {
            created_at_micros: -5,
            call_id: "a:b/ü".to_owned(),
        };
        let text = cursor.encode();
        assert!(text.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(Cursor::decode(&text).unwrap(), cursor);
        for bad in ["", "zz", "abc", "323a78", "ü1"] {
            assert!(
                matches!(Cursor::decode(bad), Err(StoreError::InvalidCursor)),
                "{bad}"
            );
        }
    }

    #[test]
    fn limit_defaults_and_clamps() {
        let mut filter = CallFilter::default();
        assert_eq!(filter.effective_limit(), DEFAULT_LIMIT);
        filter.limit = Some(10_000);
        assert_eq!(filter.effective_limit(), MAX_LIMIT);
        filter.limit = Some(0);
        assert_eq!(filter.effective_limit(), 1);
    }
}
