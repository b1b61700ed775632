"""The runtime kill switch: halt remediation now, everywhere or for one scope.

``RUNBOOK_AUTOFIX_ENABLED`` is the master switch, read at start: while it is false
nothing runs and no runtime change can turn actions on. While it is true, an
operator can halt actions at run time without a restart, through ``POST
/killswitch`` (bearer ``RUNBOOK_ADMIN_TOKEN``) or ``aiops killswitch halt`` (straight
to the database, so it works while the webhook is down):

- a scope is ``*`` (everything) or a policy key: ``<namespace>.<app>``,
  ``<namespace>.*``, ``*.<app>``;
- halts live in ``runbooks_halts``, in the shared database: every replica sees a
  halt at its next decision, and a restart keeps it;
- the guard reads them in the decision's transaction (DESIGN 5's kill-switch step)
  and again right before an action starts, so an action that had not started when
  the halt committed never starts; a database that cannot be read refuses the
  action (fail closed);
- every halt and resume is an audit row (kinds ``halted`` and ``resumed``) with
  who and why.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, insert, select

from feature_store import tables
from runbooks.audit import audit_row, insert_row

ALL = "*"
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_:-]{0,251}[A-Za-z0-9])?"
SCOPE = re.compile(rf"^(?:\*|{_PART}\.{_PART}|{_PART}\.\*|\*\.{_PART})$")
SCOPE_HELP = "'*', '<namespace>.<app>', '<namespace>.*' or '*.<app>'"


class ScopeError(ValueError):
    """A scope that is not one of the forms above."""


@dataclass(frozen=True)
class Halt:
    scope: str
    halted_at: float
    actor: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def why(self) -> str:
        return f"halted for {self.scope} by {self.actor}: {self.reason}"


def check_scope(scope: str) -> str:
    if not SCOPE.match(scope):
        raise ScopeError(f"scope {scope!r} is not {SCOPE_HELP}")
    return scope


def scopes_of(namespace: str | None, app: str | None) -> list[str]:
    """The scopes that halt an action on (namespace, app), broadest first."""
    out = [ALL]
    if namespace:
        out.append(f"{namespace}.*")
    if app:
        out.append(f"*.{app}")
    if namespace and app:
        out.append(f"{namespace}.{app}")
    return out


def _halt(row: Any) -> Halt:
    return Halt(row.scope, row.halted_at, row.actor, row.reason)


def halt_for(conn: Any, namespace: str | None, app: str | None) -> Halt | None:
    """The halt that stops actions on (namespace, app), the broadest first; None if none."""
    h = tables.halts
    scopes = scopes_of(namespace, app)
    rows = {r.scope: r for r in conn.execute(select(h).where(h.c.scope.in_(scopes)))}
    for scope in scopes:
        if scope in rows:
            return _halt(rows[scope])
    return None


def halts(conn: Any) -> list[Halt]:
    h = tables.halts
    return [_halt(r) for r in conn.execute(select(h).order_by(h.c.halted_at, h.c.scope))]


def _subject(scope: str) -> tuple[str | None, str | None]:
    """(namespace, app) of a scope, for the audit row's columns."""
    if scope == ALL:
        return None, None
    ns, _, app = scope.partition(".")
    return (None if ns == ALL else ns), (None if app == ALL else app)


def change(
    conn: Any,
    *,
    halt: bool,
    scope: str,
    actor: str,
    reason: str,
    now: float,
    record: Callable[[Any, dict[str, Any]], dict[str, Any]] = insert_row,
) -> tuple[bool, dict[str, Any] | None]:
    """Halt or resume ``scope`` in the caller's transaction.

    Returns (changed, the audit row written by ``record``); halting a halted scope, or
    resuming one that is not halted, changes nothing and writes nothing.
    """
    check_scope(scope)
    h = tables.halts
    current = conn.execute(select(h).where(h.c.scope == scope)).first()
    if halt == (current is not None):
        return False, None
    if halt:
        conn.execute(insert(h).values(scope=scope, halted_at=now, actor=actor, reason=reason))
        details: dict[str, Any] = {"scope": scope, "reason": reason}
    else:
        conn.execute(delete(h).where(h.c.scope == scope))
        details = {
            "scope": scope,
            "reason": reason,
            "halted_for_seconds": round(now - current.halted_at, 3),
            "halted_by": current.actor,
        }
    namespace, app = _subject(scope)
    kind = "halted" if halt else "resumed"
    row = audit_row(kind, ts=now, namespace=namespace, app=app, actor=actor, details=details)
    return True, record(conn, row)
