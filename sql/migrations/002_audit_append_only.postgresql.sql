-- 002 (PostgreSQL): runbooks_audit is append-only.
CREATE FUNCTION runbooks_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'runbooks_audit is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER runbooks_audit_no_update BEFORE UPDATE OR DELETE ON runbooks_audit
    FOR EACH ROW EXECUTE FUNCTION runbooks_audit_append_only();
CREATE TRIGGER runbooks_audit_no_truncate BEFORE TRUNCATE ON runbooks_audit
    FOR EACH STATEMENT EXECUTE FUNCTION runbooks_audit_append_only();
