"""Slack: approval requests with buttons, plain notifications, interactive callbacks.

(Being built: see issue 5.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

router = APIRouter()


def pending_notifier(settings: Any) -> Callable[[Any, Any], None] | None:
    """The callback the remediator calls for every held action (None: no Slack)."""
    return None
