"""The README's commands, run exactly as written, from the root of a fresh clone.

The repository is cloned into a temporary folder (with this working tree's
uncommitted changes laid over it, so a developer tests what they see), and
there, as a newcomer would:

1. ``bash scripts/demo.sh --help`` lists every option the README names;
2. ``bash scripts/demo.sh`` (the README's first command, its default options and
   folder, free ports through the documented ``--*-port`` options) installs what
   it needs into the clone's ``.venv`` and starts the whole loop;
3. every shell block of the README not marked ``*Not run here: ...*`` runs in
   README order, each command as written (only the demo's default ports are
   moved), and each answer is checked as the README describes it: status codes,
   the fault list, the gauges named, the audit sequence, the CLI's output;
4. Ctrl-C (SIGINT to the demo's process group, as a terminal sends it) stops
   everything the demo started: exit 0, every port free.

A README command that no check here knows fails the test (``test_readme.py`` at the
top of ``tests/`` fails it even without a demo), so the README cannot grow a
command nobody runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from demo.prometheus import free_port, port_is_free
from tests.conftest import require_binary
from tests.integration.conftest import clean_env, demo_audit, poll
from tests.readme import DEMO_PORTS, REPO, run_blocks, with_ports

pytestmark = pytest.mark.integration

#: the README's step 2: "flagged within a minute" (plus a cycle and a scrape of slack)
FLAG_SECONDS = 90.0
#: the README's step 3: resolved "a minute or two after the fault ends"
RESOLVE_SECONDS = 240.0
#: setup in a fresh clone (a new .venv) and the 6-hour backfill
START_SECONDS = 600.0


def fresh_clone(dest: Path) -> Path:
    """``git clone`` of this repository, with the working tree's changes laid over it."""
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(dest)],
        check=True,
        capture_output=True,
    )
    changed = subprocess.run(
        ["git", "ls-files", "--modified", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for rel in filter(None, changed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    deleted = subprocess.run(
        ["git", "ls-files", "--deleted", "-z"], cwd=REPO, capture_output=True, text=True
    ).stdout.split("\0")
    for rel in filter(None, deleted):
        (dest / rel).unlink(missing_ok=True)
    return dest


def newcomer_env() -> dict[str, str]:
    """A shell's environment with no setting of the service and nothing of this checkout
    (no venv on PATH): only what the README says to set."""
    env = clean_env()
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(REPO))
    )
    env["COLUMNS"] = "200"  # a terminal wide enough that a table row is one line
    return env


@dataclass
class Walk:
    """The running demo and what the README's commands have done so far."""

    root: Path
    ports: dict[str, int]
    env: dict[str, str]
    demo: subprocess.Popen | None = None
    log: Path | None = None
    fault_posted_at: dict[str, float] = field(default_factory=dict)
    fault_ends_at: dict[str, float] = field(default_factory=dict)
    deployed: set[str] = field(default_factory=set)
    ran: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def sh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``command`` as a user types it, in the clone's root."""
        self.assert_demo_alive()
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def sh_until(
        self, command: str, ok: Callable[[subprocess.CompletedProcess], bool], *, timeout: float
    ) -> subprocess.CompletedProcess:
        """Run ``command`` again until ``ok`` holds for its answer, as a user would."""
        last: list[subprocess.CompletedProcess] = []

        def once() -> bool:
            last[:] = [self.sh(command)]
            return ok(last[0])

        try:
            poll(once, timeout=timeout, every=2.0, what=command)
        except AssertionError:
            out = last[0] if last else None
            pytest.fail(
                f"{command!r} never gave the answer the README describes within {timeout:g}s;"
                f" last: rc={out and out.returncode} out={out and out.stdout[-800:]!r}"
                f" err={out and out.stderr[-400:]!r}\ndemo log: {self.tail()}"
            )
        return last[0]

    def assert_demo_alive(self) -> None:
        if self.demo is not None and self.demo.poll() is not None:
            pytest.fail(f"bash scripts/demo.sh exited {self.demo.returncode}: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log else ""

    def audit(self) -> list[dict]:
        """The whole audit, oldest first (with the token the demo wrote)."""
        return demo_audit(self.url("webhook"), self.root / "var/demo")


def _json(out: subprocess.CompletedProcess) -> object:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# --- one check per kind of README command ----------------------------------------------


def start_demo(walk: Walk, command: str) -> None:
    """``bash scripts/demo.sh``: started with its defaults, ports moved to free ones."""
    options = " ".join(f"--{name}-port {port}" for name, port in walk.ports.items())
    typed = command.replace("bash scripts/demo.sh", f"bash scripts/demo.sh {options}", 1)
    walk.log = walk.root.parent / "demo.log"
    walk.demo = subprocess.Popen(
        ["bash", "-c", typed],
        cwd=walk.root,
        env=walk.env,
        stdout=walk.log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    poll(
        lambda: (walk.assert_demo_alive(), "The whole loop is running" in walk.tail())[1],
        timeout=START_SECONDS,
        every=1.0,
        what="bash scripts/demo.sh to start the loop",
    )
    assert (walk.root / ".venv/bin/aiops").exists()  # it installed into the clone
    assert (walk.root / "var/demo/read-token").exists()  # the folder is the default one


def ci_runs_the_test_command(walk: Walk, command: str) -> None:
    """``bash scripts/test.sh``: CI runs exactly this command (it is running us)."""
    assert "bash scripts/test.sh" in (walk.root / ".ci/run").read_text()


def post_fault(walk: Walk, command: str) -> None:
    """``curl -X POST '.../fault?app=A&kind=K[&duration=S]'``: 200 with the fault."""
    out = walk.sh(command)
    fault = _json(out)
    app = re.search(r"app=(\w+)", command).group(1)  # type: ignore[union-attr]
    kind = re.search(r"kind=(\w+)", command).group(1)  # type: ignore[union-attr]
    assert isinstance(fault, dict) and fault["app"] == app and fault["kind"] == kind, fault
    assert fault["active"] is True, fault
    walk.fault_posted_at.setdefault(f"{app}:{kind}", time.monotonic())
    walk.fault_ends_at[f"{app}:{kind}"] = time.monotonic() + float(fault["duration"])


def announce_deploy(walk: Walk, command: str) -> None:
    """``curl -X POST '.../deploy?app=A'``: 200, the change sent to the webhook, recorded."""
    out = _json(walk.sh(command))
    app = re.search(r"app=(\w+)", command).group(1)  # type: ignore[union-attr]
    assert isinstance(out, dict) and out["change"]["labels"]["app"] == app, out
    assert out["change"]["kind"] == "deploy" and out["webhook"]["recorded"] is True, out
    walk.deployed.add(app)


def delete_fault(walk: Walk, command: str) -> None:
    """``curl -X DELETE '.../fault[?app=A]'``: 200, the faults of that app (or all) end."""
    out = _json(walk.sh(command))
    assert isinstance(out, dict) and out["cleared"] >= 1, out
    faults = httpx.get(f"{walk.url('workload')}/faults", timeout=5).json()
    app = re.search(r"app=(\w+)", command)
    left = [f for f in faults if f["active"] and (app is None or f["app"] == app.group(1))]
    assert left == [], faults


def list_faults(walk: Walk, command: str) -> None:
    """``curl .../faults``: the faults posted before, active."""
    faults = _json(walk.sh(command))
    assert isinstance(faults, list)
    active = {f"{f['app']}:{f['kind']}" for f in faults if f["active"]}
    assert set(walk.fault_posted_at) <= active, faults


def gauges_show_the_reason(walk: Walk, command: str) -> None:
    """``curl -s .../metrics | grep 'aiops_anomaly_info{...app="payments"'``: within a
    minute, payments' success_rate has its reason ``level_shift``."""

    def flagged(out: subprocess.CompletedProcess) -> bool:
        return out.returncode == 0 and any(
            'metric="success_rate"' in line and 'reason="level_shift"' in line
            for line in out.stdout.splitlines()
        )

    posted = walk.fault_posted_at["payments:error_burst"]
    walk.sh_until(command, flagged, timeout=max(1.0, posted + FLAG_SECONDS - time.monotonic()))
    assert "anomaly started metric=success_rate" in walk.log.read_text()  # type: ignore[union-attr]


#: payments' series an error burst moves; the first to reach the webhook gets the dry
#: run, the other one the cooldown (same target, same action), as the README says
#: payments' series the error burst moves: its 5xx show in the success rate and the error
#: budget burn, and in p99 latency too; a success rate that starts as a spike (shown, not
#: posted) may reach the webhook after the latency's level_shift
ERROR_METRICS = ("success_rate", "error_budget_burn", "latency_p99")


def audit_dry_run(walk: Walk, command: str) -> None:
    """The audit's ``dry_run`` rows: an incident of payments' success_rate (or its error
    budget burn, or its p99 latency) went request → incident_opened → policy_match →
    dry_run, and nothing ran."""

    def has_payments(out: subprocess.CompletedProcess) -> bool:
        if out.returncode != 0:
            return False
        rows = json.loads(out.stdout)["rows"]
        return any(r["app"] == "payments" and r["metric"] in ERROR_METRICS for r in rows)

    out = walk.sh_until(command, has_payments, timeout=FLAG_SECONDS)
    row = next(r for r in json.loads(out.stdout)["rows"] if r["metric"] in ERROR_METRICS)
    rows = walk.audit()
    mine = [r for r in rows if r["incident_id"] == row["incident_id"]]
    opened = rows.index(mine[0])
    kinds = [rows[opened - 1]["kind"], *(r["kind"] for r in mine)]
    assert kinds[:4] == ["request", "incident_opened", "policy_match", "dry_run"], kinds
    assert not [r for r in rows if r["kind"] == "executed"], "a dry run ran an action"
    # one incident for the storm, its probable cause payments, the deploy its evidence
    details = mine[0]["details"]
    assert details["cause"] == "demo.payments", details
    if "payments" in walk.deployed:
        assert any("demo.payments was deployed" in line for line in details["evidence"]), details


def audit_resolved(walk: Walk, command: str) -> None:
    """The audit's ``resolved`` rows: payments' incident, with its time to resolve, a
    minute or two after the fault ended."""

    def resolved(out: subprocess.CompletedProcess) -> bool:
        if out.returncode != 0:
            return False
        return any(
            r["app"] == "payments"
            and r["metric"] in ERROR_METRICS
            and (r["details"].get("time_to_resolve_seconds") or 0) > 0
            for r in json.loads(out.stdout)["rows"]
        )

    ends = walk.fault_ends_at["payments:error_burst"]
    walk.sh_until(command, resolved, timeout=max(1.0, ends + RESOLVE_SECONDS - time.monotonic()))


def detect_once_demo(walk: Walk, command: str) -> None:
    """``aiops detect --once --config var/demo/aiops.yaml``: a table of every catalogue
    series of the demo, payments' success_rate ``ok`` again."""
    out = walk.sh(command)
    assert out.returncode == 0, out.stderr
    for name in ("success_rate", "latency_p99", "error_budget_burn", "checkouts", "revenue"):
        assert f"{name}{{" in out.stdout, out.stdout
    row = next(
        line
        for line in out.stdout.splitlines()
        if 'success_rate{app="payments",namespace="demo"}' in line
    )
    assert " ok " in row, row


def setup_again(walk: Walk, command: str) -> None:
    """``bash scripts/setup.sh``: safe to run again, installs nothing new."""
    out = walk.sh(command, timeout=600)
    assert out.returncode == 0, out.stdout[-1000:] + out.stderr[-1000:]
    assert "installing" not in out.stdout, out.stdout


def export_prom_url(walk: Walk, command: str) -> None:
    """``export PROM_URL=...``: the following commands see it, as in the user's shell."""
    m = re.match(r"export PROM_URL=(\S+)", command)
    assert m is not None, command
    walk.env["PROM_URL"] = m.group(1)
    assert httpx.get(f"{m.group(1)}/-/ready", timeout=5).status_code == 200


def queries(walk: Walk, command: str) -> None:
    """``aiops queries``: the default catalogue."""
    out = walk.sh(command)
    assert out.returncode == 0, out.stderr
    for name in ("success_rate", "latency_p99", "error_budget_burn", "checkouts", "revenue"):
        assert name in out.stdout, out.stdout


def detect_once(walk: Walk, command: str) -> None:
    """``aiops detect --once`` against PROM_URL: one cycle, as a table."""
    out = walk.sh(command)
    assert out.returncode == 0, out.stderr
    assert "success_rate{" in out.stdout and "status" in out.stdout, out.stdout


def detect_once_json(walk: Walk, command: str) -> None:
    """``aiops detect --once --format json``: one object per series with the documented
    fields."""
    rows = _json(walk.sh(command))
    assert isinstance(rows, list) and rows, rows
    fields = {"metric", "labels", "value", "baseline", "score", "anomalous", "reasons", "status"}
    assert all(fields <= set(r) for r in rows), rows[0]
    assert {r["metric"] for r in rows} >= {"success_rate", "latency_p99"}


#: (pattern of a README command, its check), first match wins
CHECKS: list[tuple[re.Pattern[str], Callable[[Walk, str], None]]] = [
    (re.compile(r"^bash scripts/demo\.sh(\s+#.*)?$"), start_demo),
    (re.compile(r"^bash scripts/test\.sh(\s+#.*)?$"), ci_runs_the_test_command),
    (re.compile(r"^bash scripts/setup\.sh(\s+#.*)?$"), setup_again),
    (re.compile(r"^curl -X POST 'http://127\.0\.0\.1:9101/fault\?app=\w+&kind=\w+"), post_fault),
    (re.compile(r"^curl -X DELETE 'http://127\.0\.0\.1:9101/fault"), delete_fault),
    (re.compile(r"^curl -X POST 'http://127\.0\.0\.1:9101/deploy\?app=\w+'$"), announce_deploy),
    (re.compile(r"^curl http://127\.0\.0\.1:9101/faults"), list_faults),
    (re.compile(r"^curl -s http://127\.0\.0\.1:9109/metrics \| grep"), gauges_show_the_reason),
    (re.compile(r"^curl -s -H .*/audit\?kind=dry_run'$"), audit_dry_run),
    (re.compile(r"^curl -s -H .*/audit\?kind=resolved'$"), audit_resolved),
    (
        re.compile(r"^\.venv/bin/aiops detect --once --config var/demo/aiops\.yaml"),
        detect_once_demo,
    ),
    (re.compile(r"^export PROM_URL="), export_prom_url),
    (re.compile(r"^\.venv/bin/aiops queries(\s+#.*)?$"), queries),
    (re.compile(r"^\.venv/bin/aiops detect --once --format json(\s+#.*)?$"), detect_once_json),
    (re.compile(r"^\.venv/bin/aiops detect --once(\s+#.*)?$"), detect_once),
]


def check_for(command: str) -> Callable[[Walk, str], None] | None:
    return next((check for pattern, check in CHECKS if pattern.search(command)), None)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    require_binary("/usr/bin/prometheus")
    require_binary("/usr/bin/prometheus-alertmanager")
    require_binary("git")
    return fresh_clone(tmp_path_factory.mktemp("clone") / "aiops")


@pytest.mark.timeout(300)
def test_demo_help_from_a_fresh_clone_lists_the_documented_options(clone):
    out = subprocess.run(
        ["bash", "scripts/demo.sh", "--help"],
        cwd=clone,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for option in (
        "--workdir",
        "--autofix",
        "--via",
        "--fault",
        "--hours",
        "--interval",
        *(f"--{name}-port" for name in DEMO_PORTS),
    ):
        assert option in out.stdout, option


@pytest.mark.timeout(1500)
def test_the_readme_runs_as_written_from_a_fresh_clone(clone):
    ports = {name: free_port() for name in DEMO_PORTS}
    walk = Walk(root=clone, ports=ports, env=newcomer_env())
    try:
        for block in run_blocks():
            for command in block.commands:
                check = check_for(command)
                assert check is not None, f"README line {block.line}: no check for {command!r}"
                check(walk, with_ports(command, ports))
                walk.ran.append(command)
        assert walk.demo is not None, "the README's first command never started the demo"
        # Ctrl-C: SIGINT to the foreground process group, as a terminal sends it
        os.killpg(walk.demo.pid, signal.SIGINT)
        assert walk.demo.wait(90) == 0, walk.tail()
        assert "stopped: detector, webhook, alertmanager, prometheus, demo workload" in walk.tail()
        poll(
            lambda: all(port_is_free(p) for p in ports.values()),
            timeout=30,
            what="every port of the demo to be free after Ctrl-C",
        )
        assert not (clone / "var/demo/demo.pid").exists()
    finally:
        if walk.demo is not None and walk.demo.poll() is None:
            os.killpg(walk.demo.pid, signal.SIGKILL)
            walk.demo.wait(30)
    assert any("scripts/demo.sh" in c for c in walk.ran)
    assert any("/audit?kind=resolved" in c for c in walk.ran)
