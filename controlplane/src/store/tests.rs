//! The store on real databases: every test body runs on SQLite (a file in a
//! temporary folder) and on PostgreSQL (a database of its own, dropped
//! afterwards), writing through the real writer and reading through the
//! real reader, so the two cannot drift apart unnoticed.
//!
//! PostgreSQL: `LUTHIEN_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test` (a role allowed to create
//! databases). Tests fail, not skip, when it is unreachable.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::{Value, json};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};
use tempfile::TempDir;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::events::{CallStatus, EventPayload, SCHEMA_VERSION, TokenUsage};

const PG_URL_ENV: &str = "LUTHIEN_TEST_POSTGRES_URL";
const PG_DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn admin_url() -> String {
    std::env::var(PG_URL_ENV).unwrap_or_else(|_| PG_DEFAULT_URL.to_owned())
}

async fn admin() -> PgConnection {
    let url = admin_url();
    PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL for store tests at {url}: {e}"))
}

/// One test database.
#[derive(Clone, Debug)]
enum Db {
    Postgres { name: String },
    Sqlite { path: PathBuf },
}

#[derive(Clone, Debug)]
struct Target {
    db: Db,
    url: String,
}

/// A database writes fail on until [`Outage::end`].
enum Outage {
    Postgres { name: String },
    Sqlite { lock: SqliteConnection },
}

fn test_options() -> StoreOptions {
    StoreOptions {
        acquire_timeout: Duration::from_secs(2),
        sqlite_busy_timeout: Duration::from_millis(100),
        ..StoreOptions::default()
    }
}

/// Quick retries, so outage tests do not wait seconds.
fn fast_writer() -> WriterOptions {
    WriterOptions {
        batch_size: 16,
        flush_interval: Duration::from_millis(10),
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..WriterOptions::default()
    }
}

impl Target {
    fn backend(&self) -> &'static str {
        match self.db {
            Db::Postgres { .. } => "postgres",
            Db::Sqlite { .. } => "sqlite",
        }
    }

    async fn open(&self) -> Store {
        Store::open(&self.url, test_options())
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.backend()))
    }

    /// Makes every write fail: PostgreSQL refuses connections to the
    /// database (and the open ones are terminated); SQLite's write lock is
    /// held by another connection.
    async fn break_writes(&self) -> Outage {
        match &self.db {
            Db::Postgres { name } => {
                let mut admin = admin().await;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "ALTER DATABASE {name} ALLOW_CONNECTIONS false"
                    )))
                    .await
                    .unwrap();
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                )
                .bind(name)
                .execute(&mut admin)
                .await
                .unwrap();
                Outage::Postgres { name: name.clone() }
            }
            Db::Sqlite { path } => {
                let mut lock =
                    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
                        .await
                        .unwrap();
                lock.execute("BEGIN EXCLUSIVE").await.unwrap();
                Outage::Sqlite { lock }
            }
        }
    }
}

impl Outage {
    async fn end(self) {
        match self {
            Outage::Postgres { name } => {
                admin()
                    .await
                    .execute(sqlx::AssertSqlSafe(format!(
                        "ALTER DATABASE {name} ALLOW_CONNECTIONS true"
                    )))
                    .await
                    .unwrap();
            }
            Outage::Sqlite { mut lock } => {
                lock.execute("ROLLBACK").await.unwrap();
                lock.close().await.unwrap();
            }
        }
    }
}

