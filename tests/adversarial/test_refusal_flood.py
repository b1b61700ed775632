"""Issue 17, item 5: forged requests do not fill the append-only audit.

Every refusal (401: a forged or stale signature, a wrong bearer or read token) is
counted in ``runbooks_refusals_total{endpoint,reason}``; per endpoint and source the
first refusal of a minute is an audit row of its own, the others of that minute one
aggregated row (written when the minute is over, or at shutdown), and sources past
``MAX_SOURCES`` in a minute share one row per endpoint. The refusals kept out of the
audit that way are ``runbooks_refusals_suppressed_total{endpoint}``.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from aiops.core.signing import signed_headers
from feature_store import tables
from runbooks.access import MAX_SOURCES
from tests.adversarial.conftest import served
from tests.runbooks.conftest import anomaly

FORGED = 2000


def _unauthorized(hook: Any) -> list[dict[str, Any]]:
    """The ``unauthorized`` rows, straight from the table (what the audit keeps)."""
    a = tables.audit
    with hook.engine.connect() as conn:
        q = select(a).where(a.c.kind == "unauthorized").order_by(a.c.id)
        return [dict(r._mapping) for r in conn.execute(q)]


def _refused(rows: list[dict[str, Any]], route: str) -> int:
    """Refusals the rows account for: one per row of its own, plus the aggregated counts."""
    return sum(r["details"].get("aggregated", 1) for r in rows if r["details"]["route"] == route)


def _forge(client: httpx.Client, url: str, i: int) -> int:
    body = json.dumps(anomaly(f"forged-{i}")).encode()
    headers = signed_headers("not-the-secret", body)
    return client.post(f"{url}/anomalies", content=body, headers=headers).status_code


@pytest.mark.timeout(180)
def test_2000_forged_anomalies_write_at_most_a_handful_of_audit_rows(make_hook):
    hook = make_hook()
    t0 = time.monotonic()
    with served(hook.app) as url:
        clients = [httpx.Client(timeout=30) for _ in range(4)]
        try:
            with ThreadPoolExecutor(4) as pool:
                codes = list(pool.map(lambda i: _forge(clients[i % 4], url, i), range(FORGED)))
        finally:
            for c in clients:
                c.close()
        elapsed = time.monotonic() - t0
        assert codes == [401] * FORGED
        during = _unauthorized(hook)
        # while the minute lasts: the source's first refusal (two if a minute ended)
        assert 1 <= len(during) <= 2, during
        assert during[0]["details"] == {
            "route": "/anomalies",
            "why": "signature does not match",
        }
    # the server stopped: the counted refusals were written as aggregated rows
    rows = _unauthorized(hook)
    assert len(rows) <= 4, rows  # the measure: 2,000 forged posts, at most 4 rows
    aggregated = [r for r in rows if "aggregated" in r["details"]]
    assert aggregated and all(r["actor"] == "http:127.0.0.1" for r in rows)
    assert all(
        r["details"]["reasons"] == {"bad_signature": r["details"]["aggregated"]} for r in aggregated
    )
    assert _refused(rows, "/anomalies") == FORGED  # every refusal accounted for
    assert sum(len(json.dumps(r, default=str)) for r in rows) < 4096  # not 4 MiB
    total = hook.metric("runbooks_refusals_total", endpoint="/anomalies", reason="bad_signature")
    suppressed = hook.metric("runbooks_refusals_suppressed_total", endpoint="/anomalies")
    assert total == FORGED and suppressed == FORGED - (len(rows) - len(aggregated))
    assert hook.runs() == [] and "request" not in hook.kinds()
    assert elapsed < 120


def test_many_sources_share_one_row_past_the_limit(make_hook):
    """30 sources (loopback addresses) twice each: at most MAX_SOURCES rows of their own
    per minute; the later sources are counted together (source ``*``)."""
    hook = make_hook()
    sources = [f"127.0.0.{i}" for i in range(2, 32)]
    with served(hook.app) as url:
        clients = {
            s: httpx.Client(timeout=10, transport=httpx.HTTPTransport(local_address=s))
            for s in sources
        }
        try:
            codes = [_forge(clients[s], url, i) for i in range(2) for s in sources]
        finally:
            for c in clients.values():
                c.close()
    assert codes == [401] * 60
    rows = _unauthorized(hook)
    own = [r for r in rows if "aggregated" not in r["details"]]
    shared = [r for r in rows if r["actor"] == "http"]
    assert len(own) <= 2 * MAX_SOURCES  # (a minute may end during the test)
    assert shared and all(r["details"]["aggregated"] > 0 for r in shared)
    assert len(rows) <= 2 * (2 * MAX_SOURCES + 1)
    assert _refused(rows, "/anomalies") == 60


def test_wrong_tokens_on_every_endpoint_are_aggregated_too(make_hook):
    """Bearer tokens (Alertmanager, admin, read), read cookies and Slack signatures."""
    hook = make_hook(
        admin_token="admin-token-for-tests", slack_signing_secret="slack-signing-secret"
    )
    c = hook.client
    wrong = {"Authorization": "Bearer wrong"}
    t0 = time.time()
    for _ in range(100):
        assert c.post("/alertmanager", json={}, headers=wrong).status_code == 401
        assert c.post("/killswitch", json={}, headers=wrong).status_code == 401
        assert c.get("/ack", params={"alertname": "X"}, headers=wrong).status_code == 401
        assert c.get("/audit", headers=wrong).status_code == 401
        assert c.get("/console/pending", headers=wrong).status_code == 401
        assert c.get("/console", params={"token": "wrong"}).status_code == 401
        stamp = str(int(time.time()))
        slack = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": "v0=00"}
        assert c.post("/slack/interactive", content=b"x", headers=slack).status_code == 401
    routes = [
        "/alertmanager",
        "/killswitch",
        "/ack",
        "/audit",
        "/console/pending",
        "/console",
        "/slack/interactive",
    ]
    # the minutes the flood spanned: each has its own first row and aggregated row
    minutes = int(time.time() // 60) - int(t0 // 60) + 1
    before = _unauthorized(hook)
    assert len(before) <= 2 * minutes * len(routes)
    hook.flush_refusals()  # as when the minute ends
    rows = _unauthorized(hook)
    assert len(rows) <= 2 * minutes * len(routes)
    for route in routes:
        assert _refused(rows, route) == 100, route
        assert hook.metric("runbooks_refusals_suppressed_total", endpoint=route) >= 98


def test_guessed_approval_tokens_are_aggregated_and_the_real_link_still_works(make_hook):
    """Someone who knows a pending approval's id tries 300 forged tokens: each is 403,
    the audit gets the first as a row tied to the incident and the rest in one row, and
    the approvers' real link still executes the action once."""
    hook = make_hook(risk="high")
    hook.post_event(anomaly())
    (pending,) = hook.pending()
    real = pending["approve_url"]
    guesses = 300
    codes = [
        hook.client.get(
            "/approve", params={"id": pending["id"], "token": f"v1.{i}.forged"}
        ).status_code
        for i in range(guesses)
    ]
    assert codes == [403] * guesses
    own = [r for r in _unauthorized(hook) if "aggregated" not in r["details"]]
    assert len(own) == 1 and own[0]["details"]["approval"] == pending["id"], own
    assert own[0]["incident_id"]  # tied to the incident whose action was targeted
    assert hook.metric("runbooks_refusals_suppressed_total", endpoint="/approve") == guesses - 1
    hook.flush_refusals()
    rows = _unauthorized(hook)
    assert len(rows) == 2, rows
    (summary,) = [r for r in rows if "aggregated" in r["details"]]
    assert summary["details"]["route"] == "/approve"
    assert summary["details"]["aggregated"] == guesses - 1  # it counts the rest
    done = hook.client.get(real)
    assert done.status_code == 200 and done.json()["decision"] == "executed", done.text
    assert hook.runs() == ["checkout"]
