"""The runtime kill switch flipped in the middle of a burst, the way an operator flips it:
``POST /killswitch`` on the serving webhook, or ``aiops killswitch halt`` from another
process on the shared database (as a second replica would see it).

60 incidents of one app race through a real uvicorn server from 12 clients. Once five
actions have run, the switch goes off. Afterwards: every action that ran is audited
``executed``; every other event is ``skipped_disabled`` (at its decision, or right
before its action, naming the halt); no action starts once the halt has committed
(every event posted after it is refused and the trace stops growing); the webhook kept
answering 200 throughout."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.adversarial.conftest import Burst, served
from tests.integration.conftest import clean_env, poll, run_aiops

ADMIN = "admin-token-for-the-burst"
N = 60
#: the action: one line in the trace, then 0.3 s of work (a burst lasts a few seconds,
#: long enough for a CLI started from another process to land inside it)
SLOW = "import sys, time; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10)); time.sleep(0.3)"


def slow_policy(path: Path, trace: Path) -> Path:
    argv = [sys.executable, "-c", SLOW, str(trace), "{app}"]
    path.write_text(
        "default:\n  - match: latency_p99\n    action: command\n"
        f"    params: {{argv: {json.dumps(argv)}}}\n"
    )
    return path


def _flip_http(url: str, db: str) -> None:
    r = httpx.post(
        f"{url}/killswitch",
        json={"enabled": False, "reason": "burst test"},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["changed"] is True, r.text


def _flip_cli(url: str, db: str) -> None:
    env = clean_env(AIOPS_DATABASE_URL=db)
    proc = run_aiops("killswitch", "halt", "--reason", "burst test", env=env)
    assert proc.returncode == 0 and "*: halted" in proc.stdout, proc.stderr


@pytest.mark.timeout(180)
@pytest.mark.parametrize("flip", [_flip_http, _flip_cli], ids=["http", "cli"])
def test_a_runtime_halt_in_a_burst_stops_every_action_not_yet_started(
    make_hook, tmp_path: Path, flip
):
    trace = tmp_path / "trace"
    db = f"sqlite:///{tmp_path}/burst.db"
    hook = make_hook(
        policy_file=slow_policy(tmp_path / "p.yaml", trace),
        database_url=db,
        admin_token=ADMIN,
        cooldown_seconds=0,
        circuit_max_hourly=1000,
        circuit_max_daily=1000,
        max_actions_per_window=1000,
    )
    burst = Burst("halt")

    def ran() -> list[str]:
        return trace.read_text().splitlines() if trace.exists() else []

    with (
        served(hook.app) as url,
        httpx.Client(timeout=60) as http,
        ThreadPoolExecutor(12) as pool,
    ):
        futures = [pool.submit(burst.post, http, url, i) for i in range(N)]
        poll(lambda: len(ran()) >= 5, timeout=60, every=0.002, what="five actions run")
        flip(url, db)
        halted_at = time.time()
        # after the halt committed, nothing new gets through, on any route
        after = [burst.post(http, url, N + i) for i in range(5)]
        for f in futures:
            f.result()
    decisions = Counter(burst.answers)
    executed = decisions["executed"]
    assert 5 <= executed < N, decisions
    assert len(ran()) == executed  # every action that ran was audited, none ran unaudited
    assert decisions["skipped_disabled"] == N + 5 - executed, decisions
    assert after == ["skipped_disabled"] * 5
    assert set(decisions) == {"executed", "skipped_disabled"}, decisions
    kinds = Counter(hook.kinds())
    assert kinds["executed"] == executed and kinds["skipped_disabled"] == N + 5 - executed
    assert kinds["halted"] == 1
    refused = hook.audit(kind="skipped_disabled")
    assert all("burst test" in str(r["details"]) for r in refused), refused[:3]
    # the actions that were decided but had not started when the halt came were stopped
    late = [r for r in refused if "before the action started" in r["details"]["why"]]
    assert late, "no decided action was stopped at its start (the flip came too late?)"
    executed_rows = hook.audit(kind="executed")
    # an action audited "executed" finished; none of them began after the halt: each
    # one's run started (ts - seconds) before the halt committed
    assert all(r["ts"] - r["details"]["seconds"] <= halted_at for r in executed_rows)
    assert hook.metric("runbooks_enabled") == 0.0