/// Runs `test` on a fresh SQLite file, then on a fresh PostgreSQL
/// database; cleans both up even when the test fails.
async fn on_each_backend<F, Fut>(test: F)
where
    F: Fn(Target) -> Fut,
    Fut: Future<Output = ()>,
{
    {
        let dir = TempDir::new().unwrap();
        // A folder that does not exist yet: open must create it and the file.
        let path = dir.path().join("data").join("events.db");
        let target = Target {
            url: format!("sqlite://{}", path.display()),
            db: Db::Sqlite { path },
        };
        let result = AssertUnwindSafe(test(target)).catch_unwind().await;
        drop(dir);
        if let Err(panic) = result {
            eprintln!("store test failed on sqlite");
            std::panic::resume_unwind(panic);
        }
    }
    {
        let name = format!("luthien_test_{}", uuid::Uuid::new_v4().simple());
        admin()
            .await
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let base = admin_url();
        let (server, query) = match base.split_once('?') {
            Some((server, query)) => (server.to_owned(), format!("?{query}")),
            None => (base.clone(), String::new()),
        };
        let server = server.rsplit_once('/').map_or(server.as_str(), |(s, _)| s);
        let target = Target {
            url: format!("{server}/{name}{query}"),
            db: Db::Postgres { name: name.clone() },
        };
        let result = AssertUnwindSafe(test(target)).catch_unwind().await;
        admin()
            .await
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await
            .unwrap();
        if let Err(panic) = result {
            eprintln!("store test failed on postgres");
            std::panic::resume_unwind(panic);
        }
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `records` through a real writer and waits until they are stored.
async fn write_through_writer(store: &Store, records: Vec<Record>) {
    let count = records.len() as u64;
    let (sink, writer) = spawn_writer(
        store.clone(),
        WriterOptions::default(),
        CancellationToken::new(),
    );
    for record in records {
        sink.record(record);
    }
    let report = writer.shutdown(Duration::from_secs(30)).await;
    assert_eq!(report.lost, 0);
    assert_eq!(report.stats.written, count, "{report:?}");
    assert_eq!(report.stats.dropped, 0);
}

// ---- sample records -------------------------------------------------------

fn started(call_id: &str, created: i64) -> CallSummary {
    CallSummary {
        call_id: call_id.to_owned(),
        created_at_micros: created,
        completed_at_micros: None,
        api: "openai".to_owned(),
        model: "gpt-4o".to_owned(),
        stream: true,
        status: CallStatus::InProgress,
        duration_ms: None,
        time_to_first_chunk_ms: None,
        usage: TokenUsage::default(),
        session_id: None,
        policy_changed: false,
    }
}

fn completed(mut call: CallSummary, status: CallStatus) -> CallSummary {
    call.completed_at_micros = Some(call.created_at_micros + 1_234_567);
    call.status = status;
    call.duration_ms = Some(1234.567);
    call.time_to_first_chunk_ms = Some(89.5);
    call.usage = TokenUsage {
        input_tokens: Some(12),
        output_tokens: Some(3456),
    };
    call.policy_changed = true;
    call
}

fn event(call_id: &str, sequence: u32, payload: EventPayload) -> CallEvent {
    CallEvent {
        call_id: call_id.to_owned(),
        sequence,
        timestamp_micros: 1_767_225_600_000_000 + i64::from(sequence) * 1_001,
        schema_version: SCHEMA_VERSION,
        payload,
    }
}

fn request_payload() -> EventPayload {
    let body = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "héllo 🌍 \"quoted\" \n line"}],
        "temperature": 0.7,
        "max_tokens": 9_007_199_254_740_993u64,
        "tools": [],
        "metadata": {"nested": {"deep": [1, 2.5, -3e-7, null, true]}},
    });
    let mut rewritten = body.clone();
    rewritten["messages"][0]["content"] = json!("[redacted by policy]");
    EventPayload::Request {
        original: body,
        final_: rewritten,
        headers: json!({"user-agent": "test", "anthropic-version": "2023-06-01"}),
    }
}

fn response_payload(status: CallStatus) -> EventPayload {
    EventPayload::Response {
        original: Some(json!({"id": "chatcmpl-1", "choices": [{"message": {"content": "hi"}}]})),
        final_: None,
        status,
        upstream_status: Some(200),
        detail: Some("ok".to_owned()),
        chunks_received: 42,
        chunks_sent: 41,
        time_to_first_chunk_ms: Some(12.25),
        duration_ms: Some(1234.567),
        overhead_ms: Some(0.125),
        usage: TokenUsage {
            input_tokens: Some(12),
            output_tokens: None,
        },
    }
}

