//! `luthien-store-bench`: sustained write rate of the event store through
//! the real batched writer (`EventSink` → background writer → database), on
//! SQLite and PostgreSQL.
//!
//! Each run records whole calls (a call row, a request event, a response
//! event, the completed call row — what the recorder writes for one call)
//! as fast as the queue takes them, waits until everything is written, and
//! reports records per second and calls per second. A full queue drops and
//! counts (it never blocks), so the producer yields when the queue is deep
//! to measure the writer, not the drop path.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use luthien_store::events::{
    CallEvent, CallStatus, CallSummary, EventPayload, SCHEMA_VERSION, TokenUsage,
};
use luthien_store::{Record, Store, StoreOptions, WriterOptions, spawn_writer};
use luthien_tests::databases::TestDatabase;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Sustained event-store write rate through the batched writer")]
struct Args {
    /// Calls to record per database.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("| database | calls | records | seconds | records/s | calls/s | dropped |");
    println!("|---|---|---|---|---|---|---|");
    for database in TestDatabase::both().await {
        let (records, seconds, dropped) = run(&database.url, &args)
            .await
            .with_context(|| format!("benchmarking {}", database.backend()))?;
        println!(
            "| {} | {} | {records} | {seconds:.2} | {:.0} | {:.0} | {dropped} |",
            database.backend(),
            args.calls,
            records as f64 / seconds,
            args.calls as f64 / seconds,
        );
    }
    Ok(())
}

async fn run(url: &str, args: &Args) -> anyhow::Result<(u64, f64, u64)> {
    let store = Store::open(url, StoreOptions::default()).await?;
    let options = WriterOptions {
        batch_size: args.batch_size,
        ..WriterOptions::default()
    };
    let capacity = options.queue_capacity as u64;
    let (sink, writer) = spawn_writer(store.clone(), options, CancellationToken::new());
    let started = Instant::now();
    for call in 0..args.calls {
        for record in call_records(call) {
            while sink.stats().queue_depth + 64 > capacity {
                tokio::task::yield_now().await;
            }
            sink.record(record);
        }
    }
    let report = writer.shutdown(Duration::from_secs(600)).await;
    let seconds = started.elapsed().as_secs_f64();
    store.close().await;
    Ok((report.stats.written, seconds, report.stats.dropped))
}

/// What the recorder writes for one completed, non-streamed call.
fn call_records(index: usize) -> [Record; 4] {
    let call_id = format!("bench-{index:08}-{}", uuid::Uuid::new_v4().simple());
    let now = 1_800_000_000_000_000 + index as i64;
    let request = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarise the quick brown fox story in two sentences."}
        ],
        "max_tokens": 256,
    });
    let response = json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "A quick brown fox jumps over a lazy dog. The dog does not mind."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 31, "completion_tokens": 17, "total_tokens": 48},
    });
    let summary = |status, completed| CallSummary {
        call_id: call_id.clone(),
        created_at_micros: now,
        completed_at_micros: completed,
        api: luthien_api::Api::OpenAiChat,
        model: "gpt-4o-mini".into(),
        stream: false,
        status,
        duration_ms: completed.map(|_| 412.0),
        time_to_first_chunk_ms: completed.map(|_| 412.0),
        usage: TokenUsage {
            input_tokens: Some(31),
            output_tokens: Some(17),
        },
        session_id: None,
        trace_id: None,
        policy_changed: false,
        control_plane_id: None,
        preview: Some("Summarise the attached report in three sentences.".into()),
        policies: Vec::new(),
    };
    let event = |sequence, payload| CallEvent {
        call_id: call_id.clone(),
        sequence,
        timestamp_micros: now,
        schema_version: SCHEMA_VERSION,
        payload,
    };
    [
        Record::Call(summary(CallStatus::InProgress, None)),
        Record::Event(event(
            0,
            EventPayload::Request {
                original: request.clone().into(),
                final_: request.into(),
                headers: json!({"user-agent": "bench"}),
            },
        )),
        Record::Event(event(
            1,
            EventPayload::Response {
                original: Some(response.clone().into()),
                final_: Some(response.into()),
                status: CallStatus::Completed,
                upstream_status: Some(200),
                detail: None,
                chunks_received: 1,
                chunks_sent: 1,
                time_to_first_chunk_ms: Some(412.0),
                duration_ms: Some(412.0),
                overhead_ms: Some(0.4),
                usage: TokenUsage {
                    input_tokens: Some(31),
                    output_tokens: Some(17),
                },
            },
        )),
        Record::Call(summary(CallStatus::Completed, Some(now + 412_000))),
    ]
}
