"""The ``aiops`` command line: the composition root, the one place that mounts every
service's commands (the detector's here, ``training.cli``, ``runbooks.cli``, ``demo.cli``)."""

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

from aiops.core.clikit import ConfigOpt, Format, PromUrl, database_errors, fail, load, warn
from aiops.core.clikit import parse_time as _parse_time
from aiops.core.errors import AiopsError, ConfigError
from aiops.core.redact import redact

app = typer.Typer(
    name="aiops",
    help="Explainable anomaly detection for SLOs and KPIs in Prometheus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def detect(
    once: Annotated[bool, typer.Option("--once", help="run one cycle, print it and exit")] = False,
    fmt: Annotated[Format, typer.Option("--format", help="output of --once")] = Format.table,
    prom_url: PromUrl = None,
    config: ConfigOpt = None,
    metrics: Annotated[
        str | None, typer.Option("--metrics", help="queries to watch (overrides AIOPS_METRICS)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="HTTP listen address")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port for /metrics and /healthz")] = None,
) -> None:
    """Run the detector service (or one cycle with --once)."""
    from aiops.core.logs import setup_logging
    from detector.catalogue import resolve_catalogue

    settings = load(
        prom_url=prom_url, config=config, metrics=metrics, http_host=host, http_port=port
    )
    setup_logging("ERROR" if once else settings.log_level)
    try:
        resolve_catalogue(settings)  # a bad catalogue stops the start before anything runs
    except ConfigError as exc:
        raise fail(f"config error: {exc}") from None
    from aiops import wiring
    from sql.migrate import MigrationError

    try:
        detector = wiring.detector(settings)
    except ConfigError as exc:
        raise fail(f"config error: {exc}") from None
    except MigrationError as exc:
        raise fail(f"database: {exc}") from None
    if not once:
        wiring.serve_detector(detector, host=settings.http_host, port=settings.http_port)
        return
    report = detector.run_cycle()
    results = report.all_results()
    if fmt is Format.json:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print_results(results)
        print_incidents(report.incidents)
    for name, exc in report.errors.items():
        print(redact(f"aiops: query {name} failed: {exc.kind}: {exc.message}"), file=sys.stderr)
    if report.errors and not report.results:
        raise typer.Exit(1)


def _num(v: float | None, digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.{digits}g}"


def print_results(results: list[Any]) -> None:
    table = Table(title="aiops detect --once", show_lines=False)
    for col in ("series", "value", "baseline", "score", "status", "reasons"):
        table.add_column(col, overflow="fold")
    for r in sorted(results, key=lambda r: (not r.anomalous, r.metric, sorted(r.labels.items()))):
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(r.labels.items()))
        status = "[bold red]ANOMALY[/]" if r.anomalous else r.status
        reasons = "; ".join(
            f"{x.reason} ({x.window}, z={x.zscore:.2f}, thr={x.threshold:g})" for x in r.reasons
        )
        table.add_row(
            f"{r.metric}{{{labels}}}",
            _num(r.value),
            _num(r.baseline),
            _num(r.score, 3),
            status,
            reasons,
        )
    Console().print(table)


def incident_lines(incidents: list[Any]) -> list[str]:
    """One line per incident (its probable cause), then its evidence, indented."""
    lines = []
    for inc in sorted(incidents, key=lambda i: i.opened_at):
        cause = inc.cause
        if cause is None:
            continue
        n = len(inc.members)
        lines.append(
            f"incident {inc.id}: probable cause {cause.name()} ({cause.reason});"
            f" {n} member{'s' if n != 1 else ''}"
        )
        lines.extend(f"  {line}" for line in inc.evidence)
    return lines


def print_incidents(incidents: list[Any]) -> None:
    """The open incidents under the table (``--format table`` only)."""
    for line in incident_lines(incidents):
        typer.echo(redact(line))


@app.command()
def queries(config: ConfigOpt = None) -> None:
    """List the queries the detector would watch (catalogue after AIOPS_METRICS)."""
    from detector.catalogue import resolve_catalogue

    settings = load(config=config)
    try:
        qs = resolve_catalogue(settings)
    except ConfigError as exc:
        raise fail(f"config error: {exc}") from None
    table = Table(title="queries")
    for col in ("name", "direction", "labels", "lookback", "step", "promql"):
        table.add_column(col, overflow="fold")
    for q in qs:
        table.add_row(
            q.name,
            q.direction,
            ",".join(q.labels) if q.labels is not None else "(all)",
            q.lookback or settings.lookback,
            q.step or settings.step,
            q.promql,
        )
    Console().print(table)


