"""The runbook webhook: guarded auto-remediation (coming next)."""
