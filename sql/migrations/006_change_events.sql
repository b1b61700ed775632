-- 006: deploys and configuration changes of services (issue 20): announced by CI/CD
-- through the webhook's POST /changes (signed), or found by a catalogue query over
-- Prometheus. The detector reads the recent ones each cycle: a change of a service
-- shortly before an incident's onset is its evidence, and names the probable cause.
CREATE TABLE aiops_changes (
    id          TEXT PRIMARY KEY,           -- the announcer's id: a replay is one change
    at          DOUBLE PRECISION NOT NULL,  -- when the change happened (Unix seconds)
    service     TEXT NOT NULL,              -- namespace.app (the catalogue's group_by values)
    kind        TEXT NOT NULL CHECK (kind IN ('deploy', 'config')),
    description TEXT NOT NULL,
    source      TEXT NOT NULL,              -- webhook | prometheus
    received_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX ix_aiops_changes_at ON aiops_changes (at);