fn policy_payload() -> EventPayload {
    EventPayload::Policy {
        policy: "tool_blocker".to_owned(),
        action: "block".to_owned(),
        summary: "blocked tool call rm -rf".to_owned(),
        data: json!({"tool": "bash", "args": {"cmd": "rm -rf /"}}),
    }
}

fn ids(page: &CallPage) -> Vec<&str> {
    page.calls.iter().map(|c| c.call_id.as_str()).collect()
}

/// Raw SQL on the store's own connection, returning one text column.
async fn raw_strings(store: &Store, sql: &'static str) -> Vec<String> {
    match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
    }
}

async fn raw_execute(store: &Store, sql: &'static str) {
    match store {
        Store::Postgres(pool) => pool.execute(sql).await.map(|_| ()).unwrap(),
        Store::Sqlite(pool) => pool.execute(sql).await.map(|_| ()).unwrap(),
    }
}

// ---- tests ----------------------------------------------------------------

#[tokio::test]
async fn calls_and_events_round_trip_through_writer_and_reader() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        // Opening again re-runs the migrations: a no-op.
        let again = target.open().await;
        again.close().await;

        let start = started("call-a", 1_767_225_600_123_457);
        let mut done = completed(start.clone(), CallStatus::Completed);
        done.session_id = Some("session-1".to_owned());
        // A later row with a later created_at: the call keeps its place.
        done.created_at_micros += 5;
        let mut request = event("call-a", 0, request_payload());
        if let EventPayload::Request { headers, .. } = &mut request.payload {
            headers["authorization"] = json!("Bearer sk-secret");
            headers["x-api-key"] = json!("sk-secret");
        }
        let response = event("call-a", 1, response_payload(CallStatus::Completed));
        let policy = event("call-a", 2, policy_payload());
        write_through_writer(
            &store,
            vec![
                Record::Call(start.clone()),
                // Out of order on purpose: the reader orders by sequence.
                Record::Event(policy.clone()),
                Record::Event(request.clone()),
                Record::Event(response.clone()),
                Record::Call(started("call-b", 1)),
                Record::Call(done.clone()),
            ],
        )
        .await;

        let (summary, events) = store.get_call("call-a").await.unwrap().unwrap();
        let mut expected = done.clone();
        expected.created_at_micros = start.created_at_micros;
        assert_eq!(summary, expected);
        let mut expected_request = request.clone();
        if let EventPayload::Request { headers, .. } = &mut expected_request.payload {
            *headers = json!({"user-agent": "test", "anthropic-version": "2023-06-01"});
        }
        assert_eq!(events, vec![expected_request, response, policy]);

        let (b, b_events) = store.get_call("call-b").await.unwrap().unwrap();
        assert_eq!(b, started("call-b", 1));
        assert!(b_events.is_empty());
        assert!(store.get_call("missing").await.unwrap().is_none());

        // Payloads are JSON objects in the database, not strings holding
        // JSON; SQLite timestamps are integers.
        let (kinds, times) = match &store {
            Store::Postgres(_) => (
                "SELECT DISTINCT jsonb_typeof(payload) FROM conversation_events",
                "SELECT DISTINCT pg_typeof(created_at)::text FROM calls",
            ),
            Store::Sqlite(_) => (
                "SELECT DISTINCT json_type(payload) FROM conversation_events",
                "SELECT DISTINCT typeof(created_at) FROM calls \
                 UNION SELECT DISTINCT typeof(created_at) FROM conversation_events",
            ),
        };
        assert_eq!(raw_strings(&store, kinds).await, vec!["object"]);
        let want = if target.backend() == "sqlite" {
            "integer"
        } else {
            "timestamp with time zone"
        };
        assert_eq!(raw_strings(&store, times).await, vec![want]);
        if let Store::Sqlite(_) = &store {
            assert_eq!(
                raw_strings(&store, "PRAGMA journal_mode").await,
                vec!["wal"]
            );
        }
        store.close().await;
    })
    .await;
}

