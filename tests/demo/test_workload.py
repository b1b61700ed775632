"""Tests of the demo workload: model, faults, OpenMetrics backfill (real promtool), HTTP, CLI."""

from __future__ import annotations

import itertools
import json
import math
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from demo import APPS, Workload, serve
from demo.cli import parse_fault_spec
from tests.conftest import require_binary

T0 = 1_700_000_000  # fixed epoch so that runs are reproducible
REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^(?P<key>[a-z_]+\{[^}]*\}) (?P<value>\S+) (?P<ts>\d+)$")


def req_key(app: str, code: str) -> str:
    return f'http_requests_total{{namespace="demo",app="{app}",code="{code}"}}'


def dur_key(app: str, part: str) -> str:
    return f'http_request_duration_seconds_{part}{{namespace="demo",app="{app}"}}'


SESSIONS = 'shop_sessions_started_total{namespace="demo",app="frontend"}'
CHECKOUTS = 'shop_checkouts_completed_total{namespace="demo",app="checkout"}'
REVENUE = 'shop_revenue_euros_total{namespace="demo",app="checkout"}'


def window(wl: Workload, start: float, end: float) -> dict[str, float]:
    """Increase of every counter series over [start, end)."""
    wl.advance_to(start)
    before = wl.samples()
    wl.advance_to(end)
    after = wl.samples()
    return {k: after[k] - before[k] for k in after if not k.startswith("demo_fault_active")}


def requests(
    delta: dict[str, float], app: str, codes: tuple[str, ...] = ("200", "404", "500", "503")
) -> float:
    return sum(delta[req_key(app, c)] for c in codes)


def share_5xx(delta: dict[str, float], app: str) -> float:
    return requests(delta, app, ("500", "503")) / requests(delta, app)


def mean_latency(delta: dict[str, float], app: str) -> float:
    return delta[dur_key(app, "sum")] / delta[dur_key(app, "count")]


def parse_openmetrics(path: Path) -> tuple[list[str], dict[str, list[tuple[int, float]]]]:
    lines = path.read_text().split("\n")
    series: dict[str, list[tuple[int, float]]] = {}
    for line in lines:
        m = LINE.match(line)
        if m:
            series.setdefault(m["key"], []).append((int(m["ts"]), float(m["value"])))
    return lines, series


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("/usr/bin/promtool")


# ------------------------------------------------------------------------------ model
def test_backfill_labels_let_live_scrapes_continue_the_same_series(tmp_path: Path) -> None:
    """``labels`` (the job and instance a scrape adds) go on every backfilled series, so the
    live samples continue them instead of starting twins that a sum would count twice."""
    scrape = 'job="demo",instance="127.0.0.1:9101",'
    path = Workload(seed=3, start=T0).write_openmetrics(
        tmp_path / "h.om",
        end=T0 + 60,
        interval=5,
        labels={"job": "demo", "instance": "127.0.0.1:9101"},
    )
    _, series = parse_openmetrics(path)
    plain = Workload(seed=3, start=T0).write_openmetrics(tmp_path / "p.om", end=T0 + 60, interval=5)
    _, plain_series = parse_openmetrics(plain)
    assert series and all(scrape in k for k in series)
    # the same series and samples, each with the scrape's labels in front of its own
    assert {k.replace(scrape, ""): v for k, v in series.items()} == plain_series
    assert len(series[req_key("checkout", "200").replace("{", "{" + scrape)]) == 13


