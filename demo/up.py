"""``aiops demo up``: the whole loop on this machine.

A real Prometheus (Debian's package) backfilled with hours of the demo
workload's history and loaded with the shipped alert rules, the demo workload
serving live metrics, the detector (scraped by Prometheus, posting signed
events to the webhook), a real Alertmanager routing the alerts to the webhook,
and the runbook webhook, whose policy "restarts" a misbehaving demo app (ends
its fault) — as a dry run unless ``--autofix``. Ctrl-C stops everything.

The loop runs at a demo's pace: 5-second scrapes and steps, the detector's
windows 30s/1m/3m instead of 5m/15m/1h (the catalogue's ``windows:``, written to
``<workdir>/aiops.yaml``), the shipped rules with ``for`` cut to 15 s, so an
incident is flagged, healed, recovered, verified and resolved within minutes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
import yaml

from demo.alertmanager import ALERTMANAGER, AlertmanagerProcess
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

#: the demo's pace: Prometheus scrapes (and the backfill is written) every 5 s, the
#: detector looks at 5 s steps over the last hour with short windows, the alert rules
#: wait 15 s, and a fix has 3 minutes to bring the resolve before it is not_recovered
SCRAPE_SECONDS = 5.0
STEP = "5s"
LOOKBACK = "1h"
WINDOWS = ("30s", "1m", "3m")
RULE_FOR = "15s"
SETTLE_SECONDS = 10.0
RULE_KEEP_FIRING_FOR = "30s"
VERIFY_SECONDS = 180.0


class Via(str, Enum):
    both = "both"
    detector = "detector"
    alertmanager = "alertmanager"


def up(
    workdir: Annotated[
        Path, typer.Option(help="the demo's folder: config, data, logs (emptied at start)")
    ] = Path("var/demo"),
    prom_port: Annotated[int, typer.Option(help="Prometheus port")] = 9090,
    workload_port: Annotated[int, typer.Option(help="demo workload port")] = 9101,
    detector_port: Annotated[int, typer.Option(help="detector /metrics and /healthz port")] = 9109,
    alertmanager_port: Annotated[int, typer.Option(help="Alertmanager port")] = 9093,
    webhook_port: Annotated[int, typer.Option(help="runbook webhook port")] = 8080,
    autofix: Annotated[
        bool, typer.Option(help="let the webhook really restart (heal) the demo app")
    ] = False,
    hours: Annotated[float, typer.Option(help="hours of history to backfill", min=1.0)] = 6.0,
    interval: Annotated[float, typer.Option(help="detection cycle, seconds", min=1.0)] = 10.0,
    via: Annotated[
        Via,
        typer.Option(
            help="how anomalies reach the webhook: the detector's signed events,"
            " Alertmanager's notifications, or both"
        ),
    ] = Via.both,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help="APP:KIND[:DURATION[:START_OFFSET]] fault, repeatable (see demo workload)"
        ),
    ] = None,
) -> None:
    """Start Prometheus, the demo workload and the detector; print where to look; Ctrl-C stops."""
    from aiops.core.clikit import fail

    # every path is resolved here, once: no process started below depends on the
    # working directory (Prometheus runs inside the folder, the webhook's policy and
    # the detector's catalogue are read later)
    workdir = workdir.expanduser().resolve()
    prometheus = find_binary("prometheus", PROMETHEUS)
    promtool = find_binary("promtool", PROMTOOL)
    if not prometheus or not promtool:
        raise fail(
            "demo: prometheus is not installed: run `bash scripts/demo.sh` (it installs"
            " what is missing) or `sudo apt-get install prometheus`"
        )
    if via is not Via.detector and not find_binary("prometheus-alertmanager", ALERTMANAGER):
        raise fail(
            "demo: prometheus-alertmanager is not installed: run `bash scripts/demo.sh`"
            " or `sudo apt-get install prometheus-alertmanager` (or pass --via detector)"
        )
    for name, port in (
        ("--prom-port", prom_port),
        ("--workload-port", workload_port),
        ("--detector-port", detector_port),
        ("--alertmanager-port", alertmanager_port),
        ("--webhook-port", webhook_port),
    ):
        if not 0 < port < 65536:
            raise fail(f"demo: {name}: {port} is not a port (1-65535)")
        if not port_is_free(port):
            raise fail(
                f"demo: {name}: port {port} is already in use (another demo, or a service"
                f" of this machine): stop it or pass {name} with a free port"
            )
    try:
        specs = [parse_fault_spec(s) for s in fault or []]
    except ValueError as exc:
        raise fail(f"demo: --fault: {exc}") from None
    try:
        prepare_workdir(workdir)
    except DemoError as exc:
        raise fail(f"demo: {exc}") from None

    interrupted = False
    with Started() as stack:
        try:
            _run(
                stack,
                workdir,
                prometheus=prometheus,
                promtool=promtool,
                ports={
                    "prom": prom_port,
                    "workload": workload_port,
                    "detector": detector_port,
                    "alertmanager": alertmanager_port,
                    "webhook": webhook_port,
                },
                autofix=autofix,
                hours=hours,
                interval=interval,
                via=via,
                seed=seed,
                specs=specs,
            )
        except KeyboardInterrupt:  # Ctrl-C before the loop runs (it handles its own)
            typer.echo("interrupted")
            interrupted = True
        except typer.Exit:
            raise
        except Exception as exc:  # one line, never a traceback: the logs say more
            raise fail(f"demo: {_one_line(exc)} (logs in {workdir})", code=1) from None
        finally:
            stopped = list(reversed(stack.names))
            stack.close()  # stop everything that was started, newest first
            if stopped:
                typer.echo(f"stopped: {', '.join(stopped)}")
            (workdir / PIDFILE).unlink(missing_ok=True)
    if interrupted:
        raise typer.Exit(130)


class DemoError(RuntimeError):
    """A demo that cannot start, with what to do about it."""


#: marks a folder as the demo's own, so a restart may empty it (and nothing else)
MARKER = ".aiops-demo"
PIDFILE = "demo.pid"
READ_TOKEN_FILE = "read-token"


def prepare_workdir(workdir: Path) -> None:
    """Empty ``workdir`` for a new run: only a demo's own folder, and only when no
    demo is running in it; a stale folder of an earlier run is simply emptied."""
    if workdir.exists():
        if not workdir.is_dir():
            raise DemoError(f"--workdir {workdir} is a file: pass a folder")
        pidfile = workdir / PIDFILE
        if pidfile.exists():
            pid = _read_pid(pidfile)
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise DemoError(
                    f"another demo (pid {pid}) is running in {workdir}: stop it (Ctrl-C in"
                    f" its terminal, or kill {pid}) or pass --workdir with another folder"
                )
        if any(workdir.iterdir()) and not (workdir / MARKER).exists():
            raise DemoError(
                f"--workdir {workdir} is not empty and not a demo folder: pass an empty"
                " or new folder (the demo empties its folder at every start)"
            )
        try:
            shutil.rmtree(workdir)
        except OSError as exc:
            raise DemoError(
                f"cannot empty {workdir} left by an earlier run ({exc.strerror}):"
                f" remove it by hand (rm -rf {workdir}) or pass another --workdir"
            ) from None
    try:
        workdir.mkdir(parents=True)
        (workdir / MARKER).write_text("a folder of `aiops demo up`: emptied at every start\n")
        (workdir / PIDFILE).write_text(f"{os.getpid()}\n")
    except OSError as exc:
        raise DemoError(
            f"cannot create {workdir} ({exc.strerror}): pass --workdir with a folder you may write"
        ) from None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:600] or type(exc).__name__


class Started(ExitStack):
    """What the demo started, stopped newest first when it ends (Ctrl-C or a failure)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def push_stop(self, name: str, stop: Callable[[], object]) -> None:
        self.names.append(name)
        self.callback(stop)


