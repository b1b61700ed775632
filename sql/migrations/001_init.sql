-- 001: the tables of DESIGN 4.5, for SQLite and PostgreSQL.
-- ${id}, ${blob} and ${json} are replaced per dialect by sql/migrate.py; everything
-- else is plain SQL both understand. Times are Unix seconds (UTC) as double precision.

-- Feature rows of THE feature function, one per series and grid time.
CREATE TABLE aiops_features (
    series      TEXT NOT NULL,              -- metric{label="value",...}, labels sorted
    ts          DOUBLE PRECISION NOT NULL,
    metric      TEXT NOT NULL,
    value       DOUBLE PRECISION,
    baseline    DOUBLE PRECISION,
    scale       DOUBLE PRECISION,
    features    ${json} NOT NULL,           -- feature name -> value
    PRIMARY KEY (series, ts)
);
CREATE INDEX ix_aiops_features_metric_ts ON aiops_features (metric, ts);

-- The model registry: one row per trained version of a series' model.
CREATE TABLE aiops_models (
    id              ${id},
    series          TEXT NOT NULL,
    metric          TEXT NOT NULL,
    labels          ${json} NOT NULL,
    version         INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('candidate', 'promoted', 'retired')),
    artifact        ${blob} NOT NULL,       -- skops.io bytes, never pickle
    sha256          TEXT NOT NULL,
    sklearn_version TEXT NOT NULL,
    feature_names   ${json} NOT NULL,
    params          ${json} NOT NULL,
    train_start     DOUBLE PRECISION NOT NULL,
    train_end       DOUBLE PRECISION NOT NULL,
    n_samples       INTEGER NOT NULL,
    evaluation      ${json} NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    promoted_at     DOUBLE PRECISION,
    note            TEXT,
    UNIQUE (series, version)
);
CREATE INDEX ix_aiops_models_metric_state ON aiops_models (metric, state);
-- at most one promoted version per series
CREATE UNIQUE INDEX ux_aiops_models_promoted ON aiops_models (series) WHERE state = 'promoted';

-- Every anomaly the detector scored, with its reasons and the model that scored it.
CREATE TABLE aiops_anomalies (
    id            ${id},
    series        TEXT NOT NULL,
    metric        TEXT NOT NULL,
    labels        ${json} NOT NULL,
    ts            DOUBLE PRECISION NOT NULL,
    started_at    DOUBLE PRECISION,
    score         DOUBLE PRECISION,
    value         DOUBLE PRECISION,
    baseline      DOUBLE PRECISION,
    reasons       ${json} NOT NULL,
    model_version TEXT NOT NULL,
    UNIQUE (series, ts)
);
CREATE INDEX ix_aiops_anomalies_metric_ts ON aiops_anomalies (metric, ts);
CREATE INDEX ix_aiops_anomalies_ts ON aiops_anomalies (ts);

-- The runbook webhook's append-only audit log (002 forbids UPDATE and DELETE).
CREATE TABLE runbooks_audit (
    id          ${id},
    ts          DOUBLE PRECISION NOT NULL,
    kind        TEXT NOT NULL,
    incident_id TEXT,
    alertname   TEXT,
    metric      TEXT,
    namespace   TEXT,
    app         TEXT,
    action      TEXT,
    result      TEXT,
    actor       TEXT,
    details     ${json}
);
CREATE INDEX ix_runbooks_audit_ts ON runbooks_audit (ts);
CREATE INDEX ix_runbooks_audit_kind_ts ON runbooks_audit (kind, ts);
CREATE INDEX ix_runbooks_audit_incident ON runbooks_audit (incident_id);
CREATE INDEX ix_runbooks_audit_app_ts ON runbooks_audit (app, ts);

-- Named leases (e.g. "train"): one holder at a time, taken over only once expired.
CREATE TABLE aiops_locks (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    acquired_at DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);