def test_counters_monotonic_and_continuous_across_backfill_junction(tmp_path: Path) -> None:
    end = T0 + 3 * 3600
    wl = Workload(seed=3, start=T0)
    wl.inject("checkout", "error_burst", start=T0 + 3600, duration=900)
    path = wl.write_openmetrics(tmp_path / "history.om", end=end, interval=15)
    _, series = parse_openmetrics(path)
    assert len(series) == 12 + 3 * 14 + 3 + 12  # requests, histograms, business, ground truth
    for key, points in series.items():
        times = [t for t, _ in points]
        assert times[0] == T0 and times[-1] == end, key
        assert all(b - a == 15 for a, b in itertools.pairwise(times)), key
        if not key.startswith("demo_fault_active"):
            values = [v for _, v in points]
            assert all(b >= a for a, b in itertools.pairwise(values)), f"{key} decreased"
    assert wl.state_time == end
    at_end = wl.samples()
    assert {k: points[-1][1] for k, points in series.items()} == pytest.approx(at_end, abs=1e-9)
    # the history contains the incident; the live state then continues from the last sample
    assert series[req_key("checkout", "500")][-1][1] > 200

    previous, increments = at_end, []
    for t in range(end + 15, end + 301, 15):
        wl.advance_to(t + 0.7)  # scrapes are never exactly aligned
        now = wl.samples()
        assert all(now[k] >= previous[k] for k in now if not k.startswith("demo_fault"))
        increments.append(requests(now, "frontend") - requests(previous, "frontend"))
        previous = now
    history = [b - a for (_, a), (_, b) in itertools.pairwise(series[req_key("frontend", "200")])]
    assert 0.5 < increments[0] / float(np.median(history[-20:])) < 2.0  # no jump at the junction
    # exactly the same as a workload that never wrote history: no reset, no jump
    reference = Workload(seed=3, start=T0)
    reference.inject("checkout", "error_burst", start=T0 + 3600, duration=900)
    reference.advance_to(end + 300.7)
    assert reference.samples() == previous


def test_same_seed_same_history_independent_of_step_size(tmp_path: Path) -> None:
    files = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        wl = Workload(seed=seed, start=T0)
        wl.inject("payments", "latency_jitter", start=T0 + 600, duration=600)
        files.append(wl.write_openmetrics(tmp_path / f"{name}.om", end=T0 + 3600).read_bytes())
    assert files[0] == files[1]
    assert files[0] != files[2]
    stepped, direct = Workload(seed=9, start=T0), Workload(seed=9, start=T0)
    rng = np.random.default_rng(0)
    t = float(T0)
    while t < T0 + 5000:
        t += float(rng.uniform(0.1, 400))
        stepped.advance_to(t)
    direct.advance_to(t)
    assert stepped.samples() == direct.samples()


def test_baseline_rates_and_shapes() -> None:
    wl = Workload(seed=1, start=T0)
    delta = window(wl, T0, T0 + 3600)
    for app, lo, hi in (("frontend", 30, 65), ("checkout", 18, 45), ("payments", 15, 35)):
        assert lo < requests(delta, app) / 3600 < hi, app
        assert share_5xx(delta, app) < 0.003
        assert 0.007 < delta[req_key(app, "404")] / requests(delta, app) < 0.013
    medians = {}
    for app in APPS:
        le = {
            float(m): delta[
                f'http_request_duration_seconds_bucket{{namespace="demo",app="{app}",le="{m}"}}'
            ]
            for m in ("0.025", "0.05", "0.1", "0.25", "0.5")
        }
        medians[app] = le
    # about half of frontend requests under 50 ms, of payments under 100-250 ms
    assert 0.4 < medians["frontend"][0.05] / delta[dur_key("frontend", "count")] < 0.8
    assert medians["payments"][0.1] / delta[dur_key("payments", "count")] < 0.5
    assert medians["payments"][0.25] / delta[dur_key("payments", "count")] > 0.8
    assert 0.02 < delta[CHECKOUTS] / delta[SESSIONS] < 0.04
    assert 45 < delta[REVENUE] / delta[CHECKOUTS] < 75


def _fault_vs_baseline(app: str, kind: str, **kw: float) -> tuple[dict, dict, dict, dict]:
    faulty, base = Workload(seed=2, start=T0), Workload(seed=2, start=T0)
    faulty.inject(app, kind, start=T0 + 1200, duration=600, **kw)
    before = window(faulty, T0 + 600, T0 + 1200)
    during = window(faulty, T0 + 1200, T0 + 1800)
    base_before = window(base, T0 + 600, T0 + 1200)
    base_during = window(base, T0 + 1200, T0 + 1800)
    assert before == base_before  # nothing changes before the fault starts
    return before, during, base_during, {"after": window(faulty, T0 + 1800, T0 + 2400)}


