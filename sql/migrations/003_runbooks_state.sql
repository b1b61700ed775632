-- 003: the runbook webhook's state: deliveries (dedupe), incidents, guard state
-- (cooldowns, the circuit breaker's action log) and approvals.

-- One row per delivery ever accepted: a replay finds its key here.
CREATE TABLE runbooks_deliveries (
    dedup_key   TEXT PRIMARY KEY,           -- event id, or alertmanager fingerprint + startsAt
    received_at DOUBLE PRECISION NOT NULL,
    source      TEXT NOT NULL,              -- anomalies | alertmanager
    incident_id TEXT
);

-- Repeated events of one series (or alert) while it is still firing are one incident.
CREATE TABLE runbooks_incidents (
    id          TEXT PRIMARY KEY,
    subject     TEXT NOT NULL,              -- series key or alertname{labels}
    status      TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    opened_at   DOUBLE PRECISION NOT NULL,
    resolved_at DOUBLE PRECISION,
    events      INTEGER NOT NULL,
    actions     INTEGER NOT NULL,
    self_healed INTEGER NOT NULL,           -- 1 when a verified action resolved it
    escalated   INTEGER NOT NULL,           -- 1 once handed to humans (no more actions)
    alertname   TEXT,
    metric      TEXT,
    namespace   TEXT,
    app         TEXT
);
CREATE INDEX ix_runbooks_incidents_subject ON runbooks_incidents (subject, status);
CREATE INDEX ix_runbooks_incidents_status ON runbooks_incidents (status, opened_at);

-- Every action that passed the guards (executed or dry run): cooldowns and the
-- circuit breaker count these rows.
CREATE TABLE runbooks_actions (
    id          ${id},
    ts          DOUBLE PRECISION NOT NULL,
    app         TEXT NOT NULL,
    target      TEXT NOT NULL,
    action      TEXT NOT NULL,
    incident_id TEXT,
    dry_run     INTEGER NOT NULL
);
CREATE INDEX ix_runbooks_actions_app_ts ON runbooks_actions (app, ts);
CREATE INDEX ix_runbooks_actions_target ON runbooks_actions (target, action, ts);

-- One row per app: taken FOR UPDATE (PostgreSQL) so racing replicas serialise.
CREATE TABLE runbooks_guard_locks (
    app TEXT PRIMARY KEY
);

-- Actions held for a human.
CREATE TABLE runbooks_approvals (
    id          TEXT PRIMARY KEY,
    created_at  DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'expired')),
    incident_id TEXT,
    app         TEXT,
    namespace   TEXT,
    target      TEXT NOT NULL,
    action      TEXT NOT NULL,
    params      ${json} NOT NULL,
    request     ${json} NOT NULL,
    decided_by  TEXT,
    decided_at  DOUBLE PRECISION
);
CREATE INDEX ix_runbooks_approvals_state ON runbooks_approvals (state, expires_at);
