-- 002 (SQLite): runbooks_audit is append-only.
CREATE TRIGGER runbooks_audit_no_update BEFORE UPDATE ON runbooks_audit
BEGIN
    SELECT RAISE(ABORT, 'runbooks_audit is append-only');
END;
CREATE TRIGGER runbooks_audit_no_delete BEFORE DELETE ON runbooks_audit
BEGIN
    SELECT RAISE(ABORT, 'runbooks_audit is append-only');
END;