def test_error_burst_raises_5xx_share_of_that_app_and_of_its_callers_only() -> None:
    before, during, base, rest = _fault_vs_baseline("checkout", "error_burst")
    assert share_5xx(before, "checkout") < 0.004
    assert 0.065 < share_5xx(during, "checkout") < 0.095
    assert share_5xx(rest["after"], "checkout") < 0.004
    for other in ("frontend", "payments"):
        assert requests(during, other) == requests(base, other)
    assert share_5xx(during, "payments") < 0.004  # checkout calls payments, not back
    # frontend calls checkout: it answers most of checkout's failures with a 5xx
    assert 0.04 < share_5xx(during, "frontend") < share_5xx(during, "checkout")


def test_a_payments_fault_spreads_to_checkout_frontend_and_the_business() -> None:
    _, during, base, _ = _fault_vs_baseline("payments", "error_burst")
    assert 0.065 < share_5xx(during, "payments") < 0.095
    assert 0.045 < share_5xx(during, "checkout") < share_5xx(during, "payments")
    assert 0.03 < share_5xx(during, "frontend") < share_5xx(during, "checkout")
    # a checkout that failed sells nothing: fewer checkouts, less revenue; same sessions
    assert during[SESSIONS] == base[SESSIONS]
    assert during[CHECKOUTS] < 0.97 * base[CHECKOUTS]
    assert during[REVENUE] < base[REVENUE]


def test_latency_shift_triples_mean_latency() -> None:
    before, during, base, rest = _fault_vs_baseline("payments", "latency_shift")
    assert 2.7 < mean_latency(during, "payments") / mean_latency(before, "payments") < 3.3
    assert 2.7 < mean_latency(during, "payments") / mean_latency(base, "payments") < 3.3
    assert 0.9 < mean_latency(rest["after"], "payments") / mean_latency(before, "payments") < 1.1
    # checkout calls payments and adds half its extra latency; frontend, half of that
    checkout = mean_latency(during, "checkout") / mean_latency(base, "checkout")
    frontend = mean_latency(during, "frontend") / mean_latency(base, "frontend")
    assert 1.8 < checkout < 2.2 and 1.35 < frontend < 1.65


def test_latency_jitter_is_a_volatility_spike_not_a_level_shift() -> None:
    wl = Workload(seed=4, start=T0)
    wl.inject("checkout", "latency_jitter", start=T0 + 1800, duration=1800)
    means = []
    for t in range(T0, T0 + 3600, 15):
        means.append(mean_latency(window(wl, t, t + 15), "checkout"))
    logs = np.log(means)
    calm, wild = logs[:120], logs[120:]
    assert np.std(wild) > 4 * np.std(calm)
    level = float(np.mean(np.exp(wild)) / np.mean(np.exp(calm)))
    assert 0.75 < level < 1.35, level


def test_traffic_drop_lowers_requests_and_business() -> None:
    _, during, base, _ = _fault_vs_baseline("frontend", "traffic_drop")
    assert 0.35 < requests(during, "frontend") / requests(base, "frontend") < 0.45
    assert 0.3 < during[SESSIONS] / base[SESSIONS] < 0.5
    assert requests(during, "checkout") == requests(base, "checkout")
    _, during, base, _ = _fault_vs_baseline("checkout", "traffic_drop", magnitude=0.4)
    assert 0.35 < requests(during, "checkout") / requests(base, "checkout") < 0.45
    assert during[CHECKOUTS] < 0.7 * base[CHECKOUTS]
    assert during[REVENUE] < 0.7 * base[REVENUE]
    assert during[SESSIONS] == base[SESSIONS]


