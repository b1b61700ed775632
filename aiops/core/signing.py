"""Signatures: detector events (HMAC-SHA256), Slack requests (v0), approval tokens.

Every comparison is constant-time (``hmac.compare_digest``) and every check runs
on the raw request body, before any parsing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from typing import Any

#: headers the detector sends with each anomaly event
TIMESTAMP_HEADER = "X-Aiops-Timestamp"
SIGNATURE_HEADER = "X-Aiops-Signature"
#: the headers of Slack's request signing (https://api.slack.com/authentication/verifying-requests-from-slack)
SLACK_SIGNATURE_HEADER = "X-Slack-Signature"
SLACK_TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
#: requests older (or further ahead) than this are refused
TOLERANCE_SECONDS = 300.0


def sign_event(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``timestamp + "." + body``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign_event(secret, ts, body)}


#: a timestamp is Unix seconds written in ASCII digits, nothing else (no sign, no
#: exponent, no fraction, no ``nan``/``inf``, which a float() would take)
_SECONDS = re.compile(r"[0-9]{1,12}", re.ASCII)


def _fresh(timestamp: str | None, now: float) -> str | None:
    if not timestamp:
        return "missing timestamp header"
    if not _SECONDS.fullmatch(timestamp):
        return "timestamp is not an integer number of seconds"
    ts = int(timestamp)
    if abs(now - ts) > TOLERANCE_SECONDS:
        return f"timestamp outside the {TOLERANCE_SECONDS:.0f}s window"
    return None


def verify_event(
    secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float
) -> str | None:
    """None if the detector signature is valid, else why not."""
    stale = _fresh(timestamp, now)
    if stale:
        return stale
    if not signature:
        return "missing signature header"
    expected = sign_event(secret, timestamp or "", body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        return "signature does not match"
    return None


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify_slack(
    secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float
) -> str | None:
    """Slack's v0 scheme (X-Slack-Request-Timestamp, X-Slack-Signature)."""
    stale = _fresh(timestamp, now)
    if stale:
        return stale
    if not signature or not signature.startswith("v0="):
        return "missing or non-v0 signature"
    expected = slack_signature(secret, timestamp or "", body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return "signature does not match"
    return None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def approval_binding(approval_id: str, action: str, target: str, params: dict[str, Any]) -> str:
    """What a token is bound to: the approval, its action, target and parameters."""
    blob = json.dumps([approval_id, action, target, params], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def make_approval_token(secret: str, binding: str, expires_at: float, decision: str) -> str:
    payload = json.dumps({"b": binding, "e": int(expires_at), "d": decision}).encode()
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    return _b64(payload) + "." + _b64(mac)


def token_digest(token: str) -> str:
    """What the audit keeps of an approval token: it identifies a presented token,
    it does not grant anything."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_approval_token(
    secret: str, token: str, binding: str, decision: str, now: float
) -> str | None:
    """None if ``token`` approves (or rejects) exactly this binding and is not expired."""
    try:
        payload_b64, mac_b64 = token.split(".", 1)
        payload = _unb64(payload_b64)
        mac = _unb64(mac_b64)
        data = json.loads(payload)
    except (ValueError, TypeError):
        return "malformed token"
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        return "token signature does not match"
    if not isinstance(data, dict) or data.get("d") != decision:
        return f"token is not a {decision} token"
    if not hmac.compare_digest(str(data.get("b", "")).encode(), binding.encode()):
        return "token was issued for another action, target or parameters"
    if now > float(data.get("e", 0)):
        return "token expired"
    return None
