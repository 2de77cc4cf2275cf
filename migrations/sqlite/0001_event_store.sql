-- Event store, SQLite flavour. Keep in step with ../postgres/0001_event_store.sql:
-- same tables, same columns, same meaning (controlplane/src/events.rs is the schema).
-- Never edit a migration once released: sqlx checks their checksums. Add a new file.
--
-- Timestamps are INTEGER unix microseconds, not text. SQLite has no timestamp
-- type; text timestamps (whatever format a driver picked) are what broke the
-- previous system's viewer: they sorted and compared as strings and parsed
-- differently per client. Integers sort, compare and convert exactly.
-- STRICT makes SQLite refuse a value of the wrong type instead of storing it.

-- One row per call: what a request log lists and filters on. Written twice
-- per call (an upsert at start, another at completion).
CREATE TABLE calls (
    call_id                TEXT PRIMARY KEY NOT NULL,
    created_at             INTEGER NOT NULL,
    completed_at           INTEGER,
    api                    TEXT NOT NULL,
    model                  TEXT NOT NULL,
    stream                 INTEGER NOT NULL CHECK (stream IN (0, 1)),
    status                 TEXT NOT NULL,
    duration_ms            REAL,
    time_to_first_chunk_ms REAL,
    input_tokens           INTEGER,
    output_tokens          INTEGER,
    session_id             TEXT,
    policy_changed         INTEGER NOT NULL DEFAULT 0 CHECK (policy_changed IN (0, 1)),
    -- W3C trace id of the call's span, once tracing links calls to traces.
    trace_id               TEXT,
    -- events.rs SCHEMA_VERSION of the writer; a reader refuses newer rows.
    schema_version         INTEGER NOT NULL
) STRICT;

-- The list view: newest first, keyset pagination on (created_at, call_id).
CREATE INDEX calls_created_at_idx ON calls (created_at DESC, call_id DESC);
-- One per filter of the list view, each ordered like the list.
CREATE INDEX calls_model_created_at_idx ON calls (model, created_at DESC, call_id DESC);
CREATE INDEX calls_status_created_at_idx ON calls (status, created_at DESC, call_id DESC);
CREATE INDEX calls_session_created_at_idx ON calls (session_id, created_at DESC, call_id DESC);
CREATE INDEX calls_api_created_at_idx ON calls (api, created_at DESC, call_id DESC);

-- Everything that happened in a call, in order. No foreign key to calls on
-- purpose: the writer drops records when its queue is full, and an event
-- whose call row was dropped must still be stored, not fail its batch.
CREATE TABLE conversation_events (
    id             INTEGER PRIMARY KEY,
    call_id        TEXT NOT NULL,
    sequence       INTEGER NOT NULL,
    -- The payload's "type" tag: request, response, policy.
    event_type     TEXT NOT NULL,
    -- The serialized EventPayload as JSON text. Must be a JSON object: a
    -- JSON *string* holding JSON (double encoding) is what once made
    -- payloads look empty.
    payload        TEXT NOT NULL CHECK (json_type(payload) = 'object'),
    created_at     INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    -- Also the (call_id, sequence) index reading a call uses, and what makes
    -- a retried batch idempotent (ON CONFLICT DO NOTHING).
    UNIQUE (call_id, sequence)
) STRICT;

-- "Calls that have an event of type X" and per-type time queries.
CREATE INDEX conversation_events_type_created_at_idx
    ON conversation_events (event_type, created_at DESC);
