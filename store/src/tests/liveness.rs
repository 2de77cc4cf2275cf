//! The sweep of calls a dead control plane left in progress, on both databases: which calls
//! it marks (only those of control planes not seen since the cutoff, and old enough), the
//! event that says why, and that a call it marked, or one that ended, is never touched again.

use super::*;

const MINUTE: i64 = 60_000_000;

fn of(control_plane: Option<&str>, call: CallSummary) -> CallSummary {
    CallSummary {
        control_plane_id: control_plane.map(str::to_owned),
        ..call
    }
}

#[tokio::test]
async fn calls_of_control_planes_that_stopped_are_marked_abandoned_with_the_reason() {
    on_each_backend(|target| async move {
        let store = Store::open(&target.url, test_options()).await.unwrap();
        let now = luthien_api::time::unix_micros();
        let old = now - 5 * MINUTE;
        store.heartbeat("alive", old, now).await.unwrap();
        store
            .heartbeat("dead", old, now - 3 * MINUTE)
            .await
            .unwrap();
        let records = vec![
            // A dead control plane's call, with one event already.
            Record::Call(of(Some("dead"), started("dead-old", old))),
            Record::Event(event("dead-old", 0, request_payload())),
            // Too young to sweep, whoever recorded it.
            Record::Call(of(Some("dead"), started("dead-young", now - 1_000_000))),
            // A live control plane's long call.
            Record::Call(of(Some("alive"), started("alive-old", old))),
            // Ended: never touched.
            Record::Call(completed(
                of(Some("dead"), started("dead-ended", old)),
                CallStatus::Completed,
            )),
            // Recorded before control planes wrote their id.
            Record::Call(started("unknown-old", old)),
        ];
        store.write_batch(&records).await.unwrap();

        let cutoff = now - MINUTE;
        let mut swept = store
            .sweep_abandoned(cutoff, now, "sweeper", 100)
            .await
            .unwrap();
        swept.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        assert_eq!(
            swept,
            vec![
                Swept {
                    call_id: "dead-old".into(),
                    control_plane_id: Some("dead".into()),
                },
                Swept {
                    call_id: "unknown-old".into(),
                    control_plane_id: None,
                },
            ]
        );
        let (summary, events) = store.get_call("dead-old").await.unwrap().unwrap();
        assert_eq!(summary.status, CallStatus::Abandoned);
        assert_eq!(summary.completed_at_micros, Some(now));
        assert_eq!(summary.control_plane_id.as_deref(), Some("dead"));
        assert_eq!(events.len(), 2, "the sweep's event follows the call's own");
        let EventPayload::Response { status, detail, .. } = &events[1].payload else {
            panic!("expected a response event, got {:?}", events[1].payload);
        };
        assert_eq!(*status, CallStatus::Abandoned);
        let detail = detail.as_deref().unwrap();
        assert!(
            detail.contains("control plane dead") && detail.contains("sweeper"),
            "{detail}"
        );
        for (id, status) in [
            ("dead-young", CallStatus::InProgress),
            ("alive-old", CallStatus::InProgress),
            ("dead-ended", CallStatus::Completed),
        ] {
            let (summary, _) = store.get_call(id).await.unwrap().unwrap();
            assert_eq!(summary.status, status, "{id}");
        }

        // A second sweep finds nothing; a late end of a swept call changes nothing.
        assert!(
            store
                .sweep_abandoned(cutoff, now, "sweeper", 100)
                .await
                .unwrap()
                .is_empty()
        );
        let late = completed(
            of(Some("dead"), started("dead-old", old)),
            CallStatus::Completed,
        );
        store.write_batch(&[Record::Call(late)]).await.unwrap();
        let (summary, _) = store.get_call("dead-old").await.unwrap().unwrap();
        assert_eq!(summary.status, CallStatus::Abandoned);
        store.close().await;
    })
    .await;
}
