"""``aiops migrate``, ``aiops train`` and ``aiops models ...``: the database commands."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aiops.core.clikit import ConfigOpt, Format, PromUrl, database_errors, fail, load
from aiops.core.errors import AiopsError
from aiops.core.redact import redact, short_error

DbUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="database URL (overrides AIOPS_DATABASE_URL)"),
]


def _engine(settings: Any) -> Any:
    from aiops.core.db import make_engine

    return make_engine(settings.database_url)


def _ready_engine(settings: Any) -> Any:
    """An engine whose schema is current (migrated if AIOPS_AUTO_MIGRATE)."""
    from sql.migrate import open_database

    with database_errors(300):
        return open_database(settings)


def _short(exc: BaseException) -> str:
    return short_error(exc, 300)


def migrate(
    database_url: DbUrl = None,
    config: ConfigOpt = None,
    status: Annotated[
        bool, typer.Option("--status", help="show applied/pending, change nothing")
    ] = False,
) -> None:
    """Create or upgrade the database schema (safe to run again, and concurrently)."""
    from sql.migrate import MigrationError
    from sql.migrate import migrate as run_migrations
    from sql.migrate import status as migration_status

    settings = load(database_url=database_url, config=config)
    engine = _engine(settings)
    url = engine.url.render_as_string(hide_password=True)
    try:
        if status:
            rows = migration_status(engine)
            table = Table("version", "migration", "state", "applied at")
            for st in rows:
                name = st.migration.path.name if st.migration else "?"
                at = _when(st.applied_at) if st.applied_at else "-"
                table.add_row(f"{st.version:03d}", name, st.state, at)
            Console().print(table)
            return
        applied = run_migrations(engine)
    except MigrationError as exc:
        raise fail(f"migrate: {exc}") from None
    except Exception as exc:
        raise fail(f"migrate: database unreachable at {url}: {_short(exc)}", 1) from None
    if applied:
        for m in applied:
            print(f"applied {m.path.name}")
    print(redact(f"database {url} is up to date"))


def train(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="train and evaluate, store and promote nothing")
    ] = False,
    series: Annotated[
        list[str] | None,
        typer.Option(
            "--series", help="a query name or a series key (metric{label=...}); repeatable"
        ),
    ] = None,
    history: Annotated[
        str | None, typer.Option("--history", help="how far back to train (default 14d)")
    ] = None,
    wait: Annotated[
        float, typer.Option("--wait", help="seconds to wait for another run's lock")
    ] = 0.0,
    store_features: Annotated[
        bool, typer.Option(help="write the feature rows to aiops_features")
    ] = True,
    fmt: Annotated[Format, typer.Option("--format", help="summary as a table or JSON")] = (
        Format.table
    ),
    prom_url: PromUrl = None,
    config: ConfigOpt = None,
    database_url: DbUrl = None,
) -> None:
    """Fit one model per series on Prometheus history, evaluate, promote the good ones."""
    from aiops.core.logs import setup_logging
    from detector.catalogue import resolve_catalogue
    from feature_store.locks import LockHeld
    from training.train import Trainer, TrainError, prometheus_fetch

    settings = load(
        prom_url=prom_url, config=config, database_url=database_url, train_history=history
    )
    setup_logging("WARNING" if sys.stderr.isatty() else settings.log_level)
    try:
        queries = resolve_catalogue(settings)
    except AiopsError as exc:
        raise fail(f"config error: {exc}") from None
    engine = _ready_engine(settings)
    trainer = Trainer(settings, engine, fetch=prometheus_fetch(settings), queries=queries)
    try:
        report = trainer.run(
            dry_run=dry_run, series=series, wait=wait, store_features=store_features
        )
    except LockHeld as exc:
        raise fail(f"train: {exc}", 3) from None
    except TrainError as exc:
        raise fail(f"train: {exc}") from None
    if fmt is Format.json:
        typer.echo(json.dumps(report_dict(report), indent=2))
    else:
        print_report(report)
    for name, error in report.errors.items():
        print(redact(f"aiops: query {name}: {error}"), file=sys.stderr)
    if report.errors and not report.outcomes:
        raise typer.Exit(1)


def report_dict(report: Any) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "seconds": round(report.duration, 3),
        "feature_rows": report.feature_rows,
        "promoted": report.count("promoted"),
        "series": [
            {
                "series": o.series,
                "samples": o.samples,
                "tail_rows": o.tail_rows,
                "tail_anomaly_rate": o.tail_rate,
                "promoted_tail_anomaly_rate": o.promoted_rate,
                "decision": o.decision,
                "reason": o.reason,
                "version": o.version,
            }
            for o in report.outcomes
        ],
        "errors": report.errors,
    }


def _pct(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2%}"


def print_report(report: Any) -> None:
    title = "aiops train" + (" (dry run: nothing stored or promoted)" if report.dry_run else "")
    table = Table("series", "samples", "tail rate", "promoted's", "result", "why", title=title)
    colour = {"promoted": "green", "would promote": "green", "rejected": "yellow"}
    for o in sorted(report.outcomes, key=lambda o: o.series):
        result = o.decision + (f" v{o.version}" if o.version else "")
        style = colour.get(o.decision, "red")
        table.add_row(
            o.series,
            str(o.samples),
            _pct(o.tail_rate),
            _pct(o.promoted_rate),
            f"[{style}]{result}[/{style}]",
            o.reason,
        )
    console = Console(width=max(Console().width, 140))
    console.print(table)
    console.print(
        f"{len(report.outcomes)} series, {report.count('promoted')} promoted,"
        f" {report.count('rejected')} rejected, {report.count('skipped')} skipped,"
        f" {report.count('failed')} failed; {report.feature_rows} feature rows stored;"
        f" {report.duration:.1f}s"
    )


# -- aiops models ------------------------------------------------------------------------
models_app = typer.Typer(no_args_is_help=True, help="Inspect and manage model versions.")


def _registry(database_url: str | None, config: Path | None) -> Any:
    from feature_store.registry import ModelRegistry

    settings = load(database_url=database_url, config=config)
    return ModelRegistry(_ready_engine(settings), keep=settings.model_keep)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


@models_app.command("list")
def models_list(
    metric: Annotated[str | None, typer.Option("--metric", help="only this query")] = None,
    state: Annotated[
        str | None, typer.Option("--state", help="candidate, promoted or retired")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format")] = Format.table,
    database_url: DbUrl = None,
    config: ConfigOpt = None,
) -> None:
    """Every stored version, newest first per series."""
    registry = _registry(database_url, config)
    records = registry.list(metric=metric, state=state)
    if fmt is Format.json:
        typer.echo(json.dumps([_record_dict(r) for r in records], indent=2))
        return
    table = Table("series", "version", "state", "samples", "tail rate", "trained on", "created")
    for r in records:
        style = {"promoted": "green", "retired": "dim"}.get(r.state, "")
        table.add_row(
            r.series,
            r.tag,
            f"[{style}]{r.state}[/{style}]" if style else r.state,
            str(r.n_samples),
            _pct(r.evaluation.get("tail_anomaly_rate")),
            f"{_when(r.train_start)} .. {_when(r.train_end)}",
            _when(r.created_at),
        )
    Console(width=max(Console().width, 140)).print(table)


def _record_dict(r: Any) -> dict[str, Any]:
    return {
        "series": r.series,
        "metric": r.metric,
        "labels": r.labels,
        "version": r.version,
        "state": r.state,
        "sha256": r.sha256,
        "sklearn_version": r.sklearn_version,
        "feature_names": r.feature_names,
        "params": r.params,
        "train_start": r.train_start,
        "train_end": r.train_end,
        "n_samples": r.n_samples,
        "evaluation": r.evaluation,
        "created_at": r.created_at,
        "promoted_at": r.promoted_at,
        "note": r.note,
        "artifact_bytes": r.size,
    }


@models_app.command("show")
def models_show(
    series: Annotated[str, typer.Argument(help="series key, e.g. 'latency_p99{app=\"api\"}'")],
    version: Annotated[int | None, typer.Argument(help="version (default: promoted)")] = None,
    database_url: DbUrl = None,
    config: ConfigOpt = None,
) -> None:
    """One version's metadata and evaluation, as JSON."""
    from feature_store.registry import RegistryError

    registry = _registry(database_url, config)
    try:
        record = registry.get(series, version)
    except RegistryError as exc:
        raise fail(str(exc), 1) from None
    typer.echo(json.dumps(_record_dict(record), indent=2))


@models_app.command("promote")
def models_promote(
    series: Annotated[str, typer.Argument(help="series key")],
    version: Annotated[int, typer.Argument(help="version to promote")],
    database_url: DbUrl = None,
    config: ConfigOpt = None,
) -> None:
    """Promote a version by hand (the detector uses it from its next cycle)."""
    from feature_store.registry import RegistryError

    registry = _registry(database_url, config)
    try:
        record = registry.promote(series, version, note="promoted by an operator")
    except RegistryError as exc:
        raise fail(str(exc), 1) from None
    print(f"{record.series} {record.tag} promoted")


@models_app.command("rollback")
def models_rollback(
    series: Annotated[str, typer.Argument(help="series key")],
    database_url: DbUrl = None,
    config: ConfigOpt = None,
) -> None:
    """Promote again the version that was promoted before the current one."""
    from feature_store.registry import RegistryError

    registry = _registry(database_url, config)
    try:
        record = registry.rollback(series)
    except RegistryError as exc:
        raise fail(str(exc), 1) from None
    print(f"{record.series} rolled back to {record.tag}")
