"""Fail closed at start: actions that really run need every input that triggers them
authenticated.

With ``RUNBOOK_AUTOFIX_ENABLED=true`` and ``RUNBOOK_AUTOFIX_DRY_RUN=false`` the webhook
does not start unless every request that can make an action run is authenticated
with a secret of at least ``MIN_SECRET_LENGTH`` characters:

- ``POST /anomalies``: ``RUNBOOK_WEBHOOK_SECRET`` (HMAC of the detector's events);
- ``POST /alertmanager``: ``RUNBOOK_ALERTMANAGER_TOKEN`` (bearer);
- ``GET /approve``: ``RUNBOOK_APPROVAL_SECRET`` when an action waits for a human
  (``RUNBOOK_AUTOFIX_REQUIRE_APPROVAL=true`` or a rule with ``risk: high``; without it
  nothing could ever be approved);
- ``POST /slack/interactive``: ``SLACK_SIGNING_SECRET`` and ``SLACK_CHANNEL`` when
  ``SLACK_BOT_TOKEN`` is set (a signing secret that is set is checked in any case);
- ``POST /killswitch`` (a resume lets actions run again): ``RUNBOOK_ADMIN_TOKEN`` and
  ``RUNBOOK_READ_TOKEN``, when set, are of that length too.

A dry run starts anyway, with one loud warning line naming what is unauthenticated.
``check_start`` is the one rule; every way the webhook starts calls it, through
``checked_policy`` (``aiops webhook``, the demo's ``start_webhook``). It never shows
a secret, only its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiops.core.errors import ConfigError

#: the shortest secret the webhook accepts when actions really run
MIN_SECRET_LENGTH = 16

_HOW = f"a random value of at least {MIN_SECRET_LENGTH} characters (openssl rand -hex 16)"


@dataclass(frozen=True)
class Gap:
    """An input that could trigger an action without a (sane) credential."""

    setting: str
    problem: str  # "is unset" / "has 5 characters"
    exposes: str  # what anyone who reaches the webhook could then do
    fix: str

    def line(self) -> str:
        return f"{self.setting} {self.problem}: {self.exposes}; {self.fix}"


def _length(value: Any) -> int | None:
    """Characters of a secret setting (None: unset or blank); never the value itself."""
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    text = text.strip()
    return len(text) or None


def _short(n: int) -> str:
    return f"has {n} character{'s' if n != 1 else ''} (fewer than {MIN_SECRET_LENGTH})"


def _check_secret(
    gaps: list[Gap], settings: Any, field: str, setting: str, exposes: str, fix: str
) -> None:
    n = _length(getattr(settings, field, None))
    if n is None:
        gaps.append(Gap(setting, "is unset", exposes, f"set it to {_HOW}{fix}"))
    elif n < MIN_SECRET_LENGTH:
        gaps.append(
            Gap(
                setting,
                _short(n),
                exposes,
                f"set it to {_HOW}{fix}",
            )
        )


def _check_if_set(gaps: list[Gap], settings: Any, field: str, setting: str, exposes: str) -> None:
    n = _length(getattr(settings, field, None))
    if n is not None and n < MIN_SECRET_LENGTH:
        gaps.append(
            Gap(
                setting,
                _short(n),
                exposes,
                f"set it to {_HOW} or unset it",
            )
        )


def needs_approval(settings: Any, policy: Any) -> bool:
    """Whether some action waits for a human: every one, or a rule with ``risk: high``."""
    if settings.require_approval:
        return True
    rules = [*policy.inline, *(r for rules in policy.scoped.values() for r in rules)]
    return any(rule.risk == "high" for rule in rules)


def gaps(settings: Any, policy: Any) -> list[Gap]:
    """Every input that could trigger an action without a sane credential."""
    out: list[Gap] = []
    _check_secret(
        out,
        settings,
        "webhook_secret",
        "RUNBOOK_WEBHOOK_SECRET",
        "anyone who reaches POST /anomalies could forge detector events that run actions",
        ", the same on the detector",
    )
    _check_secret(
        out,
        settings,
        "alertmanager_token",
        "RUNBOOK_ALERTMANAGER_TOKEN",
        "anyone who reaches POST /alertmanager could post alerts that run actions",
        ", the bearer token of Alertmanager's webhook_configs http_config",
    )
    if needs_approval(settings, policy):
        why = (
            "RUNBOOK_AUTOFIX_REQUIRE_APPROVAL=true"
            if settings.require_approval
            else "a policy rule has risk: high"
        )
        _check_secret(
            out,
            settings,
            "approval_secret",
            "RUNBOOK_APPROVAL_SECRET",
            f"actions wait for approval ({why}) and approve links could not be signed safely",
            "",
        )
    if _length(settings.slack_bot_token) is not None:
        _check_secret(
            out,
            settings,
            "slack_signing_secret",
            "SLACK_SIGNING_SECRET",
            "with SLACK_BOT_TOKEN set, anyone could post forged Approve clicks to"
            " POST /slack/interactive",
            " (the Slack app's signing secret)",
        )
        if not (settings.slack_channel or "").strip():
            out.append(
                Gap(
                    "SLACK_CHANNEL",
                    "is unset",
                    "SLACK_BOT_TOKEN is set but approvals would be posted nowhere",
                    "set it to the channel id or #name, or unset SLACK_BOT_TOKEN",
                )
            )
    else:
        _check_if_set(
            out,
            settings,
            "slack_signing_secret",
            "SLACK_SIGNING_SECRET",
            "a short secret lets anyone forge Approve clicks to POST /slack/interactive",
        )
    _check_if_set(
        out,
        settings,
        "admin_token",
        "RUNBOOK_ADMIN_TOKEN",
        "a short token lets anyone resume halted actions through POST /killswitch",
    )
    _check_if_set(
        out,
        settings,
        "read_token",
        "RUNBOOK_READ_TOKEN",
        "a short token lets anyone read the audit and the pending approvals",
    )
    return out


def acts(settings: Any) -> bool:
    """Whether actions really run (not switched off, not a dry run)."""
    return bool(settings.autofix_enabled and not settings.autofix_dry_run)


def check_start(settings: Any, policy: Any) -> str | None:
    """Refuse a start that would let unauthenticated requests run actions.

    Raises ConfigError (one line, naming the setting and what to do) when actions really
    run; returns one warning line for a dry run with actions enabled and gaps; else None.
    """
    found = gaps(settings, policy)
    if not found:
        return None
    if acts(settings):
        first, rest = found[0], found[1:]
        more = f" (also: {', '.join(g.setting for g in rest)})" if rest else ""
        raise ConfigError(
            f"{first.line()}; the webhook does not start while actions really run"
            f" (RUNBOOK_AUTOFIX_ENABLED=true, RUNBOOK_AUTOFIX_DRY_RUN=false){more}"
        )
    if not settings.autofix_enabled:
        return None  # nothing runs at all: no input can trigger an action
    names = "; ".join(f"{g.setting} {g.problem}" for g in found)
    return (
        f"DRY RUN WITH UNAUTHENTICATED INPUTS: {names}. Nothing runs now, but with"
        " RUNBOOK_AUTOFIX_DRY_RUN=false the webhook refuses to start until they are set"
    )


def checked_policy(settings: Any) -> tuple[Any, str | None]:
    """The policy of ``RUNBOOK_AUTOFIX_POLICY`` and ``RUNBOOK_POLICY_FILE``, judged by
    ``check_start``: every way the webhook starts begins here (``aiops webhook``, the
    demo). Raises ``AiopsError`` (one line); returns the policy and the warning to show."""
    from runbooks.policy import load_policy

    policy = load_policy(settings.autofix_policy, settings.policy_file)
    return policy, check_start(settings, policy)
