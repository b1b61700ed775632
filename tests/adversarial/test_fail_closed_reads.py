"""Issue 17, item 2: whoever can merely reach the webhook reads nothing, and the audit
holds no live approval link.

The read endpoints (``/audit``, ``/events``, ``/console``, ``/console/pending``) need
``RUNBOOK_READ_TOKEN`` as a bearer token (the admin token reads too), or the cookie
the console sets once it was given the token; only ``RUNBOOK_READ_OPEN=true`` opens
them. The audit keeps the digests of the approval tokens, never the links: the links
go only to Slack and to an authenticated reader of the console.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from aiops.core.signing import signed_headers, token_digest
from feature_store import tables
from tests.adversarial.conftest import served
from tests.integration.conftest import poll
from tests.runbooks.conftest import READ_TOKEN, SECRET, anomaly
from tests.runbooks.test_slack import FakeSlack

ADMIN = "admin-token-for-tests"
READS = (
    "/audit",
    "/console/pending",
    "/console/incidents",
    "/console/anomalies",
    "/console",
    "/events",
)


def _status(client: httpx.Client, url: str, path: str, headers: dict[str, str]) -> int:
    """The status of a GET (for the endless /events stream: of its head only)."""
    with client.stream("GET", url + path, headers=headers) as r:
        return r.status_code


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_without_a_read_token_the_read_endpoints_answer_401_and_say_why(make_hook):
    hook = make_hook(read_token=None)  # and RUNBOOK_READ_OPEN unset: closed
    with served(hook.app) as url, httpx.Client(timeout=10) as client:
        for path in READS:
            for headers in ({}, _bearer("anything"), {"Authorization": "Bearer"}):
                assert _status(client, url, path, headers) == 401, (path, headers)
        r = client.get(f"{url}/audit")
        assert "RUNBOOK_READ_TOKEN is not set" in r.json()["error"]
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        page = client.get(f"{url}/console")
        assert "RUNBOOK_READ_TOKEN is not set" in page.text and 'name="token"' in page.text


def test_a_read_token_or_the_admin_token_reads_a_wrong_one_gets_401(make_hook):
    hook = make_hook(admin_token=ADMIN, risk="high")
    hook.post_event(anomaly())
    with served(hook.app) as url, httpx.Client(timeout=10) as client:
        for path in READS:
            for headers in (
                {},
                _bearer("wrong"),
                _bearer(READ_TOKEN + "x"),
                {"Authorization": READ_TOKEN},  # no scheme
                {"Authorization": f"Basic {READ_TOKEN}"},
                {"Cookie": f"aiops_read={READ_TOKEN}"},  # the token is not the cookie
            ):
                assert _status(client, url, path, headers) == 401, (path, headers)
            assert _status(client, url, path, _bearer(READ_TOKEN)) == 200, path
            assert _status(client, url, path, _bearer(ADMIN)) == 200, path
        rows = client.get(f"{url}/audit", headers=_bearer(READ_TOKEN)).json()["rows"]
        assert {r["kind"] for r in rows} >= {"request", "approval_pending"}
        pending = client.get(f"{url}/console/pending", headers=_bearer(ADMIN)).json()
        assert pending["count"] == 1 and pending["pending"][0]["approve_url"]
    assert hook.metric("runbooks_refusals_total", endpoint="/audit", reason="bad_token") == 6


def test_read_endpoints_are_open_only_when_said_so(make_hook):
    hook = make_hook(read_token=None, read_open=True)
    with served(hook.app) as url, httpx.Client(timeout=10) as client:
        for path in READS:
            assert _status(client, url, path, {}) == 200, path
    spec = hook.client.get("/openapi.json").json()
    assert spec["paths"]["/audit"]["get"]["security"] == []
    closed = make_hook().client.get("/openapi.json").json()
    assert {"readBearer": []} in closed["paths"]["/audit"]["get"]["security"]


def _cookie(response: httpx.Response) -> str:
    (header,) = response.headers.get_list("set-cookie")
    return header


def test_the_console_takes_the_token_once_and_keeps_it_in_a_strict_http_only_cookie(make_hook):
    hook = make_hook(admin_token=ADMIN)
    c = hook.client
    wrong = c.get("/console", params={"token": "wrong"}, follow_redirects=False)
    assert wrong.status_code == 401 and 'name="token"' in wrong.text
    assert "set-cookie" not in wrong.headers
    r = c.get("/console", params={"token": READ_TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console"  # token off the URL
    header = _cookie(r)
    assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/" in header
    value = c.cookies["aiops_read"]
    assert READ_TOKEN not in value and READ_TOKEN not in header  # an HMAC, not the token
    # with the cookie alone, the page and its calls (stream, pending list, audit) work
    assert c.get("/console").status_code == 200
    assert 'new EventSource("/events")' in c.get("/console").text
    assert c.get("/console/pending").status_code == 200
    assert c.get("/audit").status_code == 200
    with served(hook.app) as url, httpx.Client(timeout=10) as http:
        assert _status(http, url, "/events", {"Cookie": f"aiops_read={value}"}) == 200
        assert _status(http, url, "/events", {"Cookie": f"aiops_read={value[:-1]}0"}) == 401
    # a tampered cookie reads nothing
    c.cookies.clear()
    c.cookies.set("aiops_read", value[:-2] + "00")
    assert c.get("/audit").status_code == 401 and c.get("/console").status_code == 401
    # the sign-in form posts the token (it stays out of URLs) and sets the same cookie
    c.cookies.clear()
    form = c.post("/console", data={"token": READ_TOKEN}, follow_redirects=False)
    assert form.status_code == 303 and c.cookies["aiops_read"] == value
    assert c.post("/console", data={"token": "nope"}, follow_redirects=False).status_code == 401
    # the admin token signs in too, with a cookie of its own
    c.cookies.clear()
    admin = c.get("/console", params={"token": ADMIN}, follow_redirects=False)
    assert admin.status_code == 303 and c.cookies["aiops_read"] != value
    assert c.get("/console/pending").status_code == 200
    # another webhook (another read token) does not take this one's cookie
    other = make_hook(read_token="another-read-token").client
    other.cookies.set("aiops_read", value)
    assert other.get("/audit").status_code == 401


def _everything_readable(hook: Any) -> str:
    """Every audit row, as /audit and the CSV export's source (the table) hold them."""
    with hook.engine.connect() as conn:
        table = [dict(r._mapping) for r in conn.execute(select(tables.audit))]
    return json.dumps(hook.audit(), default=str) + json.dumps(table, default=str)


