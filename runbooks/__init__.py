"""The runbook webhook: verification, incidents, policy, guards, approvals, actions, audit."""
