"""Slack: a held action posts buttons; signed button clicks approve; the rest is refused."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest

from aiops.core.signing import (
    approval_binding,
    check_approval_token,
    slack_signature,
    token_digest,
)
from feature_store import tables
from runbooks.slack import pending_notifier
from tests.integration.conftest import poll
from tests.runbooks.conftest import APPROVAL_SECRET, anomaly

SIGNING = "slack-signing-secret"
BOT = "xoxb-test-token"


class FakeSlackHandler(BaseHTTPRequestHandler):
    """Slack's Web API and incoming webhooks: records every POST, answers ``ok``."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.got.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args: object) -> None:
        pass


class FakeSlack:
    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSlackHandler)
        self.server.got, self.server.lock = [], threading.Lock()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def requests(self, path: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        with self.server.lock:
            got = list(self.server.got)
        return [(h, json.loads(b)) for p, h, b in got if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack()
    yield fake
    fake.close()


def slack_hook(make_hook, slack: FakeSlack, **overrides: Any):
    values = dict(
        risk="high",
        slack_bot_token=BOT,
        slack_channel="#ops",
        slack_api_url=slack.url,
        slack_signing_secret=SIGNING,
        approvers="U111,@alice",
    )
    values.update(overrides)
    return make_hook(**values)


def held(hook) -> str:
    r = hook.post_event(anomaly()).json()
    assert r["decision"] == "approval_pending", r
    return r["approval_id"]


def posted_buttons(slack: FakeSlack) -> dict[str, dict[str, Any]]:
    """The one chat.postMessage's buttons by action_id (waits for the background post)."""
    poll(lambda: slack.requests("/chat.postMessage"), timeout=10, what="chat.postMessage")
    (_, message), *more = slack.requests("/chat.postMessage")
    assert more == []
    actions = [b for b in message["blocks"] if b["type"] == "actions"]
    assert len(actions) == 1
    return {e["action_id"]: e for e in actions[0]["elements"]}


def click(
    hook,
    value: str,
    *,
    action_id: str = "approve",
    user: dict[str, str] | None = None,
    response_url: str | None = None,
    secret: str = SIGNING,
    ts: float | None = None,
    tamper: bool = False,
    prefix: str = "v0=",
    headers: dict[str, str] | None = None,
):
    payload = {
        "type": "block_actions",
        "user": user or {"id": "U111", "username": "alice", "name": "alice"},
        "actions": [{"action_id": action_id, "value": value, "type": "button"}],
    }
    if response_url:
        payload["response_url"] = response_url
    body = urlencode({"payload": json.dumps(payload)}).encode()
    signed = body
    if tamper:  # Slack signed a click by someone else; the body sent names an approver
        who = {**payload, "user": {"id": "U999", "username": "mallory"}}
        signed = urlencode({"payload": json.dumps(who)}).encode()
        assert signed != body
    stamp = str(int(time.time() if ts is None else ts))
    signature = prefix + slack_signature(secret, stamp, signed)[3:]
    h = (
        {
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        }
        if headers is None
        else headers
    )
    return hook.client.post("/slack/interactive", content=body, headers=h)


def unauthorized(hook) -> list[dict[str, Any]]:
    return hook.audit(kind="unauthorized")


def test_no_slack_settings_means_no_notifier():
    s = SimpleNamespace(
        slack_bot_token=None,
        slack_channel="#ops",
        slack_webhook=None,
        slack_api_url="https://slack.com/api",
    )
    assert pending_notifier(s) is None


def test_a_held_action_posts_one_message_whose_approve_button_executes_it(make_hook, slack):
    hook = slack_hook(make_hook, slack)
    approval_id = held(hook)
    buttons = posted_buttons(slack)
    headers, message = slack.requests("/chat.postMessage")[0]
    assert headers["Authorization"] == f"Bearer {BOT}"
    assert message["channel"] == "#ops"
    assert "command" in message["text"] and "shop/checkout" in message["text"]
    shown = json.dumps(message["blocks"])
    assert "level_shift" in shown and "latency_p99" in shown
    assert set(buttons) == {"approve", "reject"}
    values = {k: json.loads(b["value"]) for k, b in buttons.items()}
    assert values["approve"]["id"] == values["reject"]["id"] == approval_id
    assert values["approve"]["token"] != values["reject"]["token"]
    assert hook.runs() == []

    r = click(
        hook,
        buttons["approve"]["value"],
        response_url=f"{slack.url}/response",
    )
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True and "executed" in r.json()["text"]
    assert hook.runs() == ["checkout"]
    approved = hook.audit(kind="approved")
    assert [row["actor"] for row in approved] == ["slack:alice"]
    assert hook.kinds()[-2:] == ["approved", "executed"]
    # the message is replaced (its buttons go) through response_url
    (_, update), *_ = poll(lambda: slack.requests("/response"), timeout=10, what="response_url")
    assert update["replace_original"] is True and "executed" in update["text"]

    # a second click: 200 for Slack, with the refusal as text; nothing runs again
    again = click(hook, buttons["approve"]["value"])
    assert again.status_code == 200
    assert again.json()["ok"] is False and "single-use" in again.json()["text"]
    assert hook.runs() == ["checkout"]
    assert len(slack.requests("/chat.postMessage")) == 1


def test_the_reject_button_rejects_and_its_token_cannot_approve(make_hook, slack):
    hook = slack_hook(make_hook, slack)
    held(hook)
    buttons = posted_buttons(slack)
    # the reject token in the approve button's place is refused (bound to the decision)
    wrong = click(hook, buttons["reject"]["value"], action_id="approve")
    assert wrong.status_code == 200 and wrong.json()["ok"] is False
    assert "not a approve token" in wrong.json()["text"]
    r = click(hook, buttons["reject"]["value"], action_id="reject", user={"id": "U111"})
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    assert "rejected" in r.json()["text"]
    assert hook.runs() == []
    assert [row["actor"] for row in hook.audit(kind="rejected")] == ["slack:U111"]


def test_the_button_tokens_verify_against_the_approval(make_hook, slack):
    hook = slack_hook(make_hook, slack)
    approval_id = held(hook)
    buttons = posted_buttons(slack)
    with hook.engine.connect() as conn:
        row = conn.execute(
            tables.approvals.select().where(tables.approvals.c.id == approval_id)
        ).one()
    binding = approval_binding(row.id, row.action, row.target, row.params)
    now = time.time()
    for decision in ("approve", "reject"):
        token = json.loads(buttons[decision]["value"])["token"]
        assert check_approval_token(APPROVAL_SECRET, token, binding, decision, now) is None
        other = "reject" if decision == "approve" else "approve"
        assert check_approval_token(APPROVAL_SECRET, token, binding, other, now) is not None


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("tampered body", {"tamper": True}),
        ("stale timestamp", {"ts": time.time() - 301}),
        ("v1 prefix", {"prefix": "v1="}),
        ("wrong secret", {"secret": "not-the-signing-secret"}),
        ("missing headers", {"headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
    ],
)
def test_unsigned_or_stale_requests_get_401_and_nothing_runs(make_hook, slack, case, kwargs):
    hook = slack_hook(make_hook, slack)
    held(hook)
    buttons = posted_buttons(slack)
    r = click(hook, buttons["approve"]["value"], **kwargs)
    assert r.status_code == 401, (case, r.text)
    assert hook.runs() == []
    refused = unauthorized(hook)
    assert len(refused) == 1
    assert refused[0]["details"]["route"] == "/slack/interactive"
    assert "approved" not in hook.kinds()
    # the same click, correctly signed, still works: the refusal did not use the token
    ok = click(hook, buttons["approve"]["value"])
    assert ok.status_code == 200 and ok.json()["ok"] is True, ok.text
    assert hook.runs() == ["checkout"]


def test_without_a_signing_secret_every_click_is_refused(make_hook, slack):
    hook = slack_hook(make_hook, slack, slack_signing_secret=None)
    held(hook)
    buttons = posted_buttons(slack)
    r = click(hook, buttons["approve"]["value"])
    assert r.status_code == 401 and "SLACK_SIGNING_SECRET" in r.json()["error"]
    assert hook.runs() == []


def test_a_user_outside_the_approvers_gets_403_and_nothing_runs(make_hook, slack):
    hook = slack_hook(make_hook, slack)
    held(hook)
    buttons = posted_buttons(slack)
    r = click(hook, buttons["approve"]["value"], user={"id": "U999", "username": "mallory"})
    assert r.status_code == 403, r.text
    assert "mallory" in r.json()["error"]
    assert hook.runs() == []
    refused = unauthorized(hook)
    assert len(refused) == 1 and refused[0]["actor"] == "slack:mallory"
    # an approver by user id (username not on the list) may
    ok = click(hook, buttons["approve"]["value"], user={"id": "U111", "username": "bob"})
    assert ok.status_code == 200 and ok.json()["ok"] is True, ok.text
    assert hook.runs() == ["checkout"]


def test_a_signed_but_malformed_payload_is_400(make_hook, slack):
    hook = slack_hook(make_hook, slack)
    body = b"payload=%7Bnot-json"
    stamp = str(int(time.time()))
    r = hook.client.post(
        "/slack/interactive",
        content=body,
        headers={
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": slack_signature(SIGNING, stamp, body),
        },
    )
    assert r.status_code == 400 and "malformed" in r.json()["error"]
    assert unauthorized(hook) == []


def test_webhook_only_mode_posts_a_plain_text_with_both_links(make_hook, slack):
    hook = make_hook(risk="high", slack_webhook=f"{slack.url}/incoming")
    approval_id = held(hook)
    poll(lambda: slack.requests("/incoming"), timeout=10, what="incoming webhook")
    (headers, message), *more = slack.requests("/incoming")
    assert more == []
    assert "Authorization" not in headers
    assert set(message) == {"text"}
    details = hook.audit(kind="approval_pending")[-1]["details"]
    assert details["id"] == approval_id
    # the links reach Slack; the audit keeps only their tokens' digests
    assert "approve_url" not in details and "reject_url" not in details
    for decision in ("approve", "reject"):
        link = hook.link(approval_id, decision)
        assert f"http://localhost:8080{link}" in message["text"]
        token = link.split("token=", 1)[1]
        assert details[f"{decision}_token_sha256"] == token_digest(token)
    assert "shop/checkout" in message["text"]
    assert slack.requests("/chat.postMessage") == []


def test_a_new_incident_posts_a_notice_whose_buttons_record_each_persons_verdict(make_hook, slack):
    """The detector's incident opens a webhook incident: Slack gets its probable cause,
    the evidence and two buttons; a click records the clicker's verdict on the cause's
    anomaly (once per person), which the detector then applies."""
    from feature_store.store import FeatureStore
    from tests.runbooks.test_incident_events import STORM, incident_event

    hook = slack_hook(make_hook, slack, risk="low", autofix_enabled=False)
    event = incident_event(others=STORM)
    cause = event["incident"]["members"][0]
    reason = SimpleNamespace(
        as_dict=lambda: {"reason": "level_shift", "zscore": 6.0, "threshold": 3.0, "window": "5m"}
    )
    FeatureStore(hook.engine).record_anomalies(  # what the detector recorded of the cause
        [
            SimpleNamespace(
                metric=cause["metric"],
                labels=cause["labels"],
                observed_at=cause["onset"] + 60,
                started_at=cause["onset"],
                score=2.0,
                value=0.2,
                baseline=0.01,
                reasons=[reason],
                model_version="v1",
                anomalous=True,
            )
        ]
    )
    assert hook.post_event(event).json()["decision"] in ("skipped_disabled", "no_policy")
    buttons = posted_buttons(slack)
    (_, message) = slack.requests("/chat.postMessage")[0]
    assert "probable cause shop.payments" in message["text"]
    assert any("40 s before" in json.dumps(b) for b in message["blocks"])
    assert set(buttons) == {"feedback:incident", "feedback:false_alarm"}
    # a revision of the same incident posts nothing more
    hook.post_event(incident_event(revision=2, others=STORM))
    no_policy = click(
        hook, buttons["feedback:false_alarm"]["value"], action_id="feedback:false_alarm"
    )
    assert no_policy.status_code == 200 and no_policy.json()["ok"] is True, no_policy.text
    assert "alice says not an incident" in no_policy.json()["text"]
    assert no_policy.json()["replace_original"] is False  # the buttons stay for the others
    again = click(hook, buttons["feedback:false_alarm"]["value"], action_id="feedback:false_alarm")
    assert again.json()["ok"] is False and "already" in again.json()["text"]
    bob = {"id": "U222", "username": "bob"}
    refused = click(
        hook, buttons["feedback:incident"]["value"], action_id="feedback:incident", user=bob
    )
    assert refused.status_code == 403  # RUNBOOK_APPROVERS names who may judge
    (row,) = FeatureStore(hook.engine).feedback()
    assert (row["actor"], row["verdict"]) == ("slack:alice", "false_alarm")
    (audited,) = hook.audit(kind="feedback")
    assert audited["details"]["via"] == "slack"
    assert len(slack.requests("/chat.postMessage")) == 1
