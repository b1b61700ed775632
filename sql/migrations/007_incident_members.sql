-- 007: one webhook incident per detector incident (issue 20). The detector sends one
-- event per incident (its members listed, its probable cause first); the webhook keeps
-- the probable cause and the one action chain the incident may run, and its members,
-- so that an Alertmanager notification about a member joins the incident instead of
-- opening one of its own.
ALTER TABLE runbooks_incidents ADD COLUMN cause TEXT;   -- namespace.app of the probable cause
ALTER TABLE runbooks_incidents ADD COLUMN chain TEXT;   -- action:target of its one action chain

CREATE TABLE runbooks_incident_members (
    incident_id TEXT NOT NULL,
    subject     TEXT NOT NULL,              -- the member's series key
    service     TEXT,                       -- namespace.app (the detector's group_by values)
    PRIMARY KEY (incident_id, subject)
);
CREATE INDEX ix_runbooks_incident_members_subject ON runbooks_incident_members (subject);
CREATE INDEX ix_runbooks_incident_members_service ON runbooks_incident_members (service);
