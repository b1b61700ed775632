"""``aiops audit`` and ``aiops killswitch``: the webhook's audit log and kill switch from
the command line (``aiops webhook`` itself is built in ``aiops.wiring``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aiops.core.clikit import ConfigOpt, database_errors, fail, load
from aiops.core.redact import short_error

audit_app = typer.Typer(no_args_is_help=True, help="The runbook audit log.")

AUDIT_COLUMNS = (
    "id",
    "ts",
    "time",
    "kind",
    "incident_id",
    "alertname",
    "metric",
    "namespace",
    "app",
    "action",
    "result",
    "actor",
    "details",
)


@audit_app.command("export")
def audit_export(
    since: Annotated[str, typer.Option(help="from: epoch, ISO 8601 or now-7d")] = "now-7d",
    until: Annotated[str | None, typer.Option(help="to (default: now)")] = None,
    kind: Annotated[str | None, typer.Option(help="only this kind")] = None,
    config: ConfigOpt = None,
) -> None:
    """Write audit rows as CSV to standard output (oldest first), e.g. > audit.csv.

    Every cell is redacted (a URL's password or token, also in rows written before the
    audit was), since an export leaves the service."""
    import csv
    import json
    import sys
    from datetime import datetime, timezone

    from sqlalchemy import select

    from aiops.core.clikit import parse_time
    from aiops.core.db import make_engine
    from aiops.core.redact import redact
    from feature_store import tables

    settings = load(config=config)
    start = parse_time(since, "--since")
    end = parse_time(until, "--until") if until else None
    t = tables.audit
    q = select(t).where(t.c.ts >= start).order_by(t.c.id)
    if end is not None:
        q = q.where(t.c.ts <= end)
    if kind:
        q = q.where(t.c.kind == kind)
    engine = make_engine(settings.database_url)
    out = csv.writer(sys.stdout)
    out.writerow(AUDIT_COLUMNS)
    try:
        with engine.connect() as conn:
            for row in conn.execution_options(stream_results=True).execute(q):
                m = row._mapping
                stamp = datetime.fromtimestamp(m["ts"], tz=timezone.utc).isoformat()
                cells = [
                    m["id"],
                    f"{m['ts']:.3f}",
                    stamp,
                    m["kind"],
                    m["incident_id"],
                    m["alertname"],
                    m["metric"],
                    m["namespace"],
                    m["app"],
                    m["action"],
                    m["result"],
                    m["actor"],
                    "" if m["details"] is None else json.dumps(m["details"], sort_keys=True),
                ]
                out.writerow([redact(c) if isinstance(c, str) else c for c in cells])
    except Exception as exc:
        msg = short_error(exc)
        raise fail(f"audit export: {msg}", 1) from None


killswitch_app = typer.Typer(
    no_args_is_help=True,
    help="The runtime kill switch: halt or resume actions for every webhook replica.",
)

ScopeOpt = Annotated[
    str, typer.Option(help="'*' (everything), '<namespace>.<app>', '<namespace>.*' or '*.<app>'")
]


def _switch(config: Any, work: Any) -> Any:
    """Run ``work(conn)`` in one transaction on the webhook's database (one line on error)."""
    from aiops.core.db import make_engine
    from sql.migrate import require_current

    settings = load(config=config)
    engine = make_engine(settings.database_url)
    try:
        with database_errors():
            require_current(engine)
            with engine.begin() as conn:
                return work(conn)
    finally:
        engine.dispose()


def _actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # no user name in a bare container
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def _change(halt: bool, scope: str, reason: str, config: Any) -> None:
    import time

    from runbooks import killswitch

    try:
        killswitch.check_scope(scope)
    except killswitch.ScopeError as exc:
        raise fail(f"--scope: {exc}") from None
    changed, _ = _switch(
        config,
        lambda conn: killswitch.change(
            conn, halt=halt, scope=scope, actor=_actor(), reason=reason, now=time.time()
        ),
    )
    verb = "halted" if halt else "resumed"
    print(f"{scope}: {verb}" if changed else f"{scope}: already {verb}, nothing changed")


@killswitch_app.command("halt")
def killswitch_halt(
    reason: Annotated[str, typer.Option(help="why (audited, shown on /killswitch)")],
    scope: ScopeOpt = "*",
    config: ConfigOpt = None,
) -> None:
    """Stop actions now on every replica (those already running finish)."""
    _change(True, scope, reason, config)


@killswitch_app.command("resume")
def killswitch_resume(
    reason: Annotated[str, typer.Option(help="why (audited)")],
    scope: ScopeOpt = "*",
    config: ConfigOpt = None,
) -> None:
    """Lift a halt (RUNBOOK_AUTOFIX_ENABLED must still allow actions)."""
    _change(False, scope, reason, config)


@killswitch_app.command("status")
def killswitch_status(config: ConfigOpt = None) -> None:
    """The scopes halted now, and by whom."""
    from datetime import datetime, timezone

    from runbooks import killswitch

    settings = load(config=config)
    halts = _switch(config, killswitch.halts)
    master = "on" if settings.autofix_enabled else "off (nothing runs)"
    print(f"RUNBOOK_AUTOFIX_ENABLED: {master}")
    if not halts:
        print("no halts")
    for h in halts:
        since = datetime.fromtimestamp(h.halted_at, tz=timezone.utc).isoformat(timespec="seconds")
        print(f"halted {h.scope} since {since} by {h.actor}: {h.reason}")
