"""The ``aiops`` command line."""

from __future__ import annotations

import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from detector.errors import ConfigError

app = typer.Typer(
    name="aiops",
    help="Explainable anomaly detection for SLOs and KPIs in Prometheus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Format(str, Enum):
    table = "table"
    json = "json"


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr; return the Exit to raise."""
    print(f"aiops: {message}", file=sys.stderr)
    return typer.Exit(code)


def load(**overrides: Any) -> Any:
    """Settings with command-line overrides; a bad setting ends the command with one line."""
    from detector.settings import load_settings

    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise fail(f"config error: {exc}") from None


PromUrl = Annotated[
    str | None, typer.Option("--prom-url", help="Prometheus URL (overrides PROM_URL)")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML config file (overrides AIOPS_CONFIG)")
]


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
    from detector.cycle import Detector
    from detector.logs import setup_logging
    from detector.service import serve

    settings = load(
        prom_url=prom_url, config=config, metrics=metrics, http_host=host, http_port=port
    )
    setup_logging("ERROR" if once else settings.log_level)
    try:
        detector = Detector(settings)
    except ConfigError as exc:
        raise fail(f"config error: {exc}") from None
    if not once:
        serve(detector, host=settings.http_host, port=settings.http_port)
        return
    report = detector.run_cycle()
    results = report.all_results()
    if fmt is Format.json:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print_results(results)
    for name, exc in report.errors.items():
        print(f"aiops: query {name} failed: {exc.kind}: {exc.message}", file=sys.stderr)
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


def _mount_subcommands() -> None:
    from demo.cli import app as demo_app
    from demo.up import up

    demo_app.command("up")(up)

    app.add_typer(demo_app, name="demo", help="The demo workload and the local live pipeline.")


_mount_subcommands()


def main() -> None:
    try:
        app()
    except ConfigError as exc:  # raised from a subcommand outside `load`
        print(f"aiops: config error: {exc}", file=sys.stderr)
        sys.exit(2)
