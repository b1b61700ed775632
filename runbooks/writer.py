"""Group commit: one writer thread runs the webhook's decisions, several per transaction.

Every decision of the webhook is a short unit of work on the database (the
delivery record, the incident, the guards, the audit rows) that must be committed
before the HTTP answer. Running them from many threads makes SQLite writers queue
on its single write lock (busy-timeout sleeps, the long tail) and pays one commit
(one fsync with ``synchronous=FULL``) per event.

``GroupCommitter`` runs them on ONE thread instead. It takes every unit of work
that is waiting, runs them one after the other in ONE transaction, each inside
its own savepoint, and commits once:

- a unit that raises is rolled back to its savepoint (its ``recover`` hook may then
  write what replaces it, e.g. the ``duplicate`` audit row) and only its caller
  gets the error; the others go on;
- a failed BEGIN/COMMIT (the database is down, the disk is full) fails every unit
  of the batch: nothing of it was committed, each caller answers 5xx;
- every caller is answered only after the COMMIT returned: durability is the
  same as one transaction per event, the commit cost is shared.

Units run strictly one at a time, in arrival order, so the decisions of one
process are serialised exactly as the SQLite write lock serialised them; replicas
still serialise through the database (``BEGIN IMMEDIATE`` on SQLite, the app's row
lock on PostgreSQL). There is no waiting for a batch to fill: a unit that arrives
while a batch commits is in the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine

log = logging.getLogger("aiops.runbooks.writer")
T = TypeVar("T")

#: units of work per transaction at most (bounds the time the write lock is held)
MAX_BATCH = 64


class _Unit(Generic[T]):
    __slots__ = ("future", "loop", "recover", "work")

    def __init__(
        self,
        work: Callable[[Any], T],
        recover: Callable[[Any, Exception], T] | None,
        future: Any,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.work = work
        self.recover = recover
        self.future = future  # concurrent Future (loop None) or asyncio Future
        self.loop = loop


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in items:
        if fut.done():  # the caller went away (cancelled)
            continue
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)


class GroupCommitter:
    """One writer thread committing batches of units of work (see the module doc)."""

    def __init__(
        self, engine: Engine, *, max_batch: int = MAX_BATCH, name: str = "runbooks-writer"
    ) -> None:
        self.engine = engine
        self.max_batch = max(1, max_batch)
        self.name = name
        self._queue: queue.SimpleQueue[_Unit[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0
        self.units = 0
        begin = "BEGIN IMMEDIATE" if engine.dialect.name == "sqlite" else "BEGIN"
        self._begin = begin

    # -- callers --------------------------------------------------------------------
    def run(
        self, work: Callable[[Any], T], recover: Callable[[Any, Exception], T] | None = None
    ) -> T:
        """Run ``work(conn)`` in the next batch; return its result once committed."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a unit of work cannot wait for another unit (it would deadlock)")
        fut: Future[T] = Future()
        self._put(_Unit(work, recover, fut, None))
        return fut.result()

    async def run_async(
        self, work: Callable[[Any], T], recover: Callable[[Any, Exception], T] | None = None
    ) -> T:
        """``run`` for a coroutine: the event loop is not blocked while the batch commits."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._put(_Unit(work, recover, fut, loop))
        return await fut

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued units, then stop the thread (it restarts on the next unit)."""
        with self._start_lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout)

    def _put(self, unit: _Unit[Any]) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._queue.put(unit)

    # -- the writer thread ----------------------------------------------------------
    def _loop(self) -> None:
        q = self._queue
        while True:
            unit = q.get()
            if unit is None:
                return
            batch = [unit]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    more = q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                outcome = self._commit(batch)
            except BaseException as exc:  # nothing of the batch was committed
                outcome = [(None, exc)] * len(batch)
            self._answer(batch, outcome)
            if stop:
                return

    def _commit(self, batch: list[_Unit[Any]]) -> list[tuple[Any, BaseException | None]]:
        outcome: list[tuple[Any, BaseException | None]] = []
        with self.engine.connect() as sa_conn:
            # explicit BEGIN/SAVEPOINT/COMMIT: the drivers' implicit transactions would
            # not nest savepoints (pysqlite) nor take SQLite's write lock up front
            conn = sa_conn.execution_options(isolation_level="AUTOCOMMIT")
            sql = conn.exec_driver_sql
            sql(self._begin)
            try:
                for unit in batch:
                    sql("SAVEPOINT unit")
                    try:
                        outcome.append((unit.work(conn), None))
                    except Exception as exc:
                        sql("ROLLBACK TO SAVEPOINT unit")
                        outcome.append(self._recover(conn, unit, exc))
                    sql("RELEASE SAVEPOINT unit")
                sql("COMMIT")
            except BaseException:
                try:
                    sql("ROLLBACK")
                except Exception:  # the connection is gone: the pool drops it
                    log.debug("rollback after a failed batch failed", exc_info=True)
                raise
        self.batches += 1
        self.units += len(batch)
        return outcome

    @staticmethod
    def _recover(conn: Any, unit: _Unit[Any], exc: Exception) -> tuple[Any, BaseException | None]:
        if unit.recover is None:
            return None, exc
        try:
            return unit.recover(conn, exc), None
        except Exception as again:
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT unit")
            return None, again

    @staticmethod
    def _answer(batch: list[_Unit[Any]], outcome: list[tuple[Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for unit, (result, exc) in zip(batch, outcome, strict=True):
            if unit.loop is None:
                with contextlib.suppress(InvalidStateError):  # never kill the writer
                    if exc is None:
                        unit.future.set_result(result)
                    else:
                        unit.future.set_exception(exc)
            else:
                by_loop.setdefault(unit.loop, []).append((unit.future, result, exc))
        for loop, items in by_loop.items():  # one wake-up per event loop and batch
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, items)
