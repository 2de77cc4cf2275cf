//! The background writer on both databases: idempotent retries, outages,
//! overflow, refused records and shutdown.

use super::*;

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
        // The backoff shows how far behind the store is: it doubles per failure.
        let behind = writer.stats().retry_backoff_micros;
        assert!(
            behind >= 2 * fast_writer().retry_initial.as_micros() as u64,
            "{behind}"
        );
        outage.end().await;
        wait_until("recovery", || writer.stats().written == 201).await;
        let stats = writer.stats();
        assert_eq!(stats.retry_backoff_micros, 0, "caught up");
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

/// A call that has ended is never rewritten, in the same batch or a later one: a record reusing
/// its id (a forged or replayed `CallStart`) changes nothing.
#[tokio::test]
async fn an_ended_call_is_never_rewritten() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let start = started("call-ended", 1_000);
        let done = completed(start.clone(), CallStatus::Completed);
        store
            .write_batch(&[Record::Call(start.clone())])
            .await
            .unwrap();
        store
            .write_batch(&[Record::Call(done.clone())])
            .await
            .unwrap();
        let mut forged = completed(start.clone(), CallStatus::Blocked);
        forged.model = "forged".to_owned();
        for record in [started("call-ended", 2_000), forged] {
            store.write_batch(&[Record::Call(record)]).await.unwrap();
        }
        let (call, _) = store.get_call("call-ended").await.unwrap().unwrap();
        assert_eq!(call, done, "{}", target.backend());
        store.close().await;
    })
    .await;
}

/// `--store-payloads final` keeps what went upstream and what the client received, and marks
/// the originals as not stored; `none` keeps no body; policy events stay. The calls list's
/// preview goes with the final request.
#[tokio::test]
async fn stored_payloads_keep_out_what_the_setting_says() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        for (setting, original_kept, final_kept) in [
            (crate::redact::StoredPayloads::Final, false, true),
            (crate::redact::StoredPayloads::None, false, false),
            (crate::redact::StoredPayloads::Original, true, false),
        ] {
            let id = format!("call-{}", setting.as_str());
            let (sink, writer) = spawn_writer(
                store.clone(),
                WriterOptions {
                    stored_payloads: setting,
                    ..fast_writer()
                },
                CancellationToken::new(),
            );
            sink.record(Record::Call(started(&id, 1)));
            sink.record(Record::Event(event(&id, 0, request_payload())));
            sink.record(Record::Event(event(&id, 1, policy_payload())));
            writer.shutdown(Duration::from_secs(5)).await;
            let (summary, events) = store.get_call(&id).await.unwrap().unwrap();
            // The list's preview is a piece of the final request: kept with it or not at all.
            assert_eq!(summary.preview.is_some(), final_kept, "{setting:?}");
            let EventPayload::Request {
                original, final_, ..
            } = &events[0].payload
            else {
                panic!("a request first");
            };
            let marked = |body: &crate::events::Body, kept: bool| {
                assert_eq!(
                    crate::redact::is_not_stored_marker(body),
                    !kept,
                    "{setting:?}: {body:?}"
                );
            };
            marked(original, original_kept);
            marked(final_, final_kept);
            if !original_kept {
                assert_eq!(
                    original.value()["setting"],
                    format!("--store-payloads {}", setting.as_str())
                );
            }
            assert!(matches!(events[1].payload, EventPayload::Policy { .. }));
        }
        store.close().await;
    })
    .await;
}
