-- 005: the detector's queue of anomaly events for the runbook webhook. One row per
-- event id: 'pending' until the webhook acknowledged it (2xx), so a restarted
-- detector sends it; an acknowledged 'firing' row turns 'done' and stays while its
-- anomaly is open (the restarted detector keeps the onset, hence the event id, and
-- sends the 'resolved' event when it ends); the 'resolved' event replaces the row
-- and is deleted once acknowledged. body is the event's JSON as it is signed.
CREATE TABLE aiops_webhook_outbox (
    event_id   TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    state      TEXT NOT NULL,
    queued_at  DOUBLE PRECISION NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX ix_aiops_webhook_outbox_queued_at ON aiops_webhook_outbox (queued_at);
