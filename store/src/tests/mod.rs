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
        api: luthien_api::Api::OpenAiChat,
        model: "gpt-4o".to_owned(),
        stream: true,
        status: CallStatus::InProgress,
        duration_ms: None,
        time_to_first_chunk_ms: None,
        usage: TokenUsage::default(),
        session_id: None,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
        policy_changed: false,
        control_plane_id: None,
        preview: Some("What is the capital of France?".to_owned()),
        policies: Vec::new(),
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
    call.policies = vec!["codename".to_owned(), "no \"shell\", please".to_owned()];
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
        original: body.into(),
        final_: rewritten.into(),
        headers: json!({"user-agent": "test", "anthropic-version": "2023-06-01"}),
    }
}

fn response_payload(status: CallStatus) -> EventPayload {
    EventPayload::Response {
        original: Some(
            json!({"id": "chatcmpl-1", "choices": [{"message": {"content": "hi"}}]}).into(),
        ),
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

/// An event's payload as the database holds it.
async fn raw_payload(store: &Store, call_id: &str) -> String {
    match store {
        Store::Postgres(pool) => {
            sqlx::query_scalar("SELECT payload::text FROM conversation_events WHERE call_id = $1")
                .bind(call_id.to_owned())
                .fetch_one(pool)
                .await
                .unwrap()
        }
        Store::Sqlite(pool) => {
            sqlx::query_scalar("SELECT payload FROM conversation_events WHERE call_id = ?")
                .bind(call_id.to_owned())
                .fetch_one(pool)
                .await
                .unwrap()
        }
    }
}

mod liveness;
mod reader;
mod retention;
mod writer;