def _run(
    stack: Started,
    workdir: Path,
    *,
    prometheus: str,
    promtool: str,
    ports: dict[str, int],
    autofix: bool,
    hours: float,
    interval: float,
    via: Via,
    seed: int,
    specs: list[tuple[str, str, float, float]],
) -> None:
    from aiops import wiring
    from aiops.core.clikit import load
    from aiops.core.logs import setup_logging
    from detector.service import make_server

    secret, token, read_token = (secrets.token_hex(16) for _ in range(3))
    direct = via in (Via.both, Via.detector)
    alerting = via in (Via.both, Via.alertmanager)
    webhook_port, detector_port = ports["webhook"], ports["detector"]
    settings = load(
        config=write_catalogue(workdir),
        prom_url=f"http://127.0.0.1:{ports['prom']}",
        interval_seconds=interval,
        http_host="127.0.0.1",
        http_port=detector_port,
        database_url=f"sqlite:///{workdir}/aiops.db",
        webhook_url=f"http://127.0.0.1:{webhook_port}/anomalies" if direct else None,
        webhook_secret=secret,
        # two cycles for a storm's members to join before the webhook hears of it:
        # less than the alert rules' `for` (RULE_FOR), so the detector's event comes first
        incident_settle_seconds=SETTLE_SECONDS,
    )
    setup_logging(settings.log_level)

    now = time.time()
    workload = Workload(seed=seed, start=now - hours * 3600)
    for app, kind, duration, offset in specs:
        workload.inject(app, kind, start=now + offset, duration=duration)
    history = workdir / "history.om"
    typer.echo(f"writing {hours:g}h of demo history and backfilling Prometheus ...")
    # the job and instance labels live scrapes get: the live samples continue these series
    workload.write_openmetrics(
        history,
        end=now,
        interval=SCRAPE_SECONDS,
        labels={"job": "demo", "instance": f"127.0.0.1:{ports['workload']}"},
    )
    backfill(history, workdir / "data", promtool=promtool)
    history.unlink()

    changes_url = f"http://127.0.0.1:{webhook_port}/changes"
    wl_server, _ = serve(
        workload, host="127.0.0.1", port=ports["workload"], announce_to=(changes_url, secret)
    )
    stack.push_stop("demo workload", wl_server.stop)
    wl = wl_server.url
    rules = write_rules(workdir / "rules")
    config = scrape_config(
        {
            "demo": [f"127.0.0.1:{ports['workload']}"],
            "aiops-detector": [f"127.0.0.1:{detector_port}"],
            "aiops-webhook": [f"127.0.0.1:{webhook_port}"],
        },
        interval=f"{SCRAPE_SECONDS:g}s",
        rule_files=rules,
        alertmanagers=[f"127.0.0.1:{ports['alertmanager']}"] if alerting else None,
    )
    # the read endpoints (audit, events, console) want a bearer token: the README's
    # commands read it from this file
    token_file = workdir / READ_TOKEN_FILE
    token_file.touch(mode=0o600)
    token_file.write_text(read_token + "\n")
    hook_settings = load(
        database_url=settings.database_url,
        webhook_secret=secret,
        alertmanager_token=token,
        alertmanager_url=f"http://127.0.0.1:{ports['alertmanager']}",
        autofix_enabled=True,
        autofix_dry_run=not autofix,
        policy_file=write_policy(workdir, wl),
        public_url=f"http://127.0.0.1:{webhook_port}",
        approval_secret=secrets.token_hex(16),
        read_token=read_token,
        cooldown_seconds=600,
        verify_seconds=VERIFY_SECONDS,
    )
    prom = PrometheusProcess(workdir, config, port=ports["prom"], binary=prometheus)
    stack.push_stop("prometheus", prom.stop)
    prom.start()
    am = None
    if alerting:
        am = AlertmanagerProcess(
            workdir / "alertmanager",
            f"http://127.0.0.1:{webhook_port}/alertmanager",
            token,
            port=ports["alertmanager"],
        )
        stack.push_stop("alertmanager", am.stop)
        am.start()
    hook = start_webhook(hook_settings, webhook_port)
    stack.push_stop("webhook", hook.stop)
    detector = wiring.detector(settings)
    server = make_server(wiring.detector_app(detector), host="127.0.0.1", port=detector_port)
    stack.push_stop("detector", lambda: setattr(server, "should_exit", True))
    mode = "REALLY heals the demo app (--autofix)" if autofix else "dry run (add --autofix)"
    paths = {
        Via.both: "the detector's signed events and Alertmanager",
        Via.detector: "the detector's signed events only (no Alertmanager)",
        Via.alertmanager: "Alertmanager only (the detector posts no events)",
    }[via]
    am_line = f"{am.url}" if am is not None else "(not started: --via detector)"
    heal = (
        'ends the app\'s fault (a "restart": executed); the metric recovers, the anomaly\n'
        "clears, and the resolve makes the fix `verified` and closes the incident with its\n"
        "time to resolve (GET /audit?kind=resolved)."
        if autofix
        else "audits what it would do (dry_run); the fault runs its course, and when it\n"
        "ends the anomaly clears and the incident is resolved."
    )
    typer.echo(
        f"""
The whole loop is running (Ctrl-C stops it):
  Prometheus          {prom.url}/alerts   (rules: {len(rules)} file(s), `for` cut to {RULE_FOR})
  Alertmanager        {am_line}
  webhook console     http://127.0.0.1:{webhook_port}/console   ({mode}; sign in with {token_file})
  webhook audit       http://127.0.0.1:{webhook_port}/audit   (bearer token in {token_file})
  detector metrics    http://127.0.0.1:{detector_port}/metrics
  detector health     http://127.0.0.1:{detector_port}/healthz
  detector catalogue  {workdir / "aiops.yaml"}   (windows {", ".join(WINDOWS)}, step {STEP})
  demo workload       {wl}/metrics
Anomalies reach the webhook through {paths}.

Make an app misbehave (kinds: error_burst, latency_shift, latency_jitter, traffic_drop):
  curl -X POST '{wl}/fault?app=payments&kind=error_burst&duration=120'
frontend calls checkout, checkout calls payments: a payments fault raises checkout's
and frontend's errors and lowers checkouts and revenue. Within a minute the detector
flags it and groups the storm into ONE incident whose probable cause is payments
(Prometheus fires AIOpsIncident and AIOpsAnomalyDetected 15 s later); the webhook
opens one incident for it, acts on payments only, and its policy
{heal}
Announce a (fake) deploy first, and the incident names it as the cause's evidence:
  curl -X POST '{wl}/deploy?app=payments'

Read the audit:  curl -s -H "Authorization: Bearer $(cat {token_file})" \\
                   'http://127.0.0.1:{webhook_port}/audit?kind=incident_opened'
End a fault by hand:  curl -X DELETE '{wl}/fault?app=payments'
""",
    )
    server.run()  # returns on SIGINT/SIGTERM