@app.command()
def backtest(
    path: Annotated[
        Path | None, typer.Argument(help="CSV file (timestamp,value) or folder of them")
    ] = None,
    out: Annotated[Path, typer.Option(help="where per-row results go")] = Path("var/backtest"),
    plot: Annotated[bool, typer.Option("--plot", help="also write a PNG per series")] = False,
    labels: Annotated[
        Path | None, typer.Option(help="labelled anomaly windows (NAB combined_windows.json)")
    ] = None,
    direction: Annotated[str, typer.Option(help="up, down or both (CSV input)")] = "both",
    prom_url: PromUrl = None,
    query: Annotated[
        str | None, typer.Option(help="replay this catalogue query from Prometheus")
    ] = None,
    start: Annotated[str, typer.Option(help="replay start: epoch, ISO 8601, now-2d")] = "now-1d",
    end: Annotated[str, typer.Option(help="replay end")] = "now",
    config: ConfigOpt = None,
) -> None:
    """Replay history through the live detector in streaming order; score it against labels."""
    from aiops.core.errors import QueryError
    from detector.catalogue import Query, resolve_catalogue
    from detector.source import PrometheusSource
    from training import runner

    settings = load(prom_url=prom_url, config=config)
    if direction not in ("up", "down", "both"):
        raise fail(f"--direction: must be up, down or both, got {direction!r}")
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    try:
        if query is not None:
            if path is not None:
                raise fail("give a CSV PATH or --query, not both")
            try:
                catalogue = {q.name: q for q in resolve_catalogue(settings)}
            except ConfigError as exc:
                raise fail(f"config error: {exc}") from None
            if query not in catalogue:
                raise fail(f"--query: unknown query {query!r} (known: {', '.join(catalogue)})")
            q = catalogue[query]
            source = PrometheusSource.from_settings(settings)
            t_start, t_end = _parse_time(start, "--start"), _parse_time(end, "--end")
            try:
                batch = runner.fetch_history(
                    source, q, start=t_start, end=t_end, step=q.step_seconds(settings)
                )
            except QueryError as exc:
                raise fail(f"prometheus: {exc.kind}: {exc.message}", 1) from None
            if len(batch) == 0:
                raise fail(f"query {query!r} returned no series in that range", 1)
            inputs = runner.prometheus_inputs(batch)
            for inp, frame in zip(inputs, runner.backtest_series(inputs, settings, q), strict=True):
                results[inp.name] = frame
        else:
            if path is None:
                raise fail("give a CSV file or folder, or --query NAME with --prom-url")
            root = path if path.is_dir() else path.parent
            q = Query(name="backtest", promql="csv", direction=direction)
            for file in runner.find_csvs(path):
                inp = runner.read_csv(file, root)
                results[inp.name] = runner.backtest_series([inp], settings, q)[0]
    except runner.BacktestError as exc:
        raise fail(str(exc)) from None
    elapsed = time.perf_counter() - t0
    for name, frame in results.items():
        runner.write(frame, out, name)
    rows = sum(len(f) for f in results.values())
    detections = sum(int((f["anomaly_score"] > 0).sum()) for f in results.values())
    typer.echo(
        f"{len(results)} series, {rows} rows replayed in {elapsed:.1f}s; "
        f"{detections} detections; results in {out}/"
    )
    windows = None
    if labels is not None:
        from training.evaluate import render_summary, summarise
        from training.nab import load_windows

        try:
            windows = load_windows(labels)
        except (OSError, ValueError) as exc:
            raise fail(f"--labels: {exc}") from None
        keyed = {f"{name}.csv": frame for name, frame in results.items()}
        windows = {k: _labels_for(k, windows) for k in keyed}
        wide = Console(width=None if sys.stdout.isatty() else 160)
        wide.print(render_summary(summarise(keyed, windows)))
    if plot:
        from training.plot import plot_backtest

        for name, frame in results.items():
            plot_backtest(
                frame,
                out / f"{name}.png",
                title=name,
                windows=(windows or {}).get(f"{name}.csv") or None,
            )
        typer.echo(f"plots: {out}/**/*.png")


def _labels_for(name: str, windows: dict[str, Any]) -> list[Any]:
    """Windows of ``name``; label files key by ``category/file.csv``, so a backtest of one
    category folder (names without the category) matches on the path's tail."""
    if name in windows:
        return windows[name]
    tails = [k for k in windows if k.endswith("/" + name)]
    return windows[tails[0]] if len(tails) == 1 else []


@app.command()
def webhook(
    host: Annotated[str | None, typer.Option(help="listen address (RUNBOOK_HTTP_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (RUNBOOK_HTTP_PORT)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the runbook webhook: Alertmanager and detector events in, guarded fixes out."""
    from aiops import wiring
    from aiops.core.logs import setup_logging
    from detector.service import make_server

    # the configuration is judged first: a refused start is one quick line
    settings = load(config=config, webhook_host=host, webhook_port=port)
    setup_logging(settings.log_level)
    try:
        # fail closed: actions that really run need every input that triggers them
        # authenticated (the one rule, also for the demo's webhook)
        policy, warning = wiring.webhook_policy(settings)
    except AiopsError as exc:
        raise fail(f"config error: {exc}") from None
    if warning:
        warn(warning)
    with database_errors():
        hook = wiring.webhook_app(settings, policy)
    make_server(hook, host=settings.webhook_host, port=settings.webhook_port).run()


def _mount_subcommands() -> None:
    from demo.cli import app as demo_app
    from demo.up import up

    demo_app.command("up")(up)

    app.add_typer(demo_app, name="demo", help="The demo workload and the local live pipeline.")

    from training.cli import migrate, models_app, train

    app.command()(migrate)
    app.command()(train)
    app.add_typer(models_app, name="models", help="Inspect and manage model versions.")

    from runbooks.cli import audit_app, feedback_app, killswitch_app

    app.add_typer(audit_app, name="audit", help="The runbook audit log.")
    app.add_typer(
        feedback_app,
        name="feedback",
        help="Operators' verdicts on anomalies: list (--effects), add, export.",
    )
    app.add_typer(
        killswitch_app,
        name="killswitch",
        help="Halt or resume actions at run time, for every webhook replica.",
    )


_mount_subcommands()


def main() -> None:
    try:
        app()
    except ConfigError as exc:  # raised from a subcommand outside `load`
        print(redact(f"aiops: config error: {exc}"), file=sys.stderr)
        sys.exit(2)
