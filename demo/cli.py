"""``aiops demo workload``: serve the simulated apps, optionally after writing backfill history."""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from demo.server import serve
from demo.workload import APPS, FAULT_KINDS, Workload

app = typer.Typer(
    help="Demo workload: simulated web apps with SLO and business metrics.", no_args_is_help=True
)

FAULT_HELP = (
    "APP:KIND[:DURATION_SECONDS[:START_OFFSET_SECONDS]], repeatable. "
    f"APP in {'/'.join(APPS)}, KIND in {'/'.join(FAULT_KINDS)}; a negative offset puts the "
    "start in the past, e.g. checkout:latency_shift:1800:-1200 began 20 minutes ago."
)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


@app.callback()
def _main() -> None:
    """Demo workload commands."""


def parse_fault_spec(spec: str) -> tuple[str, str, float, float]:
    """Parse ``APP:KIND[:DURATION[:OFFSET]]`` into (app, kind, duration, offset)."""
    parts = spec.split(":")
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"fault {spec!r} is not APP:KIND[:DURATION_SECONDS[:START_OFFSET]]")
    name, kind = parts[0], parts[1]
    if name not in APPS:
        raise ValueError(f"fault {spec!r}: unknown app {name!r}; expected one of {', '.join(APPS)}")
    if kind not in FAULT_KINDS:
        raise ValueError(
            f"fault {spec!r}: unknown kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}"
        )
    try:
        duration = float(parts[2]) if len(parts) > 2 and parts[2] else 600.0
        offset = float(parts[3]) if len(parts) > 3 and parts[3] else 0.0
    except ValueError:
        raise ValueError(f"fault {spec!r}: duration and offset must be numbers") from None
    if duration <= 0:
        raise ValueError(f"fault {spec!r}: duration must be positive")
    return name, kind, duration, offset


@app.command()
def workload(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 = any free port).")] = 9101,
    seed: Annotated[int, typer.Option(min=0, help="Random seed of the simulation.")] = 0,
    backfill_file: Annotated[
        Path | None, typer.Option(help="Write OpenMetrics history here before serving.")
    ] = None,
    backfill_hours: Annotated[
        float, typer.Option(min=0.0, help="Hours of history ending now to backfill.")
    ] = 6.0,
    fault: Annotated[list[str] | None, typer.Option(help=FAULT_HELP)] = None,
) -> None:
    """Serve the demo apps' metrics until SIGINT/SIGTERM."""
    try:
        specs = [parse_fault_spec(s) for s in fault or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fault") from None
    now = time.time()
    history = backfill_hours * 3600.0 if backfill_file is not None else 0.0
    wl = Workload(seed=seed, start=now - history)
    for name, kind, duration, offset in specs:
        f = wl.inject(name, kind, start=now + offset, duration=duration)
        typer.echo(f"fault #{f.id}: {name} {kind} from {_iso(f.start)} to {_iso(f.end)}")
    if backfill_file is not None:
        backfill_file.parent.mkdir(parents=True, exist_ok=True)
        wl.write_openmetrics(backfill_file, end=now)
        typer.echo(f"backfill: {backfill_hours:g}h of history written to {backfill_file}")
        typer.echo(
            f"  load it: promtool tsdb create-blocks-from openmetrics {backfill_file} "
            "<prometheus-data-dir>"
        )

    stop = threading.Event()
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    except ValueError:  # not the main thread (e.g. embedded); rely on KeyboardInterrupt
        pass
    server, _ = serve(wl, host=host, port=port)
    url = server.url
    typer.echo(f"metrics: {url}/metrics  (faults: {url}/faults)")
    typer.echo(f"inject:  curl -X POST '{url}/fault?app=checkout&kind=error_burst&duration=600'")
    typer.echo(f"clear:   curl -X DELETE '{url}/fault?app=checkout'")
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        typer.echo("stopped")


if __name__ == "__main__":
    app()
