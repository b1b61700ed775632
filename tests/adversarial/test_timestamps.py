"""Issue 17, item 4: a signed request's timestamp is an integer number of seconds within
the window, nothing else — for the detector's ``X-Aiops-Timestamp`` and Slack's
``X-Slack-Request-Timestamp`` alike.

``float()`` takes much more than digits: ``nan`` (which no window comparison ever
refuses, so the signature would never expire), ``inf``, exponents, fractions, a sign,
and underscores. Each is refused 401 even when the signature
over it is right, and nothing runs.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import pytest

from aiops.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_event, slack_signature
from tests.adversarial.test_slack_approvers import SIGNING, _held_button
from tests.runbooks.conftest import SECRET, anomaly


def stamps() -> list[tuple[str, str]]:
    """(name, timestamp): every one names the current time to ``float()``, or is NaN."""
    now = int(time.time())
    return [
        ("nan", "nan"),
        ("NaN", "NaN"),
        ("inf", "inf"),
        ("-inf", "-inf"),
        ("exponent", f"{now / 1e9:.9f}e9"),
        ("1e9", "1e9"),
        ("fraction", f"{now}.5"),
        ("1.5", "1.5"),
        ("plus sign", f"+{now}"),
        ("minus sign", f"-{now}"),
        ("underscores", f"{now:_}"),
        ("empty", ""),
        ("hex", hex(now)),
    ]


CASES = [name for name, _ in stamps()]


def _stamp(name: str) -> str:
    return dict(stamps())[name]


@pytest.mark.parametrize("name", CASES)
def test_a_detector_event_signed_with_a_non_integer_timestamp_is_refused(make_hook, name):
    hook = make_hook()
    stamp = _stamp(name)
    body = json.dumps(anomaly(f"ts-{name}")).encode()
    headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign_event(SECRET, stamp, body)}
    r = hook.client.post("/anomalies", content=body, headers=headers)
    assert r.status_code == 401, (name, r.text)
    assert hook.runs() == []
    assert "request" not in hook.kinds()
    # the same event with an integer timestamp is taken
    now = str(int(time.time()))
    headers = {TIMESTAMP_HEADER: now, SIGNATURE_HEADER: sign_event(SECRET, now, body)}
    assert hook.client.post("/anomalies", content=body, headers=headers).status_code == 200


@pytest.mark.parametrize("name", CASES)
def test_a_slack_click_signed_with_a_non_integer_timestamp_is_refused(make_hook, name):
    hook = make_hook(risk="high", slack_signing_secret=SIGNING)
    button = _held_button(hook)
    payload = {
        "type": "block_actions",
        "user": {"id": "U1", "username": "alice"},
        "actions": [{"action_id": "approve", "value": button, "type": "button"}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()

    def click(stamp: str):
        return hook.client.post(
            "/slack/interactive",
            content=body,
            headers={
                "X-Slack-Request-Timestamp": stamp,
                "X-Slack-Signature": slack_signature(SIGNING, stamp, body),
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )

    r = click(_stamp(name))
    assert r.status_code == 401, (name, r.text)
    assert hook.runs() == []
    ok = click(str(int(time.time())))
    assert ok.status_code == 200 and ok.json()["ok"] is True, ok.text
    assert hook.runs() == ["checkout"]