RULES = Path(__file__).resolve().parents[1] / "dashboards" / "rules"


def demo_queries() -> list[dict[str, object]]:
    """The default catalogue at the demo's pace: 30 s rates, 5 s steps, short windows."""
    from detector.catalogue import DEFAULT_QUERIES

    out = []
    for q in DEFAULT_QUERIES:
        q = q.model_copy(
            update={
                "promql": q.promql.replace("[2m]", "[30s]"),
                "step": STEP,
                "lookback": LOOKBACK,
                "windows": WINDOWS,
            }
        )
        entry = q.model_dump(exclude_none=True, exclude={"description"})
        entry["labels"] = list(entry["labels"])
        entry["windows"] = list(entry["windows"])
        out.append(entry)
    return out


def write_catalogue(workdir: Path) -> Path:
    """``<workdir>/aiops.yaml``: the detector's catalogue in the demo (an AIOPS_CONFIG file)."""
    path = workdir / "aiops.yaml"
    header = (
        "# The demo's catalogue (aiops demo up): the default queries at the demo's pace.\n"
        "# Use it with: aiops detect --once --config THIS_FILE --prom-url ...\n"
    )
    catalogue = {"queries": demo_queries(), "depends_on": demo_dependencies()}
    path.write_text(header + yaml.safe_dump(catalogue, sort_keys=False))
    return path


