"""``GET /console``: the live audit stream and pending approvals (being built)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
