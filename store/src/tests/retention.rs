//! Retention on both databases: what a batch deletes and keeps, batching,
//! concurrent deleters (several control planes on one database) next to a
//! busy writer, and the background task with its counters and outages.

use super::*;
use std::sync::Arc;

use crate::retention::{RetentionOptions, spawn_retention};

/// A call as the recorder hands it over: its start, `events` events and its
/// completion.
fn call_records(call_id: &str, created: i64, events: u32) -> Vec<Record> {
    let start = started(call_id, created);
    let mut records = vec![Record::Call(start.clone())];
    for sequence in 0..events {
        let payload = match sequence {
            0 => request_payload(),
            1 => response_payload(CallStatus::Completed),
            _ => policy_payload(),
        };
        records.push(Record::Event(event(call_id, sequence, payload)));
    }
    records.push(Record::Call(completed(start, CallStatus::Completed)));
    records
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

async fn call_ids(store: &Store) -> Vec<String> {
    raw_strings(store, "SELECT call_id FROM calls ORDER BY call_id").await
}

fn now_micros() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

const HOUR_MICROS: i64 = 3_600_000_000;

/// Deletes batches until one comes back short; returns the batches.
async fn delete_all(store: &Store, cutoff: i64, batch: u32) -> Vec<Purged> {
    let mut batches = Vec::new();
    loop {
        let purged = store
            .delete_calls_before(cutoff, batch)
            .await
            .unwrap_or_else(|e| panic!("retention batch on {}: {e}", store.backend()));
        batches.push(purged);
        if purged.calls < u64::from(batch) {
            return batches;
        }
    }
}

fn total(batches: &[Purged]) -> Purged {
    batches.iter().fold(Purged::default(), |sum, b| Purged {
        calls: sum.calls + b.calls,
        events: sum.events + b.events,
    })
}

#[tokio::test]
async fn old_calls_go_with_all_their_events_and_newer_ones_stay_whole() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let cutoff = 2_000_000;
        let mut records = Vec::new();
        for i in 0..4 {
            records.extend(call_records(&format!("old-{i}"), 1_000_000 + i * 1_000, 3));
        }
        // An old call without events, and one exactly at the cutoff (kept:
        // only calls created strictly before it go).
        records.extend(call_records("old-empty", 1_500_000, 0));
        records.extend(call_records("edge", cutoff, 1));
        for i in 0..3 {
            records.extend(call_records(&format!("new-{i}"), 3_000_000 + i, 2));
        }
        write_through_writer(&store, records).await;
        let kept_before = store.get_call("new-1").await.unwrap().unwrap();

        let purged = store.delete_calls_before(cutoff, 100).await.unwrap();
        assert_eq!(
            purged,
            Purged {
                calls: 5,
                events: 12
            }
        );

        assert_eq!(call_ids(&store).await, ["edge", "new-0", "new-1", "new-2"]);
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM conversation_events WHERE call_id LIKE 'old-%'"
            )
            .await,
            0
        );
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM conversation_events").await,
            1 + 3 * 2
        );
        assert!(store.get_call("old-0").await.unwrap().is_none());
        assert_eq!(store.get_call("new-1").await.unwrap().unwrap(), kept_before);
        assert_eq!(store.get_call("edge").await.unwrap().unwrap().1.len(), 1);
        let listed = store.list_calls(&CallFilter::default()).await.unwrap();
        assert_eq!(ids(&listed), ["new-2", "new-1", "new-0", "edge"]);

        // Nothing older left: a second run deletes nothing and fails nothing.
        assert_eq!(
            store.delete_calls_before(cutoff, 100).await.unwrap(),
            Purged::default()
        );
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn small_batches_delete_oldest_first_and_add_up() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let mut records = Vec::new();
        // Created in reverse id order, so "oldest first" is not "smallest
        // id first".
        for i in 0..10 {
            records.extend(call_records(
                &format!("old-{i:02}"),
                1_000_000 - i * 1_000,
                2,
            ));
        }
        records.extend(call_records("new", 5_000_000, 2));
        store.write_batch(&records).await.unwrap();

        let first = store.delete_calls_before(2_000_000, 3).await.unwrap();
        assert_eq!(
            first,
            Purged {
                calls: 3,
                events: 6
            }
        );
        let left = call_ids(&store).await;
        assert_eq!(
            left,
            [
                "new", "old-00", "old-01", "old-02", "old-03", "old-04", "old-05", "old-06"
            ]
        );

        let rest = delete_all(&store, 2_000_000, 3).await;
        assert_eq!(
            rest.iter().map(|b| b.calls).collect::<Vec<_>>(),
            [3, 3, 1],
            "{rest:?}"
        );
        assert_eq!(
            total(&rest),
            Purged {
                calls: 7,
                events: 14
            }
        );
        assert_eq!(call_ids(&store).await, ["new"]);
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM conversation_events").await,
            2
        );
        // A batch of 0 counts as 1 rather than looping forever on nothing.
        store
            .write_batch(&call_records("old-late", 10, 1))
            .await
            .unwrap();
        assert_eq!(
            store.delete_calls_before(2_000_000, 0).await.unwrap(),
            Purged {
                calls: 1,
                events: 1
            }
        );
        store.close().await;
    })
    .await;
}

