"""Delivery and idempotency: replays act once, a re-fire is a new occurrence under the same
cooldown, a failed commit is a 5xx with nothing run (then exactly once on retry), and
``/alertmanager`` is never rate limited. The webhook runs on a real uvicorn server where
concurrency matters, with a command action that leaves one line per execution."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from aiops.core.signing import signed_headers
from feature_store import tables
from tests.adversarial.conftest import served
from tests.runbooks.conftest import SECRET, TOKEN, alerts, anomaly

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_sequential_replays_of_one_alertmanager_delivery_execute_once(make_hook):
    hook = make_hook()
    decisions = [hook.post_alerts(alerts()).json()["alerts"][0]["decision"] for _ in range(5)]
    assert decisions == ["executed"] + ["duplicate"] * 4
    assert hook.runs() == ["checkout"]
    assert hook.kinds().count("duplicate") == 4


@pytest.mark.timeout(60)
def test_twenty_concurrent_copies_of_an_alertmanager_delivery_execute_once(make_hook):
    hook = make_hook()
    body = json.dumps(alerts(fingerprint="burst")).encode()
    with served(hook.app) as url, httpx.Client(timeout=30) as client:

        def post(_: int) -> tuple[int, str]:
            r = client.post(f"{url}/alertmanager", content=body, headers=AUTH)
            return r.status_code, r.json()["alerts"][0]["decision"]

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(post, range(20)))
    assert {status for status, _ in answers} == {200}
    decisions = [d for _, d in answers]
    assert decisions.count("executed") == 1, decisions
    assert decisions.count("duplicate") == 19, decisions
    assert hook.runs() == ["checkout"]
    assert hook.kinds().count("duplicate") == 19  # every replay is audited as one
    with hook.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.deliveries)).scalar() == 1


def test_a_refire_after_resolving_is_a_new_occurrence_but_the_cooldown_holds(make_hook):
    hook = make_hook(cooldown_seconds=600)
    first = hook.post_alerts(alerts(starts="2026-11-23T07:00:00Z")).json()["alerts"][0]
    assert first["decision"] == "executed"
    done = hook.post_alerts(alerts("resolved", starts="2026-11-23T07:00:00Z")).json()
    assert done["alerts"][0]["decision"] == "resolved"
    again = hook.post_alerts(alerts(starts="2026-11-23T07:20:00Z")).json()["alerts"][0]
    assert again["decision"] == "skipped_cooldown"  # new occurrence, same target: cooling
    assert again["incident_id"] != first["incident_id"]  # ... but a new incident
    assert hook.kinds().count("incident_opened") == 2
    assert hook.kinds().count("duplicate") == 0
    assert hook.runs() == ["checkout"]


def test_without_a_cooldown_a_refire_after_resolving_acts_again(make_hook):
    hook = make_hook(cooldown_seconds=0)
    hook.post_alerts(alerts(starts="2026-11-23T07:00:00Z"))
    hook.post_alerts(alerts("resolved", starts="2026-11-23T07:00:00Z"))
    again = hook.post_alerts(alerts(starts="2026-11-23T07:20:00Z")).json()["alerts"][0]
    assert again["decision"] == "executed"
    assert hook.runs() == ["checkout", "checkout"]


def _fail_commits(engine, times: int) -> list[int]:
    """The next ``times`` COMMITs fail as a lost disk or connection would (after every
    statement of the transaction ran)."""
    left = [times]

    @event.listens_for(engine, "before_cursor_execute")
    def _commit(conn, cursor, statement, parameters, context, executemany):
        if statement.strip().upper() == "COMMIT" and left[0] > 0:
            left[0] -= 1
            raise OperationalError(statement, parameters, Exception("disk I/O error"))

    return left


def test_a_failed_commit_answers_503_runs_nothing_and_the_retry_executes_once(make_hook):
    hook = make_hook()
    left = _fail_commits(hook.engine, 1)
    r = hook.post_alerts(alerts(fingerprint="commit"))
    assert left == [0]  # the failure did happen, at the COMMIT
    assert r.status_code == 503, r.text
    assert "nothing was executed" in r.json()["error"]
    body = json.dumps(anomaly("ev-commit")).encode()
    _fail_commits(hook.engine, 1)
    r2 = hook.client.post("/anomalies", content=body, headers=signed_headers(SECRET, body))
    assert r2.status_code == 503
    assert hook.runs() == []
    with hook.engine.connect() as conn:  # nothing of either transaction is left
        assert conn.execute(select(func.count()).select_from(tables.deliveries)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(tables.incidents)).scalar() == 0
    assert "request" not in hook.kinds()
    # Alertmanager retries: now it runs, once; a further retry is a duplicate
    retry = hook.post_alerts(alerts(fingerprint="commit")).json()["alerts"][0]
    assert retry["decision"] == "executed"
    assert hook.post_alerts(alerts(fingerprint="commit")).json()["alerts"][0]["decision"] == (
        "duplicate"
    )
    assert hook.runs() == ["checkout"]


@pytest.mark.timeout(60)
def test_alertmanager_is_never_answered_429_even_in_a_concurrent_burst(make_hook):
    hook = make_hook(rate_limit=1.0, autofix_enabled=False)
    with served(hook.app) as url, httpx.Client(timeout=30) as client:

        def am(i: int) -> int:
            body = json.dumps(alerts(fingerprint=f"fp-{i}")).encode()
            return client.post(f"{url}/alertmanager", content=body, headers=AUTH).status_code

        def detector(i: int) -> int:
            body = json.dumps(anomaly(f"ev-{i}")).encode()
            headers = signed_headers(SECRET, body)
            return client.post(f"{url}/anomalies", content=body, headers=headers).status_code

        with ThreadPoolExecutor(10) as pool:
            am_codes = list(pool.map(am, range(60)))
            detector_codes = list(pool.map(detector, range(20)))
    assert set(am_codes) == {200}
    assert 429 in detector_codes  # the same limiter does hold on /anomalies
