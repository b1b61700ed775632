-- 004: the runtime kill switch. One row per scope that is halted now ("*" for
-- everything, or a policy key: <namespace>.<app>, <namespace>.*, *.<app>); a resume
-- deletes the row. Every replica reads it before each decision and again right before
-- each action starts; the audit keeps the history (kinds halted / resumed).
CREATE TABLE runbooks_halts (
    scope      TEXT PRIMARY KEY,
    halted_at  DOUBLE PRECISION NOT NULL,
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL
);