/// Two control planes deleting on one database at once, while a third
/// keeps writing new calls: nothing fails, every old call goes exactly
/// once, the writer never fails a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deleters_beside_a_busy_writer_do_not_fail() {
    on_each_backend(|target| async move {
        // Production's lock wait, not the tests' short one: a writer
        // waiting for a retention batch must wait, not fail.
        let options = StoreOptions {
            sqlite_busy_timeout: Duration::from_secs(5),
            ..test_options()
        };
        let open = || Store::open(&target.url, options.clone());
        let (a, b, writing) = (
            open().await.unwrap(),
            open().await.unwrap(),
            open().await.unwrap(),
        );
        let mut records = Vec::new();
        for i in 0..120 {
            records.extend(call_records(&format!("old-{i:03}"), 1_000 + i, 2));
        }
        a.write_batch(&records).await.unwrap();

        let (sink, writer) = spawn_writer(writing.clone(), fast_writer(), CancellationToken::new());
        let feed = tokio::spawn(async move {
            for i in 0..200 {
                for record in call_records(&format!("new-{i:03}"), 9_000_000 + i, 2) {
                    sink.record(record);
                }
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        let first = tokio::spawn({
            let a = a.clone();
            async move { delete_all(&a, 5_000_000, 7).await }
        });
        let second = tokio::spawn({
            let b = b.clone();
            async move { delete_all(&b, 5_000_000, 7).await }
        });
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        feed.await.unwrap();
        let report = writer.shutdown(Duration::from_secs(30)).await;
        assert_eq!(report.stats.failed_batches, 0, "{report:?}");
        assert_eq!(report.stats.written, 200 * 4);

        let deleted = total(&[total(&first), total(&second)]);
        assert_eq!(
            deleted,
            Purged {
                calls: 120,
                events: 240
            },
            "{first:?} {second:?}"
        );
        // Both again, at once, on nothing: no error, nothing deleted.
        let (again_a, again_b) = tokio::join!(
            a.delete_calls_before(5_000_000, 7),
            b.delete_calls_before(5_000_000, 7)
        );
        assert_eq!(again_a.unwrap(), Purged::default());
        assert_eq!(again_b.unwrap(), Purged::default());

        assert_eq!(
            count(&a, "SELECT COUNT(*) FROM calls WHERE call_id LIKE 'old-%'").await,
            0
        );
        assert_eq!(
            count(
                &a,
                "SELECT COUNT(*) FROM conversation_events WHERE call_id LIKE 'old-%'"
            )
            .await,
            0
        );
        assert_eq!(count(&a, "SELECT COUNT(*) FROM calls").await, 200);
        assert_eq!(
            count(&a, "SELECT COUNT(*) FROM conversation_events").await,
            400
        );
        for store in [a, b, writing] {
            store.close().await;
        }
    })
    .await;
}

fn quick_retention() -> RetentionOptions {
    RetentionOptions {
        max_age: Duration::from_secs(3_600),
        interval: Duration::from_millis(100),
        batch_size: 4,
        pause: Duration::from_millis(1),
        metrics: Arc::default(),
    }
}

#[tokio::test]
async fn the_retention_task_deletes_old_calls_every_interval_and_counts_them() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let now = now_micros();
        let mut records = Vec::new();
        for i in 0..10 {
            records.extend(call_records(
                &format!("old-{i}"),
                now - 2 * HOUR_MICROS + i,
                2,
            ));
        }
        records.extend(call_records("recent", now - HOUR_MICROS / 2, 2));
        write_through_writer(&store, records).await;
        let options = quick_retention();
        let metrics = Arc::clone(&options.metrics);
        let retention = spawn_retention(store.clone(), options, CancellationToken::new());
        wait_until("the first run", || retention.stats().deleted_calls == 10).await;
        let stats = retention.stats();
        assert_eq!(stats.deleted_events, 20);
        assert_eq!(stats.failed_runs, 0);
        assert_eq!(call_ids(&store).await, ["recent"]);
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM conversation_events").await,
            2
        );
        assert_eq!(metrics.retention_deleted_calls.get(), 10);
        assert_eq!(metrics.retention_deleted_events.get(), 20);
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let rendered = luthien_telemetry::metrics::encode(&registry);
        assert!(
            rendered.contains("luthien_store_retention_deleted_calls_total 10"),
            "{rendered}"
        );

        // Calls that turn old later go at a later run.
        let runs = retention.stats().runs;
        store
            .write_batch(&call_records("late", now - 3 * HOUR_MICROS, 1))
            .await
            .unwrap();
        wait_until("a later run", || retention.stats().deleted_calls == 11).await;
        assert!(retention.stats().runs > runs);
        assert_eq!(call_ids(&store).await, ["recent"]);

        let stats = tokio::time::timeout(Duration::from_secs(5), retention.shutdown())
            .await
            .expect("retention stops promptly");
        assert_eq!((stats.deleted_calls, stats.deleted_events), (11, 21));
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn the_retention_task_survives_an_outage_and_catches_up() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let now = now_micros();
        let mut records = Vec::new();
        for i in 0..6 {
            records.extend(call_records(
                &format!("old-{i}"),
                now - 2 * HOUR_MICROS + i,
                1,
            ));
        }
        store.write_batch(&records).await.unwrap();
        let outage = target.break_writes().await;
        let cancel = CancellationToken::new();
        let options = quick_retention();
        let metrics = Arc::clone(&options.metrics);
        let retention = spawn_retention(store.clone(), options, cancel.clone());
        wait_until("a failed run", || retention.stats().failed_runs >= 1).await;
        assert_eq!(retention.stats().deleted_calls, 0);
        assert!(metrics.retention_failures.get() >= 1);
        outage.end().await;
        wait_until("recovery", || retention.stats().deleted_calls == 6).await;
        assert!(call_ids(&store).await.is_empty());

        // The shared shutdown token stops it too.
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), retention.shutdown())
            .await
            .expect("retention stops promptly");
        store.close().await;
    })
    .await;
}

