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


feedback_app = typer.Typer(
    no_args_is_help=True, help="Operators' verdicts on anomalies (what the detector learns)."
)


def _feedback_store(config: Any) -> Any:
    from aiops.core.db import make_engine
    from feature_store.store import FeatureStore
    from sql.migrate import require_current

    settings = load(config=config)
    engine = make_engine(settings.database_url)
    with database_errors():
        require_current(engine)
    return settings, FeatureStore(engine)


def _when(ts: float | None) -> str:
    from datetime import datetime, timezone

    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


@feedback_app.command("list")
def feedback_list(
    since: Annotated[str, typer.Option(help="from: epoch, ISO 8601 or now-30d")] = "now-30d",
    effects: Annotated[
        bool, typer.Option("--effects", help="the floors in force now, per series and reason")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """The verdicts given (newest first), or with --effects what they do to detection now."""
    import time

    from aiops.core.clikit import parse_time
    from detector.feedback import Feedback, floors_at

    settings, store = _feedback_store(config)
    with database_errors():
        if effects:  # every verdict still in force, whenever it was given
            rows = store.feedback(since=time.time() - 365 * 86400, limit=100_000)
        else:
            rows = store.feedback(since=parse_time(since, "--since"), limit=100_000)
    store.engine.dispose()
    if effects:
        known = Feedback.from_rows(rows, settings)
        floors = floors_at(
            known.verdicts, time.time(), max_raise=known.max_raise, half_life=known.half_life
        )
        if not floors:
            print("no feedback in force")
        for f in floors:
            cap = "-" if f.cap is None else f"{f.cap:.3g}"
            print(
                f"{f.series}  {f.reason}  threshold {f.threshold:.3g} -> {f.floor:.3g}"
                f" (x{f.raise_factor:.2f}, {f.false_alarms} false alarm(s), cap {cap})"
            )
        return
    if not rows:
        print("no feedback")
    for r in rows:
        reasons = ",".join(sorted({x.get("reason", "?") for x in r["reasons"] or []}))
        note = f"  {r['note']}" if r["note"] else ""
        print(
            f"{_when(r['given_at'])}  {r['actor']}  {r['verdict']}  {r['series']}"
            f"  began {_when(r['started_at'])}  [{reasons}]{note}"
        )


@feedback_app.command("add")
def feedback_add(
    metric: Annotated[str, typer.Option(help="the query (metric) of the series")],
    started_at: Annotated[
        str, typer.Option(help="the anomaly's onset: epoch, as the detector reports it")
    ],
    verdict: Annotated[str, typer.Option(help="false_alarm or incident")],
    label: Annotated[
        list[str] | None, typer.Option(help="the series' labels, NAME=VALUE, repeatable")
    ] = None,
    note: Annotated[str, typer.Option(help="why (stored, audited)")] = "",
    config: ConfigOpt = None,
) -> None:
    """Give a verdict on one anomaly, as POST /feedback does (stored and audited)."""
    import time

    from aiops.core.series import series_key
    from runbooks.audit import audit_row, insert_row
    from runbooks.events import FeedbackIn
    from runbooks.feedback import audit_of, give

    labels = {}
    for item in label or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise fail(f"--label: expected NAME=VALUE, got {item!r}")
        labels[name] = value
    try:
        fb = FeedbackIn(
            metric=metric,
            labels=labels,
            started_at=float(started_at),
            verdict=verdict,  # type: ignore[arg-type]
            note=note,
        )
    except ValueError as exc:
        raise fail(f"feedback: {short_error(exc)}") from None
    settings, store = _feedback_store(config)
    actor = _actor()
    try:
        with database_errors():
            out = give(store, fb, actor, settings, time.time())
            if out is None:
                raise fail(
                    f"no anomaly of {series_key(fb.metric, fb.labels)} began at {fb.started_at:.0f}"
                )
            replaced, floors, episode = out
            row = audit_row(
                "feedback", None, **audit_of(fb, actor, replaced, floors, episode, "cli")
            )
            with store.engine.begin() as conn:
                insert_row(conn, row)
    finally:
        store.engine.dispose()
    print(f"{'replaced' if replaced else 'recorded'}: {fb.verdict} on {row['details']['series']}")
    for f in floors:
        print(f"  {f['reason']}: threshold {f['threshold']:g} -> {f['floor']:g}")


@feedback_app.command("export")
def feedback_export(
    fmt: Annotated[
        str, typer.Option("--format", help="csv, json, or labels (for aiops backtest --labels)")
    ] = "csv",
    since: Annotated[str, typer.Option(help="from: epoch, ISO 8601 or now-365d")] = "now-365d",
    config: ConfigOpt = None,
) -> None:
    """Write the verdicts to standard output. ``--format labels``: the confirmed incidents
    as labelled windows keyed like ``aiops backtest --query`` names its series, so a team
    replays its own history: ``aiops backtest --query Q --labels labels.json``."""
    import csv
    import json
    import sys

    from aiops.core.clikit import parse_time
    from aiops.core.series import series_name

    if fmt not in ("csv", "json", "labels"):
        raise fail(f"--format: csv, json or labels, got {fmt!r}")
    _, store = _feedback_store(config)
    try:
        with database_errors():
            rows = list(
                reversed(store.feedback(since=parse_time(since, "--since"), limit=1_000_000))
            )
            if fmt == "labels":
                windows: dict[str, list[list[str]]] = {}
                for r in rows:
                    if r["verdict"] != "incident":
                        continue
                    episode = store.episode(r["series"], r["started_at"])
                    end = episode["ended_at"] if episode else r["started_at"]
                    key = series_name(r["metric"], r["labels"]) + ".csv"
                    span = [_stamp(r["started_at"]), _stamp(end)]
                    if span not in windows.setdefault(key, []):
                        windows[key].append(span)
                json.dump({k: sorted(v) for k, v in sorted(windows.items())}, sys.stdout, indent=2)
                print()
                return
    finally:
        store.engine.dispose()
    columns = [
        "given_at",
        "actor",
        "verdict",
        "metric",
        "labels",
        "started_at",
        "score",
        "note",
        "reasons",
    ]
    if fmt == "json":
        json.dump([{c: r[c] for c in columns} for r in rows], sys.stdout, indent=2, default=str)
        print()
        return
    out = csv.writer(sys.stdout)
    out.writerow(columns)
    for r in rows:
        out.writerow(
            [
                json.dumps(r[c], sort_keys=True) if c in ("labels", "reasons") else r[c]
                for c in columns
            ]
        )


def _stamp(ts: float) -> str:
    """A window bound as ``aiops backtest`` reads it: naive UTC (its index is UTC)."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
