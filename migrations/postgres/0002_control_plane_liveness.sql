-- Which control plane recorded each call, and when each control plane was last alive, so
-- that a call left in progress by a control plane that died is marked `abandoned`.
-- Keep in step with ../sqlite/0002_control_plane_liveness.sql.

-- The recording control plane's instance id (NULL for calls recorded before this column).
ALTER TABLE calls ADD COLUMN control_plane_id TEXT;

-- One row per control plane process, refreshed by its heartbeat.
CREATE TABLE control_planes (
    id           TEXT PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL
);

-- The sweep's search: calls still in progress, oldest first.
CREATE INDEX calls_in_progress_idx ON calls (created_at) WHERE status = 'in_progress';
