"""``aiops demo up``: the whole live pipeline on this machine.

A real Prometheus (Debian's package) backfilled with hours of the demo
workload's history, the demo workload serving live metrics, and the detector
service, which Prometheus scrapes in turn. Ctrl-C stops everything.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated

import typer

from demo.cli import parse_fault_spec
from demo.prometheus import (
    PROMETHEUS,
    PROMTOOL,
    PrometheusProcess,
    backfill,
    find_binary,
    port_is_free,
    scrape_config,
)
from demo.server import serve
from demo.workload import Workload


def up(
    workdir: Annotated[Path, typer.Option(help="Prometheus data and config go here")] = Path(
        "var/demo"
    ),
    prom_port: Annotated[int, typer.Option(help="Prometheus port")] = 9090,
    workload_port: Annotated[int, typer.Option(help="demo workload port")] = 9101,
    detector_port: Annotated[int, typer.Option(help="detector /metrics and /healthz port")] = 9109,
    hours: Annotated[float, typer.Option(help="hours of history to backfill", min=1.0)] = 6.0,
    interval: Annotated[float, typer.Option(help="detection cycle, seconds", min=1.0)] = 30.0,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help="APP:KIND[:DURATION[:START_OFFSET]] fault, repeatable (see demo workload)"
        ),
    ] = None,
) -> None:
    """Start Prometheus, the demo workload and the detector; print where to look; Ctrl-C stops."""
    from detector.cli import fail, load
    from detector.cycle import Detector
    from detector.logs import setup_logging
    from detector.service import create_app, make_server

    prometheus = find_binary("prometheus", PROMETHEUS)
    promtool = find_binary("promtool", PROMTOOL)
    if not prometheus or not promtool:
        raise fail(
            "prometheus is not installed: run ./scripts/demo.sh or apt-get install prometheus"
        )
    for name, port in (
        ("--prom-port", prom_port),
        ("--workload-port", workload_port),
        ("--detector-port", detector_port),
    ):
        if not port_is_free(port):
            raise fail(f"{name}: port {port} is already in use; pass another one")
    try:
        specs = [parse_fault_spec(s) for s in fault or []]
    except ValueError as exc:
        raise fail(f"--fault: {exc}") from None

    settings = load(
        prom_url=f"http://127.0.0.1:{prom_port}",
        interval_seconds=interval,
        http_host="127.0.0.1",
        http_port=detector_port,
    )
    setup_logging(settings.log_level)

    now = time.time()
    workload = Workload(seed=seed, start=now - hours * 3600)
    for app, kind, duration, offset in specs:
        workload.inject(app, kind, start=now + offset, duration=duration)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    history = workdir / "history.om"
    typer.echo(f"writing {hours:g}h of demo history and backfilling Prometheus ...")
    workload.write_openmetrics(history, end=now)
    backfill(history, workdir / "data", promtool=promtool)
    history.unlink()

    wl_server, _ = serve(workload, host="127.0.0.1", port=workload_port)
    config = scrape_config(
        {"demo": [f"127.0.0.1:{workload_port}"], "aiops-detector": [f"127.0.0.1:{detector_port}"]},
        interval="15s",
    )
    prom = PrometheusProcess(workdir, config, port=prom_port, binary=prometheus)
    prom.start()

    detector = Detector(settings)
    server = make_server(create_app(detector), host="127.0.0.1", port=detector_port)
    wl = wl_server.url
    typer.echo(
        f"""
The live pipeline is running (Ctrl-C stops it):
  Prometheus UI       {prom.url}/graph   (try: aiops_anomaly_info, aiops_anomaly_score)
  demo workload       {wl}/metrics
  detector metrics    http://127.0.0.1:{detector_port}/metrics
  detector health     http://127.0.0.1:{detector_port}/healthz

Make an app misbehave (kinds: error_burst, latency_shift, latency_jitter, traffic_drop):
  curl -X POST '{wl}/fault?app=checkout&kind=latency_shift&duration=1800'
and within a few minutes:
  curl -s http://127.0.0.1:{detector_port}/metrics | grep 'aiops_anomaly_info'
  aiops detect --once --prom-url {prom.url}
End it early:  curl -X DELETE '{wl}/fault?app=checkout'
"""
    )
    try:
        server.run()  # returns on SIGINT/SIGTERM
    finally:
        prom.stop()
        wl_server.stop()
        typer.echo("stopped: prometheus, demo workload, detector")
