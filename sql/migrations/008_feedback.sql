-- 008: operators' verdicts on anomalies (issue 21). One row per person and anomaly (a
-- series' episode, named by its onset): a second verdict of the same person replaces
-- the first. The detector reads them every cycle: a "not an incident" puts a bounded,
-- decaying floor under that series' threshold for the reasons the anomaly had, and a
-- "real incident" protects detections of its strength (detector/feedback.py).
CREATE TABLE aiops_feedback (
    id          ${id},
    series      TEXT NOT NULL,              -- series key: metric{labels}
    metric      TEXT NOT NULL,
    labels      ${json} NOT NULL,
    started_at  DOUBLE PRECISION NOT NULL,  -- the anomaly's onset
    verdict     TEXT NOT NULL CHECK (verdict IN ('false_alarm', 'incident')),
    actor       TEXT NOT NULL,
    note        TEXT NOT NULL,
    reasons     ${json} NOT NULL,           -- per reason at its strongest: reason, zscore, threshold
    score       DOUBLE PRECISION,           -- the anomaly's calibrated score at its peak
    value       DOUBLE PRECISION,
    baseline    DOUBLE PRECISION,
    features    ${json},                    -- the series' feature row at the onset, when stored
    given_at    DOUBLE PRECISION NOT NULL,
    UNIQUE (series, started_at, actor)
);
CREATE INDEX ix_aiops_feedback_series ON aiops_feedback (series);
CREATE INDEX ix_aiops_feedback_given ON aiops_feedback (given_at);
