-- Event store, PostgreSQL flavour. Keep in step with ../sqlite/0001_event_store.sql:
-- same tables, same columns, same meaning (controlplane/src/events.rs is the schema).
-- Never edit a migration once released: sqlx checks their checksums. Add a new file.

-- One row per call: what a request log lists and filters on. Written twice
-- per call (an upsert at start, another at completion).
CREATE TABLE calls (
    call_id                TEXT PRIMARY KEY,
    created_at             TIMESTAMPTZ NOT NULL,
    completed_at           TIMESTAMPTZ,
    api                    TEXT NOT NULL,
    model                  TEXT NOT NULL,
    stream                 BOOLEAN NOT NULL,
    status                 TEXT NOT NULL,
    duration_ms            DOUBLE PRECISION,
    time_to_first_chunk_ms DOUBLE PRECISION,
    input_tokens           BIGINT,
    output_tokens          BIGINT,
    session_id             TEXT,
    policy_changed         BOOLEAN NOT NULL DEFAULT FALSE,
    -- W3C trace id of the call's span, once tracing links calls to traces.
    trace_id               TEXT,
    -- events.rs SCHEMA_VERSION of the writer; a reader refuses newer rows.
    schema_version         INTEGER NOT NULL
);

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
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id        TEXT NOT NULL,
    sequence       BIGINT NOT NULL,
    -- The payload's "type" tag: request, response, policy.
    event_type     TEXT NOT NULL,
    -- The serialized EventPayload. Must be a JSON object: a JSON *string*
    -- holding JSON (double encoding) is what once made payloads look empty.
    payload        JSONB NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    created_at     TIMESTAMPTZ NOT NULL,
    schema_version INTEGER NOT NULL,
    -- Also the (call_id, sequence) index reading a call uses, and what makes
    -- a retried batch idempotent (ON CONFLICT DO NOTHING).
    CONSTRAINT conversation_events_call_sequence_key UNIQUE (call_id, sequence)
);

-- "Calls that have an event of type X" and per-type time queries.
CREATE INDEX conversation_events_type_created_at_idx
    ON conversation_events (event_type, created_at DESC);