def test_fault_validation_listing_and_clear() -> None:
    wl = Workload(seed=0, start=T0)
    for kwargs, message in (
        ({"app": "nope", "kind": "error_burst"}, "unknown app 'nope'"),
        ({"app": "checkout", "kind": "meltdown"}, "unknown fault kind 'meltdown'"),
        ({"app": "checkout", "kind": "error_burst", "magnitude": 1.5}, "magnitude"),
        ({"app": "checkout", "kind": "traffic_drop", "magnitude": -0.1}, "magnitude"),
        ({"app": "checkout", "kind": "latency_shift", "magnitude": math.nan}, "magnitude"),
        ({"app": "checkout", "kind": "latency_shift", "duration": 0}, "duration"),
    ):
        with pytest.raises(ValueError, match=message):
            wl.inject(**kwargs)
    with pytest.raises(ValueError, match="unknown app"):
        wl.clear("nope")
    now = wl.inject("checkout", "latency_shift")
    later = wl.inject("payments", "traffic_drop", start=T0 + 100, duration=50)
    listed = {f["id"]: f for f in wl.faults()}
    assert listed[now.id]["active"] is True and listed[later.id]["active"] is False
    assert listed[now.id]["start"] == T0 and listed[now.id]["duration"] == 600
    wl.advance_to(T0 + 200)
    assert [f["id"] for f in wl.faults()] == [now.id]  # the scheduled one is over
    truth = wl.samples()
    assert truth['demo_fault_active{namespace="demo",app="checkout",kind="latency_shift"}'] == 1
    assert wl.clear("checkout") == 1 and wl.faults() == []
    assert (
        wl.samples()['demo_fault_active{namespace="demo",app="checkout",kind="latency_shift"}'] == 0
    )
    # cleared means back to normal from now on
    base = Workload(seed=0, start=T0)
    assert mean_latency(window(wl, T0 + 600, T0 + 1200), "checkout") == pytest.approx(
        mean_latency(window(base, T0 + 600, T0 + 1200), "checkout"), rel=0.05
    )