/// PostgreSQL: a call locked elsewhere (another control plane's batch, or
/// the writer updating it) is skipped, not waited for, and goes next time.
#[tokio::test]
async fn postgres_skips_calls_locked_elsewhere_instead_of_waiting() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let Store::Postgres(pool) = &store else {
            store.close().await;
            return;
        };
        let mut records = Vec::new();
        for i in 0..3 {
            records.extend(call_records(&format!("old-{i}"), 1_000 + i, 2));
        }
        store.write_batch(&records).await.unwrap();
        let mut other = pool.begin().await.unwrap();
        sqlx::query("SELECT call_id FROM calls WHERE call_id = 'old-0' FOR UPDATE")
            .execute(&mut *other)
            .await
            .unwrap();
        let purged = tokio::time::timeout(
            Duration::from_secs(5),
            store.delete_calls_before(1_000_000, 10),
        )
        .await
        .expect("a locked call is skipped, not waited for")
        .unwrap();
        assert_eq!(
            purged,
            Purged {
                calls: 2,
                events: 4
            }
        );
        other.commit().await.unwrap();
        assert_eq!(
            store.delete_calls_before(1_000_000, 10).await.unwrap(),
            Purged {
                calls: 1,
                events: 2
            }
        );
        assert!(call_ids(&store).await.is_empty());
        store.close().await;
    })
    .await;
}
