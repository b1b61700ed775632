"""Guard state in a real Redis: atomic limits across two webhook processes, fail closed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from aiops.core.signing import signed_headers
from demo.prometheus import free_port
from runbooks.guards import GuardUnavailable, Limits, RedisGuards
from tests.conftest import require_binary
from tests.integration.conftest import clean_env, poll
from tests.redis_server import REDIS_SERVER, RedisProcess
from tests.runbooks.conftest import RECORDER, SECRET, TOKEN, anomaly

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_server(tmp_path):
    require_binary(REDIS_SERVER)
    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.stop()


def test_reserve_counts_atomically_and_check_does_not(redis_server):
    guards = RedisGuards(redis_server.url)
    limits = Limits(cooldown=0, hourly=2, daily=5, fleet=100)
    now = time.time()
    assert guards.check(None, "app", "ns/app", "x", now, limits) is None
    assert guards.check(None, "app", "ns/app", "x", now, limits) is None  # check counts nothing
    assert guards.reserve(None, "app", "ns/app", "x", now, limits) is None
    assert guards.reserve(None, "app", "ns/app", "x", now, limits) is None
    kind, why = guards.reserve(None, "app", "ns/app", "x", now, limits)
    assert kind == "skipped_circuit" and "limit 2" in why
    # an hour later the hourly budget is back, the daily one still counts
    assert guards.reserve(None, "app", "ns/app", "x", now + 3700, limits) is None
    cooling = Limits(cooldown=600, hourly=10, daily=10, fleet=100)
    assert guards.reserve(None, "other", "ns/other", "x", now, cooling) is None
    kind, why = guards.reserve(None, "other", "ns/other", "x", now, cooling)
    assert kind == "skipped_cooldown" and "cooling down" in why
    assert guards.reserve(None, "other", "ns/other", "y", now, cooling) is None  # per action
    left = guards.cooldowns(None, now, 600)
    assert set(left) == {("ns/other", "x"), ("ns/other", "y")}
    assert all(590 < v <= 600 for v in left.values())


def test_unreachable_redis_fails_closed(make_hook, redis_server):
    hook = make_hook(redis_url=redis_server.url)
    redis_server.stop()
    r = hook.post_event(anomaly("ev-1"))
    assert r.status_code == 200
    assert r.json()["decision"] == "skipped_guard_unavailable"
    assert hook.runs() == []
    row = hook.audit(kind="skipped_guard_unavailable")[0]
    assert "unreachable" in row["details"]["why"]
    assert hook.client.get("/healthz").status_code == 503
    with pytest.raises(GuardUnavailable):
        RedisGuards(redis_server.url, timeout=0.5).reserve(
            None, "a", "t", "x", time.time(), Limits(0, 1, 1)
        )


def _webhook(
    tmp_path: Path, name: str, redis_url: str, trace: Path
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    policy = tmp_path / f"{name}.yaml"
    argv = [sys.executable, "-c", RECORDER, str(trace), "{app}"]
    policy.write_text(
        "shop.checkout:\n  - match: latency_p99\n    action: command\n"
        f"    params: {{argv: {json.dumps(argv)}}}\n"
    )
    env = clean_env()
    env.update(
        AIOPS_DATABASE_URL=f"sqlite:///{tmp_path}/{name}.db",
        RUNBOOK_REDIS_URL=redis_url,
        RUNBOOK_WEBHOOK_SECRET=SECRET,
        RUNBOOK_ALERTMANAGER_TOKEN=TOKEN,  # actions really run: every input authenticated
        RUNBOOK_POLICY_FILE=str(policy),
        RUNBOOK_AUTOFIX_ENABLED="true",
        RUNBOOK_AUTOFIX_DRY_RUN="false",
        RUNBOOK_COOLDOWN_SECONDS="0",
        RUNBOOK_CIRCUIT_MAX_HOURLY="3",
        RUNBOOK_MAX_ACTIONS_PER_WINDOW="1000",  # the per-app breaker is under test
        RUNBOOK_RATE_LIMIT="10000",
        AIOPS_LOG_LEVEL="WARNING",
    )
    exe = Path(sys.executable).with_name("aiops")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "aiops"]
    proc = subprocess.Popen([*cmd, "webhook", "--host", "127.0.0.1", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    poll(
        lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200,
        timeout=60,
        what=f"webhook {name}",
    )
    return proc, url


@pytest.mark.timeout(180)
def test_two_webhook_processes_racing_50_deliveries_execute_exactly_the_limit(
    redis_server, tmp_path
):
    trace = tmp_path / "trace.txt"
    hooks = [_webhook(tmp_path, f"w{i}", redis_server.url, trace) for i in range(2)]
    try:

        def post(i: int) -> str:
            event = anomaly(f"race-{i}")
            event["labels"]["pod"] = f"checkout-{i}"  # 50 incidents of one app
            body = json.dumps(event).encode()
            url = hooks[i % 2][1]
            r = httpx.post(
                f"{url}/anomalies", content=body, headers=signed_headers(SECRET, body), timeout=30
            )
            assert r.status_code == 200, r.text
            return r.json()["decision"]

        with ThreadPoolExecutor(50) as pool:
            decisions = list(pool.map(post, range(50)))
        assert decisions.count("executed") == 3, decisions
        assert decisions.count("skipped_circuit") == 47
        assert trace.read_text().splitlines() == ["checkout"] * 3
        # the breaker's state outlives the processes: a restarted replica still refuses
        proc = hooks[0][0]
        proc.terminate()
        proc.wait(20)
        hooks[0] = _webhook(tmp_path, "w0", redis_server.url, trace)
        body = json.dumps(anomaly("after-restart")).encode()
        r = httpx.post(
            f"{hooks[0][1]}/anomalies",
            content=body,
            headers=signed_headers(SECRET, body),
            timeout=30,
        )
        assert r.json()["decision"] == "skipped_circuit"
    finally:
        for proc, _ in hooks:
            proc.terminate()
            proc.wait(20)


def test_the_blast_radius_counts_every_app_and_forgets_after_its_window(redis_server):
    guards = RedisGuards(redis_server.url)
    limits = Limits(cooldown=0, hourly=10, daily=10, fleet=2, fleet_window=600)
    now = time.time()
    assert guards.reserve(None, "a", "ns/a", "x", now, limits) is None
    assert guards.reserve(None, "b", "ns/b", "x", now + 1, limits) is None
    kind, why = guards.reserve(None, "c", "ns/c", "x", now + 2, limits)
    assert kind == "skipped_blast_radius" and "2 actions across all apps" in why
    assert guards.check(None, "d", "ns/d", "x", now + 3, limits)[0] == "skipped_blast_radius"
    assert guards.reserve(None, "c", "ns/c", "x", now + 602, limits) is None  # window passed
