"""Lease: one holder at a time, on SQLite and real PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from aiops.core.db import make_engine
from demo.prometheus import free_port
from feature_store import tables
from feature_store.locks import Lease, LockHeld
from sql.migrate import migrate
from tests.feature_store.dialects import DIALECTS, database_url


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url(request, tmp_path)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url, pool_size=10)
    migrate(engine)
    yield engine
    engine.dispose()


def holder_of(engine: Engine, name: str) -> str | None:
    t = tables.locks
    with engine.connect() as conn:
        return conn.execute(select(t.c.holder).where(t.c.name == name)).scalar_one_or_none()


def wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_second_holder_is_refused_with_the_first_holder_named(engine):
    first = Lease(engine, "train").acquire()
    second = Lease(engine, "train")

    with pytest.raises(LockHeld, match="holds the database lock") as err:
        second.acquire()

    assert first.holder in str(err.value)
    assert err.value.holder == first.holder
    assert first.held and not second.held
    assert holder_of(engine, "train") == first.holder


def test_after_release_the_second_acquires(engine):
    first = Lease(engine, "train").acquire()
    first.release()

    assert not first.held
    assert holder_of(engine, "train") is None
    second = Lease(engine, "train").acquire()
    assert second.held and holder_of(engine, "train") == second.holder


def test_leases_of_different_names_do_not_interfere(engine):
    with Lease(engine, "train") as a, Lease(engine, "backfill") as b:
        assert a.held and b.held
    assert holder_of(engine, "train") is None and holder_of(engine, "backfill") is None


def test_the_context_manager_releases_on_error(engine):
    with pytest.raises(RuntimeError), Lease(engine, "train"):
        raise RuntimeError("boom")
    assert holder_of(engine, "train") is None


def test_an_expired_lease_is_taken_over_and_the_old_holder_cannot_refresh(engine):
    stale = Lease(engine, "train", ttl=0.05).acquire()
    heir = Lease(engine, "train")

    def took_over() -> bool:
        try:
            return heir.try_acquire()
        except LockHeld:
            return False

    wait_for(took_over)

    assert holder_of(engine, "train") == heir.holder
    with pytest.raises(LockHeld):
        stale.refresh()
    assert not stale.held
    stale.release()  # a lost lease's release must not free the new holder's
    assert holder_of(engine, "train") == heir.holder


def test_refresh_pushes_the_expiry_out(engine):
    lease = Lease(engine, "train", ttl=60.0).acquire()
    t = tables.locks
    with engine.connect() as conn:
        before = conn.execute(select(t.c.expires_at).where(t.c.name == "train")).scalar_one()
    lease.ttl = 3600.0

    lease.refresh()

    with engine.connect() as conn:
        after = conn.execute(select(t.c.expires_at).where(t.c.name == "train")).scalar_one()
    assert after > before + 3000
    assert lease.held


def test_acquire_with_wait_returns_once_the_holder_releases(engine):
    first = Lease(engine, "train").acquire()
    waiter = Lease(engine, "train")
    attempts: list[float] = []
    real_try = waiter.try_acquire

    def counting_try() -> bool:
        attempts.append(time.monotonic())
        return real_try()

    waiter.try_acquire = counting_try  # type: ignore[method-assign]
    outcome: list[object] = []

    def wait_in_thread() -> None:
        try:
            outcome.append(waiter.acquire(wait=20.0, every=0.02))
        except BaseException as exc:  # reported to the test below
            outcome.append(exc)

    thread = threading.Thread(target=wait_in_thread)
    thread.start()
    try:
        wait_for(lambda: len(attempts) >= 2)  # it tried, was refused, and is waiting
        assert outcome == []  # still waiting while the lease is held
        first.release()
        thread.join(timeout=15)
    finally:
        first.release()
        thread.join(timeout=15)

    assert not thread.is_alive()
    assert outcome == [waiter]
    assert waiter.held and holder_of(engine, "train") == waiter.holder


def test_acquire_gives_up_after_its_wait(engine):
    Lease(engine, "train").acquire()
    waiter = Lease(engine, "train")

    started = time.monotonic()
    with pytest.raises(LockHeld):
        waiter.acquire(wait=0.3, every=0.05)

    assert 0.3 <= time.monotonic() - started < 5.0
    assert not waiter.held


def test_racing_threads_on_a_fresh_lock_have_exactly_one_winner(engine):
    leases = [Lease(engine, "train") for _ in range(8)]
    barrier = threading.Barrier(len(leases))
    outcomes: list[object] = [None] * len(leases)

    def race(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            outcomes[i] = leases[i].try_acquire()
        except LockHeld:
            outcomes[i] = "held"
        except BaseException as exc:  # reported below
            outcomes[i] = exc

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(leases))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)

    assert all(o in (True, False, "held") for o in outcomes), outcomes
    winners = [lease for lease, o in zip(leases, outcomes, strict=True) if o is True]
    assert len(winners) == 1
    assert [lease.held for lease in leases].count(True) == 1
    assert holder_of(engine, "train") == winners[0].holder


def test_refresh_of_a_lease_never_taken_raises(engine):
    with pytest.raises(LockHeld):
        Lease(engine, "train").refresh()


def test_an_unreachable_database_is_an_error_not_an_endless_wait():
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/aiops")
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            Lease(engine, "train").acquire(wait=0.0, every=0.01)
        except BaseException as exc:  # reported below
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=10)
    engine.dispose()

    assert not thread.is_alive(), "acquire kept retrying an unreachable database"
    assert len(outcome) == 1 and "connection" in str(outcome[0]).lower()
