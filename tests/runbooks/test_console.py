"""The console page: its endpoints, and a real headless Chromium following the live stream."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websocket

from aiops.core.signing import signed_headers
from demo.prometheus import free_port
from tests.conftest import require_binary
from tests.integration.conftest import poll
from tests.runbooks.conftest import READ_TOKEN, SECRET, anomaly

CHROMIUM = "/usr/bin/chromium"


def held(hook, event_id: str = "ev-1") -> str:
    r = hook.post_event(anomaly(event_id)).json()
    assert r["decision"] == "approval_pending", r
    return r["approval_id"]


def test_the_page_has_the_live_stream_filters_and_pending_sections(make_hook):
    hook = make_hook()
    r = hook.read("/console")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'new EventSource("/events")' in page
    assert 'addEventListener("audit"' in page
    for element_id in ("pending-list", "events", "filter-kind", "filter-text"):
        assert f'id="{element_id}"' in page
    assert "/console/pending" in page and "Pending approvals" in page
    # self-contained: nothing is loaded from elsewhere
    assert "<script src" not in page and "<link" not in page
    assert "http://" not in page and "https://" not in page


def test_incidents_lists_the_open_incidents_with_cause_chain_members_and_the_blast_radius(
    make_hook,
):
    from tests.runbooks.test_incident_events import STORM, incident_event

    hook = make_hook(max_actions_per_window=1)
    assert hook.client.get("/console/incidents").status_code == 401  # a read endpoint
    assert hook.post_event(incident_event(others=STORM)).json()["decision"] == "executed"
    assert hook.post_event(anomaly("other", app="cart")).json()["decision"] == "no_policy"
    body = hook.read("/console/incidents").json()
    assert body["count"] == 2
    storm = next(i for i in body["incidents"] if i["cause"] == "shop.payments")
    assert storm["chain"] == "command:shop/payments" and storm["members"] == 3
    assert storm["actions"] == 1 and storm["subject"] == "incident:inc-1"
    assert body["blast_radius"] == {
        "actions": 1,
        "max": 1,
        "window_seconds": 600.0,
        "reached": True,
    }
    hook.post_event(incident_event(status="resolved"))
    assert [i["cause"] for i in hook.read("/console/incidents").json()["incidents"]] == [
        "shop.cart"
    ]


def test_an_alerts_feedback_link_keeps_its_anomaly_through_the_sign_in(make_hook):
    hook = make_hook()
    wanted = {"anomaly": "latency_p99 shop checkout"}
    r = hook.client.get("/console", params={"token": READ_TOKEN, **wanted}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console?anomaly=latency_p99+shop+checkout"
    form = hook.client.get("/console", params=wanted, headers={"Cookie": ""})
    assert form.status_code == 401 and 'value="latency_p99 shop checkout"' in form.text
    posted = hook.client.post(
        "/console",
        content=f"token={READ_TOKEN}&anomaly=latency_p99+shop+checkout",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert posted.headers["location"] == "/console?anomaly=latency_p99+shop+checkout"
    bad = hook.client.get("/console", params={"anomaly": "<script>"})
    assert bad.status_code == 422


def test_pending_lists_a_held_action_with_links_that_work(make_hook):
    hook = make_hook(risk="high")
    empty = hook.read("/console/pending").json()
    assert empty == {"pending": [], "count": 0}
    approval_id = held(hook)
    body = hook.read("/console/pending").json()
    assert body["count"] == 1
    (item,) = body["pending"]
    assert item["id"] == approval_id
    assert item["action"] == "command" and item["target"] == "shop/checkout"
    assert item["signal"] == "latency_p99" and item["reasons"] == ["level_shift"]
    # the reject link carries a reject token only
    wrong = hook.client.get(item["reject_url"].replace("/reject", "/approve", 1))
    assert wrong.status_code == 403
    r = hook.client.get(item["approve_url"])
    assert r.status_code == 200 and r.json()["decision"] == "executed", r.text
    assert hook.runs() == ["checkout"]
    assert hook.read("/console/pending").json()["count"] == 0


def test_expired_and_decided_approvals_are_not_listed(make_hook):
    from sqlalchemy import update

    from feature_store import tables

    hook = make_hook(risk="high", cooldown_seconds=0)
    first = held(hook)
    with hook.engine.begin() as conn:
        conn.execute(
            update(tables.approvals).where(tables.approvals.c.id == first).values(expires_at=1.0)
        )
    hook.post_event(anomaly("ev-1", status="resolved"))
    second = held(hook, "ev-2")
    ids = [p["id"] for p in hook.read("/console/pending").json()["pending"]]
    assert ids == [second]


def test_without_an_approval_secret_pending_rows_have_no_links(make_hook):
    hook = make_hook(risk="high", approval_secret=None)
    held(hook)
    body = hook.read("/console/pending").json()
    assert body["count"] == 1 and "approve_url" not in body["pending"][0]
    assert "RUNBOOK_APPROVAL_SECRET" in body["note"]


# -- a real browser ---------------------------------------------------------------------------


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=10, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events arrive in between: skip them
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[str]:
    """A headless Chromium; yields its DevTools HTTP address; killed (with its children) after."""
    binary = require_binary(CHROMIUM)
    port = free_port()
    log = (tmp_path / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "about:blank",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the renderers go with it
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()  # the browser stops (and reaps) its own helpers
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # any helper left in its group
            os.killpg(proc.pid, signal.SIGKILL)
        poll(lambda: not _group_alive(proc.pid), timeout=10, what="chromium to exit")
        log.close()


def _group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process of the group is left."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


@pytest.fixture
def served(make_hook) -> Iterator[tuple[Any, str]]:
    """A high-risk hook served by uvicorn on a free port: (hook, base URL)."""
    hook = make_hook(risk="high", max_actions_per_window=1)  # one action spends the budget
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(hook.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        poll(lambda: server.started, timeout=20, what="webhook")
        yield hook, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_browser_follows_the_stream_and_approves_a_held_action(chromium, served):
    hook, base = served

    def page_target() -> str | None:
        targets = httpx.get(f"{chromium}/json/list", timeout=2).json()
        pages = [t for t in targets if t.get("type") == "page"]
        return pages[0]["webSocketDebuggerUrl"] if pages else None

    cdp = DevTools(poll(page_target, timeout=20, what="chromium's page target"))
    try:
        cdp.call("Page.enable")
        # the token once; the page keeps it in its cookie (and leaves the address bar)
        cdp.call("Page.navigate", url=f"{base}/console?token={READ_TOKEN}")
        # the stream is open (the server registered it) before anything is posted
        poll(
            lambda: cdp.js("document.getElementById('stream-state')?.className") == "open",
            timeout=15,
            what="the EventSource to open",
        )
        assert cdp.js("document.querySelectorAll('#pending-list button').length") == 0
        # the token left the address bar, and no script can read the cookie (HttpOnly)
        assert cdp.js("location.pathname + location.search") == "/console"
        assert cdp.js("document.cookie") == ""

        # an event without a rule: its audit rows appear live
        event = anomaly("browser-ev", app="cart-7f3a")
        body = json.dumps(event).encode()
        r = httpx.post(f"{base}/anomalies", content=body, headers=signed_headers(SECRET, body))
        assert r.status_code == 200 and r.json()["decision"] == "no_policy", r.text
        rows_for = (
            "[...document.querySelectorAll('#events tr')]"
            ".filter(tr => tr.textContent.includes('cart-7f3a'))"
        )
        poll(
            lambda: "no_policy" in cdp.js(f"{rows_for}.map(tr => tr.dataset.kind).join(',')"),
            timeout=10,
            what="the event's row in the live list",
        )
        # its incident shows under the open incidents, its cause its own service
        incident_rows = (
            "[...document.querySelectorAll('#incident-list tr')].map(tr => tr.textContent)"
            ".join('|')"
        )
        poll(
            lambda: "shop.cart-7f3a" in cdp.js(incident_rows),
            timeout=10,
            what="the incident in the open incidents",
        )
        assert cdp.js("document.getElementById('blast').hidden") is True
        # the text filter hides rows that do not match, and shows them again
        visible = f"{rows_for}.filter(tr => !tr.hidden).length"
        assert cdp.js(visible) >= 1
        type_filter = (
            "(text => {{ const f = document.getElementById('filter-text');"
            " f.value = text; f.dispatchEvent(new Event('input')); }})({!r})"
        )
        cdp.js(type_filter.format("no-such-thing"))
        assert cdp.js(visible) == 0
        cdp.js(type_filter.format("CART-7f3a"))
        assert cdp.js(visible) >= 1

        # a held action shows under pending; Approve runs it
        body = json.dumps(anomaly("browser-held")).encode()
        r = httpx.post(f"{base}/anomalies", content=body, headers=signed_headers(SECRET, body))
        assert r.json()["decision"] == "approval_pending", r.text
        approval_id = r.json()["approval_id"]
        button = f"document.querySelector('#pending-list button[data-approve=\"{approval_id}\"]')"
        poll(lambda: cdp.js(f"{button} !== null"), timeout=10, what="the pending approval")
        assert hook.runs() == []
        cdp.js(f"{button}.click()")
        poll(lambda: hook.runs() == ["checkout"], timeout=15, what="the approved action to run")
        poll(
            lambda: cdp.js(f"{button} === null"),
            timeout=10,
            what="the approval to leave the pending list",
        )
        assert "Decision: executed" in cdp.js("document.getElementById('message').textContent")
        assert hook.kinds()[-2:] == ["approved", "executed"]
        assert [row["actor"] for row in hook.audit(kind="approved")] == ["http:127.0.0.1"]
        # that action spent the fleet's budget: the banner says so
        poll(
            lambda: cdp.js("document.getElementById('blast').hidden") is False,
            timeout=10,
            what="the blast-radius banner",
        )
        assert "Blast radius reached" in cdp.js("document.getElementById('blast').textContent")
    finally:
        cdp.close()


def test_a_browser_gives_feedback_on_an_anomaly_with_one_click(chromium, served):
    """The console's "Not an incident" button: the person names themself once, the
    button's signed link records their verdict (with the note), /metrics counts it."""
    import time
    from types import SimpleNamespace

    from feature_store.store import FeatureStore

    hook, base = served
    now = time.time()
    reason = SimpleNamespace(
        as_dict=lambda: {"reason": "level_shift", "zscore": 5.0, "threshold": 3.0, "window": "5m"}
    )
    FeatureStore(hook.engine).record_anomalies(
        [
            SimpleNamespace(
                metric="latency_p99",
                labels={"namespace": "shop", "app": "checkout"},
                observed_at=now - 60,
                started_at=now - 120,
                score=1.7,
                value=0.9,
                baseline=0.3,
                reasons=[reason],
                model_version="v1",
                anomalous=True,
            )
        ]
    )

    def page_target() -> str | None:
        targets = httpx.get(f"{chromium}/json/list", timeout=2).json()
        pages = [t for t in targets if t.get("type") == "page"]
        return pages[0]["webSocketDebuggerUrl"] if pages else None

    cdp = DevTools(poll(page_target, timeout=20, what="chromium's page target"))
    try:
        cdp.call("Page.enable")
        # an alert's feedback link, through the sign-in: the filter survives it
        link = f"{base}/console?token={READ_TOKEN}&anomaly=latency_p99+shop+checkout"
        cdp.call("Page.navigate", url=link)
        rows = "document.querySelectorAll('#anomaly-list tr[data-series]')"
        poll(lambda: cdp.js(f"{rows}.length") == 1, timeout=15, what="the anomaly listed")
        assert cdp.js("location.search") == "?anomaly=latency_p99+shop+checkout"
        assert cdp.js("document.getElementById('anomaly-filter').value") == (
            "latency_p99 shop checkout"
        )
        assert cdp.js(f"{rows}[0].hidden") is False
        hide = (
            "(() => { const f = document.getElementById('anomaly-filter');"
            " f.value = 'payments'; f.dispatchEvent(new Event('input')); })()"
        )
        cdp.js(hide)
        assert cdp.js(f"{rows}[0].hidden") is True
        cdp.js(hide.replace("'payments'", "''"))
        # no buttons until the person names themself (the links are made for them)
        assert cdp.js("document.querySelectorAll('#anomaly-list button').length") == 0
        cdp.js(
            "(() => { const p = document.getElementById('person'); p.value = 'alice';"
            " p.dispatchEvent(new Event('change')); })()"
        )
        button = "document.querySelector('#anomaly-list button[data-feedback=\"false_alarm\"]')"
        poll(lambda: cdp.js(f"{button} !== null"), timeout=10, what="the feedback buttons")
        cdp.js("document.querySelector('#anomaly-list input.note').value = 'the batch job'")
        cdp.js(f"{button}.click()")
        store = FeatureStore(hook.engine)
        poll(lambda: store.feedback(), timeout=10, what="the verdict recorded")
        (row,) = store.feedback()
        assert (row["actor"], row["verdict"], row["note"]) == (
            "alice",
            "false_alarm",
            "the batch job",
        )
        poll(
            lambda: "alice: false_alarm" in cdp.js(f"{rows}[0].textContent"),
            timeout=10,
            what="the verdict shown",
        )
        assert "Feedback recorded" in cdp.js(
            "document.getElementById('feedback-message').textContent"
        )
        sample = {"query": "latency_p99", "reason": "level_shift", "verdict": "false_alarm"}
        assert hook.metric("aiops_feedback_total", **sample) == 1.0
    finally:
        cdp.close()