# ------------------------------------------------------------------------- promtool
def test_openmetrics_file_is_accepted_by_promtool(tmp_path: Path, promtool: str) -> None:
    end = T0 + 5 * 3600 + 7
    wl = Workload(seed=11, start=T0)
    wl.inject("frontend", "traffic_drop", start=T0 + 7200, duration=1200)
    path = wl.write_openmetrics(tmp_path / "backfill.om", end=end)
    lines, series = parse_openmetrics(path)
    assert lines[-2:] == ["# EOF", ""] and "" not in lines[:-1]
    families = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(families) == len(set(families)) == 6
    owner = [next(f for f in families if line.startswith(f)) for line in lines if LINE.match(line)]
    assert owner == sorted(owner, key=families.index)  # each family's samples are contiguous
    n_samples = sum(len(points) for points in series.values())
    assert n_samples == len(owner)

    blocks = tmp_path / "blocks"
    done = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(path), str(blocks)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [row.split() for row in done.stdout.splitlines()[1:] if row.strip()]
    assert len(rows) >= 3  # 5 hours span several 2 h blocks
    # promtool silently drops out-of-order samples, so count what it actually stored
    assert sum(int(row[4]) for row in rows) == n_samples
    assert min(int(row[1]) for row in rows) == T0 * 1000

    (blocks / "wal").mkdir(exist_ok=True)  # `tsdb dump` opens the dir as a DB
    selector = 'http_requests_total{app="frontend",code="200"}'
    dump = subprocess.run(
        [promtool, "tsdb", "dump", f"--match={selector}", str(blocks)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dump.returncode == 0, dump.stderr
    last = max(
        (int(ts), float(v)) for *_, v, ts in (r.rsplit(" ", 2) for r in dump.stdout.splitlines())
    )
    assert last == (end * 1000, wl.samples()[req_key("frontend", "200")])


# ----------------------------------------------------------------------------- HTTP
class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def metric_values(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_http_fault_api_and_metrics() -> None:
    clock = FakeClock(T0 + 0.5)
    server, thread = serve(Workload(seed=0, start=T0), port=0, clock=clock)
    try:
        base = server.url
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/healthz").json()["status"] == "ok"
            bad = http.post("/fault", params={"app": "checkout", "kind": "meltdown"})
            assert bad.status_code == 400 and "meltdown" in bad.json()["error"]
            bad = http.post(
                "/fault", params={"app": "checkout", "kind": "error_burst", "magnitude": "lots"}
            )
            assert bad.status_code == 400 and "magnitude" in bad.json()["error"]
            assert http.post("/fault", params={"kind": "error_burst"}).status_code == 400
            assert http.get("/faults").json() == []

            clock.now = T0 + 300
            before = metric_values(http.get("/metrics").text)
            good = http.post(
                "/fault",
                params={
                    "app": "payments",
                    "kind": "error_burst",
                    "duration": "900",
                    "magnitude": "0.5",
                },
            )
            assert good.status_code == 200, good.text
            fault = good.json()
            assert fault["app"] == "payments" and fault["start"] == T0 + 300
            assert fault["end"] == T0 + 1200 and fault["magnitude"] == 0.5
            assert [f["id"] for f in http.get("/faults").json()] == [fault["id"]]

            clock.now = T0 + 420
            text = http.get("/metrics").text
            assert (
                'demo_fault_active{app="payments",kind="error_burst",namespace="demo"} 1.0' in text
            )
            after = metric_values(text)

            def delta(code: str) -> float:
                key = f'http_requests_total{{app="payments",code="{code}",namespace="demo"}}'
                return after[key] - before[key]

            errors = delta("500") + delta("503")
            assert 0.4 < errors / (errors + delta("200") + delta("404")) < 0.6

            assert http.delete("/fault", params={"app": "payments"}).json() == {"cleared": 1}
            assert http.get("/faults").json() == []
            assert http.get("/nowhere").status_code == 404
    finally:
        server.stop()
    assert not thread.is_alive()


# ------------------------------------------------------------------------------ CLI
def test_parse_fault_spec() -> None:
    assert parse_fault_spec("checkout:latency_shift:1800:-1200") == (
        "checkout",
        "latency_shift",
        1800.0,
        -1200.0,
    )
    assert parse_fault_spec("frontend:traffic_drop") == ("frontend", "traffic_drop", 600.0, 0.0)
    for bad in (
        "checkout",
        "mars:error_burst",
        "checkout:boom",
        "checkout:error_burst:x",
        "checkout:error_burst:-5",
    ):
        with pytest.raises(ValueError):
            parse_fault_spec(bad)


def test_cli_backfills_then_serves_until_sigterm(tmp_path: Path) -> None:
    history = tmp_path / "history.om"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "demo.cli",
            "workload",
            "--port",
            "0",
            "--backfill-file",
            str(history),
            "--backfill-hours",
            "1",
            "--fault",
            "checkout:latency_shift:1800:-1200",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    output: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not (output and output[-1].startswith("clear:")):
            assert time.monotonic() < deadline, "".join(output)
            try:
                output.append(lines.get(timeout=0.5))
            except queue.Empty:
                assert proc.poll() is None, "".join(output)
        text = "".join(output)
        m = re.search(r"metrics: (http://\S+)/metrics", text)
        assert m, text
        url = m[1]
        assert str(history) in text and "curl -X POST" in text
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'app="checkout",kind="latency_shift"' in metrics
        faults = httpx.get(f"{url}/faults", timeout=10).json()
        assert [(f["app"], f["kind"], f["active"]) for f in faults] == [
            ("checkout", "latency_shift", True)
        ]
        _, series = parse_openmetrics(history)
        count, total = series[dur_key("checkout", "count")], series[dur_key("checkout", "sum")]
        span = total[-1][0] - total[0][0]
        assert 3590 <= span <= 3600
        # latency of the last 20 minutes (the fault) vs the 20 minutes before it
        i, j = len(count) - 1 - 80, len(count) - 1 - 160
        late = (total[-1][1] - total[i][1]) / (count[-1][1] - count[i][1])
        early = (total[i][1] - total[j][1]) / (count[i][1] - count[j][1])
        assert 2.5 < late / early < 3.5
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    assert json.dumps(faults)  # faults were JSON serialisable
