"""Issue 17, item 3: Slack approvers are compared ids with ids (and ``@names`` with
usernames), never one list for both.

A click Slack signed is genuine, but the clicking user chooses their own username:
Mallory (id ``U_MALLORY``) renamed to ``U_ALICE`` is not Alice (id ``U_ALICE``).
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import pytest
from sqlalchemy import select

from aiops.core.signing import approval_binding, make_approval_token, slack_signature
from feature_store import tables
from tests.runbooks.conftest import APPROVAL_SECRET, anomaly

SIGNING = "slack-signing-secret"


def _held_button(hook) -> str:
    """The approve button's value of a freshly held action (as the Slack message has it)."""
    r = hook.post_event(anomaly()).json()
    assert r["decision"] == "approval_pending", r
    a = tables.approvals
    with hook.engine.connect() as conn:
        row = conn.execute(select(a).where(a.c.id == r["approval_id"])).one()
    binding = approval_binding(row.id, row.action, row.target, row.params)
    token = make_approval_token(APPROVAL_SECRET, binding, row.expires_at, "approve")
    return json.dumps({"id": row.id, "token": token})


def _click(hook, value: str, user: dict[str, str]):
    payload = {
        "type": "block_actions",
        "user": user,
        "actions": [{"action_id": "approve", "value": value, "type": "button"}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(int(time.time()))
    return hook.client.post(
        "/slack/interactive",
        content=body,
        headers={
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": slack_signature(SIGNING, stamp, body),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )


@pytest.mark.parametrize(
    "mallory",
    [
        {"id": "U_MALLORY", "username": "U_ALICE"},
        {"id": "U_MALLORY", "username": "U_ALICE", "name": "U_ALICE"},
        {"id": "U_MALLORY", "name": "U_ALICE"},
    ],
)
def test_a_username_spelled_like_an_approvers_id_is_refused(make_hook, mallory):
    hook = make_hook(risk="high", slack_signing_secret=SIGNING, approvers="U_ALICE")
    button = _held_button(hook)
    r = _click(hook, button, mallory)
    assert r.status_code == 403, r.text
    assert "not in RUNBOOK_APPROVERS" in r.json()["error"]
    assert hook.runs() == []
    refused = hook.audit(kind="unauthorized")
    assert len(refused) == 1 and "U_MALLORY" in refused[0]["details"]["why"]
    # Alice herself (by id, whatever her username) approves
    ok = _click(hook, button, {"id": "U_ALICE", "username": "alice"})
    assert ok.status_code == 200 and ok.json()["ok"] is True, ok.text
    assert hook.runs() == ["checkout"]


def test_at_names_are_compared_with_usernames_only(make_hook):
    hook = make_hook(risk="high", slack_signing_secret=SIGNING, approvers="U111, @alice")
    button = _held_button(hook)
    # an id spelled like an approver's name is no match, nor is a display name
    for user in ({"id": "alice", "username": "mallory"}, {"id": "U9", "name": "alice"}):
        assert _click(hook, button, user).status_code == 403, user
    assert hook.runs() == []
    # the username alice is (whatever her id)
    ok = _click(hook, button, {"id": "U222", "username": "alice"})
    assert ok.status_code == 200 and ok.json()["ok"] is True, ok.text
    assert hook.runs() == ["checkout"]
