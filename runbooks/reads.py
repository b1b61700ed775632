"""Reading the audit: ``GET /audit`` (filtered rows) and ``GET /events`` (a live
server-sent stream of every audit row once committed). Both take read access
(``runbooks.auth.reader``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError

from feature_store import tables
from runbooks import auth
from runbooks.events import visible_nul
from runbooks.schemas import AuditOut, errors, ok
from runbooks.web import EngineDep, StateDep, db_error

router = APIRouter()

#: rows a slow stream may fall behind before it loses the oldest
STREAM_QUEUE = 1000
KEEP_ALIVE_SECONDS = 15


class Broadcaster:
    """Audit rows to every open ``GET /events`` stream (thread-safe publish)."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    def publish(self, row: dict[str, Any]) -> None:
        loop = self.loop
        if loop is None:
            return
        for q in list(self.queues):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(q.put_nowait, row)


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


@router.get(
    "/audit",
    responses=ok(AuditOut, 401, 422, 503),
    dependencies=[Depends(auth.reader("/audit"))],
)
async def audit(
    engine: EngineDep,
    n: int = Query(100, ge=1, le=5000),
    since: float | None = Query(None, ge=0),
    kind: str | None = Query(None, max_length=64),
    alertname: str | None = Query(None, max_length=200),
    contains: str | None = Query(None, max_length=200),
) -> Response:
    # incoming text is stored with a NUL written out (runbooks.events): filter alike
    kind, alertname, contains = (visible_nul(v) for v in (kind, alertname, contains))
    t = tables.audit
    q = select(t).order_by(t.c.id.desc()).limit(n)
    if since is not None:
        q = q.where(t.c.ts >= since)
    if kind:
        q = q.where(t.c.kind == kind)
    if alertname:
        q = q.where(or_(t.c.alertname == alertname, t.c.metric == alertname))

    def read() -> list[dict[str, Any]]:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    try:
        rows = await asyncio.to_thread(read)
    except SQLAlchemyError as exc:
        return db_error(exc)
    if contains:  # the needle encoded as the rows are, quotes and backslashes too
        needle = json.dumps(contains)[1:-1].lower()
        rows = [r for r in rows if needle in json.dumps(r, default=str).lower()]
    return JSONResponse({"rows": rows, "count": len(rows)})


@router.get(
    "/events",
    response_class=EventStreamResponse,
    responses=errors(401),
    dependencies=[Depends(auth.reader("/events"))],
)
async def stream(request: Request, state: StateDep) -> Response:
    events: Broadcaster = state.events
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=STREAM_QUEUE)
    events.queues.add(queue)

    async def gen() -> AsyncIterator[str]:
        try:
            yield ": connected\n\n"
            while not await request.is_disconnected():
                try:
                    row = await asyncio.wait_for(queue.get(), timeout=KEEP_ALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: audit\ndata: {json.dumps(row, default=str)}\n\n"
        finally:
            events.queues.discard(queue)

    return EventStreamResponse(gen())
