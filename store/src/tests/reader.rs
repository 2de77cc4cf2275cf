//! The reader side on both databases: round trips, filters, pagination,
//! schema versions, and opening stores.

use super::*;

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
        call.api = api.parse().unwrap();
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
                    api: Some(luthien_api::Api::AnthropicMessages),
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
                    api: Some(luthien_api::Api::OpenAiChat),
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
                    call.api = luthien_api::Api::AnthropicMessages;
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
            api: Some(luthien_api::Api::AnthropicMessages),
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

/// Schema 2 stores a body no policy changed once (the final as a marker the reader expands);
/// schema 1 rows, with both copies, read as they always did.
#[tokio::test]
async fn an_unchanged_body_is_stored_once_and_older_rows_still_read() {
    on_each_backend(|target| async move {
        let store = target.open().await;
        let body =
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "once only"}]});
        let unchanged = EventPayload::Request {
            original: body.clone().into(),
            final_: body.into(),
            headers: json!({}),
        };
        write_through_writer(
            &store,
            vec![
                Record::Call(started("call-same", 1)),
                Record::Event(event("call-same", 0, unchanged.clone())),
            ],
        )
        .await;
        let stored = raw_payload(&store, "call-same").await;
        assert_eq!(stored.matches("once only").count(), 1, "{stored}");
        assert!(stored.contains("luthien_same_as_original"), "{stored}");
        let (_, events) = store.get_call("call-same").await.unwrap().unwrap();
        assert_eq!(events[0].payload, unchanged);
        assert_eq!(events[0].schema_version, SCHEMA_VERSION);

        // A row an older writer stored: both copies, schema 1, written as it is.
        let mut old = event("call-v1", 0, unchanged.clone());
        old.schema_version = 1;
        store
            .write_batch(&[Record::Call(started("call-v1", 1)), Record::Event(old)])
            .await
            .unwrap();
        assert_eq!(
            raw_payload(&store, "call-v1")
                .await
                .matches("once only")
                .count(),
            2
        );
        let (_, events) = store.get_call("call-v1").await.unwrap().unwrap();
        assert_eq!(events[0].payload, unchanged);
        assert_eq!(events[0].schema_version, 1);
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
