"""What the guard chain decides, and the settings it decides with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runbooks.actions import Action, Target

#: failed fixes of one incident before it is handed to humans
MAX_ATTEMPTS = 2


@dataclass
class Decision:
    """What became of a signal (the HTTP answer's body)."""

    kind: str  # the last audit kind: duplicate, no_policy, skipped_*, dry_run, executed, ...
    incident_id: str | None = None
    action: str | None = None
    detail: str = ""
    approval_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"decision": self.kind, "incident_id": self.incident_id, "action": self.action}
        if self.detail:
            out["detail"] = self.detail
        if self.approval_id:
            out["approval_id"] = self.approval_id
        return out


@dataclass
class Job:
    """An action on its way through the guard chain; let through, it runs after the
    decision committed."""

    name: str  # the policy's action name (audited, counted in the metrics)
    action: Action  # built once, when the policy matched
    incident_id: str
    target: Target
    params: dict[str, Any] = field(default_factory=dict)
    what: str = ""  # what it would do (``Action.describe``): the dry run's answer
    risk: str = "low"  # ``high`` holds it for approval

    @property
    def chain(self) -> str:
        """What makes one action chain: the action and its target."""
        return f"{self.name}:{self.target.key}"


@dataclass
class GuardConfig:
    enabled: bool = False
    dry_run: bool = True
    require_approval: bool = False
    cooldown_seconds: float = 900.0
    max_hourly: int = 3
    max_daily: int = 10
    #: the blast-radius guard: actions across every app within ``fleet_window`` seconds
    fleet_max: int = 3
    fleet_window: float = 600.0
    action_timeout: float = 60.0
    verify_seconds: float = 300.0
    approval_ttl: float = 3600.0
    approval_secret: str | None = None
    public_url: str = "http://localhost:8080"

    @classmethod
    def from_settings(cls, s: Any) -> GuardConfig:
        return cls(
            enabled=s.autofix_enabled,
            dry_run=s.autofix_dry_run,
            require_approval=s.require_approval,
            cooldown_seconds=s.cooldown_seconds,
            max_hourly=s.circuit_max_hourly,
            max_daily=s.circuit_max_daily,
            fleet_max=s.max_actions_per_window,
            fleet_window=s.action_window_seconds,
            action_timeout=s.action_timeout_seconds,
            verify_seconds=s.verify_seconds,
            approval_ttl=s.approval_ttl_seconds,
            approval_secret=s.approval_secret.get_secret_value() if s.approval_secret else None,
            public_url=s.public_url,
        )
