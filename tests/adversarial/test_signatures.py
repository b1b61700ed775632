"""Signatures and tokens beyond tests/runbooks: Slack's check runs on the raw bytes as sent,
and an approval token is bound to its approval's action, target and parameters."""

from __future__ import annotations

import json
import time
from urllib.parse import quote, urlencode

import pytest
from sqlalchemy import select, update

from aiops.core.signing import approval_binding, make_approval_token, slack_signature
from feature_store import tables
from tests.runbooks.conftest import APPROVAL_SECRET, anomaly

SLACK_SECRET = "slack-signing-secret"


def _held(hook) -> dict:
    r = hook.post_event(anomaly()).json()
    assert r["decision"] == "approval_pending", r
    with hook.engine.connect() as conn:
        a = tables.approvals
        return dict(conn.execute(select(a).where(a.c.id == r["approval_id"])).one()._mapping)


def _button(row: dict) -> str:
    binding = approval_binding(row["id"], row["action"], row["target"], row["params"])
    token = make_approval_token(APPROVAL_SECRET, binding, row["expires_at"], "approve")
    return json.dumps({"id": row["id"], "token": token})


def test_slack_verifies_the_raw_body_as_sent_not_a_re_encoding(make_hook):
    hook = make_hook(risk="high", slack_signing_secret=SLACK_SECRET)
    row = _held(hook)
    payload = json.dumps(
        {
            "type": "block_actions",
            "user": {"id": "U1", "username": "alice"},
            "actions": [{"action_id": "approve", "value": _button(row)}],
        }
    )
    # Slack's own encoding (spaces as %20) and Python's (spaces as +) parse to the same
    # form, but they are different bytes
    raw = ("payload=" + quote(payload, safe="")).encode()
    canonical = urlencode({"payload": payload}).encode()
    assert raw != canonical
    stamp = str(int(time.time()))

    def send(body: bytes, signed: bytes):
        return hook.client.post(
            "/slack/interactive",
            content=body,
            headers={
                "X-Slack-Request-Timestamp": stamp,
                "X-Slack-Signature": slack_signature(SLACK_SECRET, stamp, signed),
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )

    # a signature over the parsed-and-re-encoded form does not pass for the raw bytes
    refused = send(raw, canonical)
    assert refused.status_code == 401, refused.text
    assert hook.runs() == []
    # the signature over exactly the bytes sent does
    ok = send(raw, raw)
    assert ok.status_code == 200 and ok.json()["ok"] is True, ok.text
    assert hook.runs() == ["checkout"]
    assert [r["details"]["route"] for r in hook.audit(kind="unauthorized")] == [
        "/slack/interactive"
    ]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("action", "rollout_restart"),
        ("target", "shop/payments"),
        ("params", {"argv": ["/bin/sh", "-c", "echo pwned"]}),
    ],
)
def test_an_approval_token_is_bound_to_its_action_target_and_parameters(make_hook, column, value):
    """Whoever can change the held row (or forge one) cannot reuse its link."""
    hook = make_hook(risk="high")
    row = _held(hook)
    link = hook.link(row["id"])
    token = link.split("token=", 1)[1]
    a = tables.approvals
    with hook.engine.begin() as conn:
        conn.execute(update(a).where(a.c.id == row["id"]).values({column: value}))
    r = hook.client.get("/approve", params={"id": row["id"], "token": token})
    assert r.status_code == 403, r.text
    assert "another action, target or parameters" in r.json()["error"]
    assert hook.runs() == []
    assert hook.kinds()[-1] == "unauthorized"
    with hook.engine.connect() as conn:
        assert conn.execute(select(a.c.state).where(a.c.id == row["id"])).scalar() == "pending"


def test_a_token_cannot_be_stretched_past_its_expiry(make_hook):
    """The expiry is inside the signed token: a later ``expires_at`` in the row (or a
    token re-stamped by hand) does not revive an expired link."""
    hook = make_hook(risk="high", approval_ttl_seconds=1)
    row = _held(hook)
    binding = approval_binding(row["id"], row["action"], row["target"], row["params"])
    old = make_approval_token(APPROVAL_SECRET, binding, time.time() - 5, "approve")
    a = tables.approvals
    with hook.engine.begin() as conn:
        conn.execute(update(a).where(a.c.id == row["id"]).values(expires_at=time.time() + 3600))
    r = hook.client.get("/approve", params={"id": row["id"], "token": old})
    assert r.status_code == 410, r.text
    assert hook.runs() == []
    forged = old.split(".")[0] + ".AAAA"
    r = hook.client.get("/approve", params={"id": row["id"], "token": forged})
    assert r.status_code == 403, r.text
    assert hook.runs() == []