@pytest.mark.timeout(60)
def test_the_audit_holds_no_live_approval_link_the_approvers_still_get_them(make_hook):
    slack = FakeSlack()
    try:
        hook = make_hook(risk="high", slack_webhook=f"{slack.url}/incoming")
        with served(hook.app) as url, httpx.Client(timeout=10) as http:
            # a reader following the live stream while the action is held
            seen: list[dict[str, Any]] = []

            def follow() -> None:
                with http.stream("GET", f"{url}/events", headers=_bearer(READ_TOKEN)) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            seen.append(json.loads(line[6:]))
                            if seen[-1]["kind"] == "approval_pending":
                                return

            reader = threading.Thread(target=follow, daemon=True)
            reader.start()
            poll(lambda: _streams_open(hook) > 0, timeout=10, what="the /events stream to open")
            body = json.dumps(anomaly()).encode()
            r = http.post(f"{url}/anomalies", content=body, headers=signed_headers(SECRET, body))
            approval_id = r.json()["approval_id"]
            reader.join(10)
            assert seen and seen[-1]["kind"] == "approval_pending"
        poll(lambda: slack.requests("/incoming"), timeout=10, what="the Slack message")
        ((_, message),) = slack.requests("/incoming")
        links = {d: hook.link(approval_id, d) for d in ("approve", "reject")}
        tokens = {d: link.split("token=", 1)[1] for d, link in links.items()}
        # the links went to Slack and are in the console's list for a reader ...
        for link in links.values():
            assert f"http://localhost:8080{link}" in message["text"]
        # ... but neither the audit (API, table) nor the live stream holds a token
        readable = _everything_readable(hook) + json.dumps(seen)
        assert "approve_url" not in readable and "reject_url" not in readable
        for token in tokens.values():
            assert token not in readable
            assert token.split(".")[1] not in readable  # not even the MAC half
        # what it keeps identifies a presented token without granting anything
        (row,) = hook.audit(kind="approval_pending")
        assert row["details"]["approve_token_sha256"] == token_digest(tokens["approve"])
        assert row["details"]["reject_token_sha256"] == token_digest(tokens["reject"])
        # and the link still works, once
        done = hook.client.get(links["approve"])
        assert done.status_code == 200 and done.json()["decision"] == "executed", done.text
        assert hook.runs() == ["checkout"]
    finally:
        slack.close()


def _streams_open(hook: Any) -> int:
    """Open /events streams: the queues of the broadcaster the audit publishes to."""
    return len(hook.app.state.events.queues)
