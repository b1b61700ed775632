"""The group committer: several units per transaction, each isolated by its savepoint."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from aiops.core.db import make_engine
from feature_store import tables
from runbooks.writer import GroupCommitter
from sql.migrate import migrate


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/w.db")
    migrate(engine)
    yield engine
    engine.dispose()


def deliver(key: str):
    def work(conn):
        conn.execute(
            insert(tables.deliveries).values(dedup_key=key, received_at=1.0, source="anomalies")
        )
        return key

    return work


def hold(writer: GroupCommitter) -> threading.Event:
    """A unit that keeps the writer busy until the returned event is set."""
    running, gate = threading.Event(), threading.Event()

    def work(conn):
        running.set()
        gate.wait(10)

    threading.Thread(target=writer.run, args=(work,), daemon=True).start()
    assert running.wait(10)
    return gate


def keys(engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(tables.deliveries.c.dedup_key)).scalars())


def test_sqlite_commits_are_durable_wal_full(engine):
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL


def test_many_callers_share_batches_and_every_answer_follows_its_commit(engine):
    writer = GroupCommitter(engine)
    gate = hold(writer)  # the writer is busy until the others are queued: one batch
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(writer.run, deliver(f"k{i}")) for i in range(16)]
        while writer._queue.qsize() < 16:
            threading.Event().wait(0.01)
        gate.set()
        answers = [f.result(10) for f in futures]
        for key in answers:  # each answered key is committed (visible to another connection)
            assert key in keys(engine)
    writer.close()
    assert answers == [f"k{i}" for i in range(16)]
    assert writer.units == 17 and writer.batches == 2


def test_a_failing_unit_is_rolled_back_alone_and_recover_replaces_it(engine):
    writer = GroupCommitter(engine)
    writer.run(deliver("dup"))

    def boom(conn):
        deliver("half")(conn)  # written, then undone with its savepoint
        raise ValueError("bug in one unit")

    def replaced(conn, exc):
        assert isinstance(exc, IntegrityError)
        deliver("instead")(conn)
        return "recovered"

    gate = hold(writer)
    with ThreadPoolExecutor(4) as pool:
        ok = pool.submit(writer.run, deliver("ok"))
        bad = pool.submit(writer.run, boom)
        dup = pool.submit(writer.run, deliver("dup"), replaced)
        while writer._queue.qsize() < 3:
            threading.Event().wait(0.01)
        gate.set()
        assert ok.result(10) == "ok"
        with pytest.raises(ValueError, match="bug in one unit"):
            bad.result(10)
        assert dup.result(10) == "recovered"
    writer.close()
    assert keys(engine) == ["dup", "instead", "ok"]


def test_a_database_failure_fails_every_unit_and_commits_nothing(engine, tmp_path):
    writer = GroupCommitter(engine)
    engine.dispose()
    db = tmp_path / "w.db"
    db.rename(tmp_path / "moved.db")
    db.mkdir()
    with pytest.raises(OperationalError):
        writer.run(deliver("lost"))
    db.rmdir()
    (tmp_path / "moved.db").rename(db)
    assert writer.run(deliver("after")) == "after"
    assert keys(engine) == ["after"]
    writer.close()


def test_run_async_answers_on_the_event_loop(engine):
    writer = GroupCommitter(engine)

    async def main() -> list[str]:
        return list(await asyncio.gather(*(writer.run_async(deliver(f"a{i}")) for i in range(20))))

    assert asyncio.run(main()) == [f"a{i}" for i in range(20)]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.deliveries)).scalar() == 20
    writer.close()


def test_a_unit_waiting_for_another_unit_is_refused(engine):
    writer = GroupCommitter(engine)
    with pytest.raises(RuntimeError, match="deadlock"):
        writer.run(lambda conn: writer.run(deliver("inner")))
    writer.close()