/// Seeds five calls for the filter tests; returns the store.
async fn seeded(target: &Target) -> Store {
    let store = target.open().await;
    let mut records = Vec::new();
    // id, api, model, status, session, created_at, event kinds
    type Seed<'a> = (
        &'a str,
        &'a str,
        &'a str,
        CallStatus,
        Option<&'a str>,
        i64,
        &'a [u32],
    );
    let spec: [Seed; 5] = [
        (
            "call-1",
            "openai",
            "gpt-4o",
            CallStatus::Completed,
            Some("s1"),
            1_000,
            &[0, 1],
        ),
        (
            "call-2",
            "anthropic",
            "claude",
            CallStatus::Blocked,
            Some("s1"),
            2_000,
            &[0, 2],
        ),
        (
            "call-3",
            "openai",
            "gpt-4o-mini",
            CallStatus::UpstreamError,
            None,
            3_000,
            &[0, 1],
        ),
        (
            "call-4",
            "anthropic",
            "claude",
            CallStatus::Completed,
            Some("s2"),
            4_000,
            &[0, 1, 2],
        ),
        (
            "call-special-xyz",
            "openai",
            "gpt-4o",
            CallStatus::InProgress,
            None,
            5_000,
            &[0],
        ),
    ];
    for (id, api, model, status, session, created, kinds) in spec {
        let mut call = started(id, created);
        call.api = api.to_owned();
        call.model = model.to_owned();
        call.session_id = session.map(str::to_owned);
        records.push(Record::Call(call.clone()));
        for (sequence, kind) in kinds.iter().enumerate() {
            let payload = match kind {
                0 => request_payload(),
                1 => response_payload(status),
                _ => policy_payload(),
            };
            records.push(Record::Event(event(id, sequence as u32, payload)));
        }
        if status != CallStatus::InProgress {
            records.push(Record::Call(completed(call, status)));
        }
    }
    write_through_writer(&store, records).await;
    store
}