def demo_dependencies(namespace: str = "demo") -> dict[str, list[str]]:
    """The workload's dependency map as the catalogue's ``depends_on:``."""
    from demo.workload import CALLS

    return {
        f"{namespace}.{caller}": [f"{namespace}.{c}" for c in callees]
        for caller, callees in CALLS.items()
    }


def write_rules(outdir: Path) -> list[str]:
    """The shipped rule files with every ``for`` cut to RULE_FOR and ``keep_firing_for``
    to RULE_KEEP_FIRING_FOR (the demo's pace)."""
    from aiops.core.durations import parse_duration

    outdir.mkdir(parents=True, exist_ok=True)
    limit = parse_duration(RULE_FOR)
    paths = []
    for src in sorted(RULES.glob("*.rules.yml")):
        doc = yaml.safe_load(src.read_text())
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                if "for" in rule and parse_duration(str(rule["for"])) > limit:
                    rule["for"] = RULE_FOR
                if "keep_firing_for" in rule:  # still covers a pending sibling's `for`
                    rule["keep_firing_for"] = RULE_KEEP_FIRING_FOR
        dst = outdir / src.name
        dst.write_text(yaml.safe_dump(doc, sort_keys=False))
        paths.append(str(dst))
    return paths


def write_policy(workdir: Path, workload_url: str) -> Path:
    """The demo's policy: an anomaly of an app ends that app's fault (its "restart")."""
    heal = [
        sys.executable,
        "-c",
        "import sys, urllib.request; "
        "urllib.request.urlopen(urllib.request.Request(sys.argv[1], method='DELETE'), timeout=5)",
        workload_url + "/fault?app={app}",
    ]
    rule = {"action": "command", "params": {"argv": heal}}
    policy = {
        "default": [
            {"match": name, **rule}
            for name in ("AIOpsAnomalyDetected", "latency_p99", "success_rate", "error_budget_burn")
        ]
    }
    path = workdir / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


class _Webhook:
    def __init__(self, server: object, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    def stop(self) -> None:
        self.server.should_exit = True  # type: ignore[attr-defined]
        self.thread.join(15)


def start_webhook(settings: object, port: int) -> _Webhook:
    from aiops import wiring
    from aiops.core.clikit import warn
    from detector.service import make_server

    policy, warning = wiring.webhook_policy(settings)  # the rule of `aiops webhook`
    if warning:
        warn(warning)
    hook = wiring.webhook_app(settings, policy)  # type: ignore[arg-type]
    server = make_server(hook, host="127.0.0.1", port=port)
    thread = threading.Thread(target=server.run, name="webhook", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the webhook did not start on port {port}")
        time.sleep(0.05)
    return _Webhook(server, thread)