#[tokio::test]
async fn list_filters_each_narrow_the_list() {
    on_each_backend(|target| async move {
        let store = seeded(&target).await;
        let list = |filter: CallFilter| {
            let store = store.clone();
            async move { store.list_calls(&filter).await.unwrap() }
        };
        let all = list(CallFilter::default()).await;
        assert_eq!(
            ids(&all),
            ["call-special-xyz", "call-4", "call-3", "call-2", "call-1"]
        );
        assert_eq!(all.next_cursor, None);
        assert_eq!(all.calls[1].status, CallStatus::Completed);

        let cases: Vec<(CallFilter, Vec<&str>)> = vec![
            (
                CallFilter {
                    model: Some("gpt-4o".into()),
                    ..Default::default()
                },
                vec!["call-special-xyz", "call-1"],
            ),
            (
                CallFilter {
                    api: Some("anthropic".into()),
                    ..Default::default()
                },
                vec!["call-4", "call-2"],
            ),
            (
                CallFilter {
                    status: Some(CallStatus::Completed),
                    ..Default::default()
                },
                vec!["call-4", "call-1"],
            ),
            (
                CallFilter {
                    session_id: Some("s1".into()),
                    ..Default::default()
                },
                vec!["call-2", "call-1"],
            ),
            (
                CallFilter {
                    event_type: Some("policy".into()),
                    ..Default::default()
                },
                vec!["call-4", "call-2"],
            ),
            (
                CallFilter {
                    event_type: Some("response".into()),
                    ..Default::default()
                },
                vec!["call-4", "call-3", "call-1"],
            ),
            (
                // since is inclusive, until exclusive.
                CallFilter {
                    since_micros: Some(2_000),
                    until_micros: Some(4_000),
                    ..Default::default()
                },
                vec!["call-3", "call-2"],
            ),
            (
                CallFilter {
                    call_id_contains: Some("xyz".into()),
                    ..Default::default()
                },
                vec!["call-special-xyz"],
            ),
            (
                // Case-sensitive on both databases; `_` and `%` are literal.
                CallFilter {
                    call_id_contains: Some("XYZ".into()),
                    ..Default::default()
                },
                vec![],
            ),
            (
                CallFilter {
                    call_id_contains: Some("%".into()),
                    ..Default::default()
                },
                vec![],
            ),
            (
                CallFilter {
                    api: Some("openai".into()),
                    status: Some(CallStatus::Completed),
                    ..Default::default()
                },
                vec!["call-1"],
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(ids(&list(filter.clone()).await), want, "{filter:?}");
        }

        let bad = CallFilter {
            cursor: Some("not-a-cursor".into()),
            ..Default::default()
        };
        assert!(matches!(
            store.list_calls(&bad).await,
            Err(StoreError::InvalidCursor)
        ));
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn cursor_pagination_has_no_duplicates_or_gaps() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        // Groups of three calls share a created_at: call_id breaks ties.
        let records: Vec<Record> = (0..25)
            .map(|i| {
                let mut call = started(&format!("call-{i:02}"), 10_000 + i / 3);
                if i % 2 == 0 {
                    call.api = "anthropic".into();
                }
                Record::Call(call)
            })
            .collect();
        write_through_writer(&store, records).await;
        let mut everything: Vec<(i64, String)> = (0..25)
            .map(|i| (10_000 + i / 3, format!("call-{i:02}")))
            .collect();
        everything.sort_by(|a, b| b.cmp(a));
        let everything: Vec<String> = everything.into_iter().map(|(_, id)| id).collect();

        let mut filter = CallFilter {
            limit: Some(10),
            ..Default::default()
        };
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let page = store.list_calls(&filter).await.unwrap();
            sizes.push(page.calls.len());
            seen.extend(page.calls.iter().map(|c| c.call_id.clone()));
            if sizes.len() == 1 {
                // A call arriving between pages does not shift the next ones.
                store
                    .write_batch(&[Record::Call(started("call-newest", 99_999))])
                    .await
                    .unwrap();
            }
            match page.next_cursor {
                Some(cursor) => filter.cursor = Some(cursor),
                None => break,
            }
        }
        assert_eq!(sizes, [10, 10, 5]);
        assert_eq!(seen, everything);

        // Pagination combined with a filter.
        let mut filter = CallFilter {
            api: Some("anthropic".into()),
            limit: Some(5),
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = store.list_calls(&filter).await.unwrap();
            seen.extend(page.calls.iter().map(|c| c.call_id.clone()));
            match page.next_cursor {
                Some(cursor) => filter.cursor = Some(cursor),
                None => break,
            }
        }
        let want: Vec<String> = everything
            .iter()
            .filter(|id| id[5..].parse::<u32>().unwrap() % 2 == 0)
            .cloned()
            .collect();
        assert_eq!(seen, want);
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_retried_batch_does_not_duplicate() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let start = started("call-r", 500);
        let batch = vec![
            Record::Call(start.clone()),
            Record::Event(event("call-r", 0, request_payload())),
            Record::Event(event("call-r", 1, response_payload(CallStatus::Completed))),
            Record::Call(completed(start.clone(), CallStatus::Completed)),
        ];
        store.write_batch(&batch).await.unwrap();
        store.write_batch(&batch).await.unwrap();
        // And once more through the writer.
        write_through_writer(&store, batch.clone()).await;
        let (summary, events) = store.get_call("call-r").await.unwrap().unwrap();
        assert_eq!(summary, completed(start, CallStatus::Completed));
        assert_eq!(events.len(), 2);
        assert_eq!(
            raw_strings(
                &store,
                "SELECT CAST(COUNT(*) AS TEXT) FROM conversation_events"
            )
            .await,
            vec!["2"]
        );
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn records_queued_during_an_outage_land_after_recovery() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let (sink, writer) = spawn_writer(store.clone(), fast_writer(), CancellationToken::new());
        let outage = target.break_writes().await;
        for i in 0..200 {
            sink.record(Record::Event(event("call-o", i, policy_payload())));
        }
        sink.record(Record::Call(started("call-o", 7)));
        wait_until("failed writes", || writer.stats().failed_batches >= 2).await;
        assert_eq!(writer.stats().written, 0);
        outage.end().await;
        wait_until("recovery", || writer.stats().written == 201).await;
        let stats = writer.stats();
        assert_eq!(
            (stats.dropped, stats.rejected, stats.queue_depth),
            (0, 0, 0)
        );
        let (_, events) = store.get_call("call-o").await.unwrap().unwrap();
        assert_eq!(
            events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            (0..200).collect::<Vec<_>>()
        );
        let report = writer.shutdown(Duration::from_secs(5)).await;
        assert_eq!(report.lost, 0);
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn queue_overflow_is_dropped_and_counted() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let options = WriterOptions {
            queue_capacity: 8,
            batch_size: 4,
            ..fast_writer()
        };
        let (sink, writer) = spawn_writer(store.clone(), options, CancellationToken::new());
        let outage = target.break_writes().await;
        // No await in this loop: on the test's single-threaded runtime the
        // writer cannot empty the queue meanwhile.
        for i in 0..100 {
            sink.record(Record::Event(event("call-q", i, policy_payload())));
        }
        let dropped = sink.dropped();
        let accepted = 100 - dropped;
        assert!((8..=12).contains(&accepted), "accepted {accepted}");
        assert_eq!(writer.stats().dropped, dropped);
        wait_until("a failed write", || writer.stats().failed_batches >= 1).await;
        outage.end().await;
        wait_until("recovery", || writer.stats().written == accepted).await;
        store
            .write_batch(&[Record::Call(started("call-q", 1))])
            .await
            .unwrap();
        let (_, events) = store.get_call("call-q").await.unwrap().unwrap();
        assert_eq!(events.len() as u64, accepted);
        // The first records were kept, the overflow dropped.
        assert_eq!(events[0].sequence, 0);
        let report = writer.shutdown(Duration::from_secs(5)).await;
        assert_eq!(report.lost, 0);
        assert_eq!(report.stats.dropped, dropped);
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_drains_everything_queued() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        // Batches would wait a minute to fill: only shutdown flushes them.
        let options = WriterOptions {
            batch_size: 10_000,
            flush_interval: Duration::from_secs(60),
            ..WriterOptions::default()
        };
        let (sink, writer) = spawn_writer(store.clone(), options, CancellationToken::new());
        sink.record(Record::Call(started("call-d", 1)));
        for i in 0..300 {
            sink.record(Record::Event(event("call-d", i, request_payload())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(writer.stats().written, 0);
        let report = writer.shutdown(Duration::from_secs(10)).await;
        assert!(!report.timed_out);
        assert_eq!(report.lost, 0);
        assert_eq!(report.stats.written, 301);
        // After shutdown, records are dropped and counted.
        sink.record(Record::Call(started("call-late", 1)));
        assert_eq!(sink.dropped(), 1);
        let (_, events) = store.get_call("call-d").await.unwrap().unwrap();
        assert_eq!(events.len(), 300);
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn cancel_token_drains_too() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let cancel = CancellationToken::new();
        let options = WriterOptions {
            flush_interval: Duration::from_secs(60),
            ..WriterOptions::default()
        };
        let (sink, writer) = spawn_writer(store.clone(), options, cancel.clone());
        sink.record(Record::Call(started("call-c", 1)));
        cancel.cancel();
        wait_until("drain on cancel", || writer.stats().written == 1).await;
        sink.record(Record::Call(started("call-c2", 1)));
        assert_eq!(sink.dropped(), 1);
        assert_eq!(writer.shutdown(Duration::from_secs(5)).await.lost, 0);
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_gives_up_at_its_deadline_and_counts_the_loss() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let (sink, writer) = spawn_writer(store.clone(), fast_writer(), CancellationToken::new());
        let outage = target.break_writes().await;
        for i in 0..10 {
            sink.record(Record::Event(event("call-x", i, policy_payload())));
        }
        wait_until("a failed write", || writer.stats().failed_batches >= 1).await;
        let report = writer.shutdown(Duration::from_millis(300)).await;
        assert!(report.timed_out);
        assert_eq!(report.lost, 10);
        assert_eq!(report.stats.written, 0);
        outage.end().await;
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_refused_record_is_dropped_without_blocking_the_others() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        match &store {
            Store::Postgres(_) => {
                raw_execute(
                    &store,
                    "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
                     BEGIN IF NEW.call_id = 'poison' THEN \
                       RAISE EXCEPTION 'poisoned' USING ERRCODE = 'check_violation'; \
                     END IF; RETURN NEW; END $$",
                )
                .await;
                raw_execute(
                    &store,
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON conversation_events \
                     FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
                )
                .await;
            }
            Store::Sqlite(_) => {
                raw_execute(
                    &store,
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON conversation_events \
                     WHEN NEW.call_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
                )
                .await;
            }
        }
        let (sink, writer) = spawn_writer(store.clone(), fast_writer(), CancellationToken::new());
        sink.record(Record::Call(started("good", 1)));
        sink.record(Record::Event(event("good", 0, request_payload())));
        sink.record(Record::Event(event("poison", 0, request_payload())));
        sink.record(Record::Event(event("good", 1, policy_payload())));
        wait_until("the good records", || {
            let stats = writer.stats();
            stats.written == 3 && stats.rejected == 1
        })
        .await;
        let (_, events) = store.get_call("good").await.unwrap().unwrap();
        assert_eq!(events.len(), 2);
        writer.shutdown(Duration::from_secs(5)).await;
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn nul_characters_are_stored() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let payload = EventPayload::Policy {
            policy: "p".into(),
            action: "a".into(),
            summary: "s".into(),
            data: json!({"text": "a\u{0}b", "literal": "\\u0000"}),
        };
        write_through_writer(
            &store,
            vec![
                Record::Call(started("call-nul", 1)),
                Record::Event(event("call-nul", 0, payload)),
            ],
        )
        .await;
        let (_, events) = store.get_call("call-nul").await.unwrap().unwrap();
        let EventPayload::Policy { data, .. } = &events[0].payload else {
            panic!("{events:?}")
        };
        // jsonb cannot hold NUL: PostgreSQL keeps U+FFFD in its place.
        let want = if target.backend() == "postgres" {
            "a\u{fffd}b"
        } else {
            "a\u{0}b"
        };
        assert_eq!(data["text"], Value::from(want));
        assert_eq!(data["literal"], Value::from("\\u0000"));
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn rows_from_a_newer_schema_are_refused_not_misread() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let mut future = event("call-v", 0, policy_payload());
        future.schema_version = SCHEMA_VERSION + 1;
        write_through_writer(
            &store,
            vec![Record::Call(started("call-v", 1)), Record::Event(future)],
        )
        .await;
        let error = store.get_call("call-v").await.unwrap_err();
        assert!(
            matches!(error, StoreError::NewerSchema { found, .. } if found == i64::from(SCHEMA_VERSION) + 1),
            "{error}"
        );
        assert!(error.to_string().contains("newer"), "{error}");

        raw_execute(&store, "UPDATE calls SET schema_version = 99").await;
        let error = store.list_calls(&CallFilter::default()).await.unwrap_err();
        assert!(matches!(error, StoreError::NewerSchema { found: 99, .. }), "{error}");
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn open_names_an_unknown_scheme_without_the_password() {
    let error = Store::open("mysql://user:hunter2@db/x", StoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(&error, StoreError::UnsupportedScheme { scheme } if scheme == "mysql"));
    let text = error.to_string();
    assert!(
        text.contains("`mysql:`") && !text.contains("hunter2"),
        "{text}"
    );
}

#[tokio::test]
async fn sqlite_in_memory_works_and_migrate_false_skips_migrations() {
    let store = Store::open("sqlite::memory:", StoreOptions::default())
        .await
        .unwrap();
    let call = started("mem", 1);
    store
        .write_batch(&[Record::Call(call.clone())])
        .await
        .unwrap();
    let (summary, _) = store.get_call("mem").await.unwrap().unwrap();
    assert_eq!(summary, call);

    let bare = Store::open(
        "sqlite::memory:",
        StoreOptions {
            migrate: false,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    let error = bare.write_batch(&[Record::Call(call)]).await.unwrap_err();
    // No table yet: worth retrying (an operator may migrate meanwhile).
    assert!(error.is_transient(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn scratch_measure() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let payload = request_payload();
        let size = serde_json::to_string(&payload).unwrap().len();
        for batch_size in [1usize, 16, 256, 1024] {
            let batches = (20_000 / batch_size).clamp(20, 400);
            let started_at = std::time::Instant::now();
            for b in 0..batches {
                let batch: Vec<Record> = (0..batch_size)
                    .map(|i| Record::Event(event(&format!("m{batch_size}-{b}"), i as u32, payload.clone())))
                    .collect();
                store.write_batch(&batch).await.unwrap();
            }
            let secs = started_at.elapsed().as_secs_f64();
            let rows = (batches * batch_size) as f64;
            eprintln!("{} batch={batch_size} payload={size}B: {:.0} rows/s, {:.2} ms/batch", target.backend(), rows / secs, secs * 1000.0 / batches as f64);
        }
        // End to end through the writer: 50k events + 10k call upserts.
        let (sink, writer) = spawn_writer(store.clone(), WriterOptions::default(), CancellationToken::new());
        let started_at = std::time::Instant::now();
        let mut sent = 0u64;
        for c in 0..10_000 {
            let id = format!("w{c}");
            sink.record(Record::Call(started(&id, c)));
            for s in 0..5 { sink.record(Record::Event(event(&id, s, payload.clone()))); }
            sent += 6;
            if c % 100 == 0 { tokio::task::yield_now().await; }
        }
        let enqueue = started_at.elapsed();
        let report = writer.shutdown(Duration::from_secs(120)).await;
        let secs = started_at.elapsed().as_secs_f64();
        eprintln!("{} writer: sent {sent}, written {}, dropped {}, {:.0} records/s, enqueue {:?} ({:.0} ns/record), last batch {} us", target.backend(), report.stats.written, report.stats.dropped, report.stats.written as f64 / secs, enqueue, enqueue.as_nanos() as f64 / sent as f64, report.stats.last_batch_micros);
        // list query timing on the full table
        let t = std::time::Instant::now();
        for _ in 0..100 { store.list_calls(&CallFilter { model: Some("gpt-4o".into()), ..Default::default() }).await.unwrap(); }
        eprintln!("{} list_calls(model, 50 rows): {:.2} ms", target.backend(), t.elapsed().as_secs_f64() * 10.0);
        let t = std::time::Instant::now();
        for _ in 0..100 { store.get_call("w5000").await.unwrap(); }
        eprintln!("{} get_call(5 events): {:.2} ms", target.backend(), t.elapsed().as_secs_f64() * 10.0);
        store.close().await;
    })
    .await;
}
