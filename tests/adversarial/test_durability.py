"""Durability: the real ``aiops webhook`` process killed -9 in a burst, its PostgreSQL
restarted in a burst, and its circuit breaker raced by two processes on one database.

What an answer vouches for must be in the database: a 2xx means the event's audit rows
are committed; a 5xx means the sender must retry and nothing ran. Each event here has
its own series (a ``pod`` label), so each opens its own incident and its audit rows
can be told apart.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from aiops.core.db import make_engine
from feature_store import tables
from tests.adversarial.conftest import WebhookProcess, command_policy, post_signed
from tests.conftest import IN_CI
from tests.integration.conftest import poll
from tests.postgres import PostgresProcess, find_bin_dir
from tests.runbooks.conftest import anomaly

pytestmark = pytest.mark.integration


def event(i: int, prefix: str = "ev") -> dict[str, Any]:
    e = anomaly(f"{prefix}-{i}")
    e["labels"]["pod"] = f"checkout-{i}"
    return e


class Burst:
    """``n`` signed events from ``workers`` threads; every answer (or failure) recorded."""

    def __init__(self, url: str, n: int, *, workers: int = 8, prefix: str = "ev") -> None:
        self.url, self.n, self.workers, self.prefix = url, n, workers, prefix
        self.answers: dict[int, tuple[int, dict[str, Any]] | str] = {}
        self.lock = threading.Lock()
        self.ok = 0

    def one(self, client: httpx.Client, i: int) -> None:
        try:
            r = post_signed(client, self.url, event(i, self.prefix))
            answer: tuple[int, dict[str, Any]] | str = (r.status_code, r.json())
        except httpx.HTTPError as exc:
            answer = type(exc).__name__
        with self.lock:
            self.answers[i] = answer
            if isinstance(answer, tuple) and answer[0] == 200:
                self.ok += 1

    def run(self) -> None:
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(lambda i: self.one(client, i), range(self.n)))

    def statuses(self) -> Counter:
        return Counter(a[0] if isinstance(a, tuple) else a for a in self.answers.values())

    def answered(self, status: int) -> dict[int, dict[str, Any]]:
        return {i: a[1] for i, a in self.answers.items() if isinstance(a, tuple) and a[0] == status}


def audit_by_event(engine: Any) -> tuple[dict[str, str], dict[str, list[str]]]:
    """event id -> incident id (from its request row), incident id -> its audit kinds."""
    t = tables.audit
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.kind, t.c.incident_id, t.c.details).order_by(t.c.id)).all()
    incident_of: dict[str, str] = {}
    kinds: dict[str, list[str]] = {}
    for kind, incident, details in rows:
        if kind == "request":
            incident_of[details["event_id"]] = ""
        if incident:
            kinds.setdefault(incident, []).append(kind)
    with engine.connect() as conn:
        d = tables.deliveries
        for key, incident in conn.execute(select(d.c.dedup_key, d.c.incident_id)):
            event_id = key.split(":")[1]
            if event_id in incident_of:
                incident_of[event_id] = incident
    return incident_of, kinds


def count(engine: Any, table: Any) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


# -- kill -9 during a burst of 1,000 ----------------------------------------------------------


@pytest.mark.timeout(240)
def test_kill_9_during_a_burst_of_1000_keeps_every_answered_event(tmp_path):
    db = tmp_path / "hook.db"
    env = dict(
        AIOPS_DATABASE_URL=f"sqlite:///{db}",
        RUNBOOK_POLICY_FILE=str(command_policy(tmp_path / "p.yaml", tmp_path / "trace")),
        RUNBOOK_AUTOFIX_ENABLED="false",  # every event: request, incident, policy, decision
    )
    hook = WebhookProcess(tmp_path / "w1", **env).start()
    burst = Burst(hook.url, 1000)
    sender = threading.Thread(target=burst.run)
    try:
        sender.start()
        poll(lambda: burst.ok >= 300, timeout=120, every=0.002, what="300 answered events")
        hook.kill9()
        sender.join(120)
    finally:
        hook.kill9()
    assert hook.proc.returncode == -9
    answered = burst.answered(200)
    assert 300 <= len(answered) < 1000, burst.statuses()
    assert set(burst.statuses()) <= {200, "ConnectError", "RemoteProtocolError", "ReadError"}

    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    engine = make_engine(f"sqlite:///{db}")
    try:
        incident_of, kinds = audit_by_event(engine)
        # every event that got a 2xx has all its audit rows, under the incident it was told
        for i, body in answered.items():
            assert body["decision"] == "skipped_disabled"
            assert incident_of[f"ev-{i}"] == body["incident_id"]
            assert kinds[body["incident_id"]] == [
                "incident_opened",
                "policy_match",
                "skipped_disabled",
            ]
        # no half-written event: whatever was committed was committed whole
        assert all(
            k == ["incident_opened", "policy_match", "skipped_disabled"] for k in kinds.values()
        )
        committed = count(engine, tables.deliveries)
        assert committed == len(incident_of) == len(kinds) == count(engine, tables.incidents)
        assert committed >= len(answered)
    finally:
        engine.dispose()

    # the retries after a restart: answered events are duplicates, the rest run now
    again = WebhookProcess(tmp_path / "w2", **env).start()
    try:
        retry = Burst(again.url, 1000)
        retry.run()
    finally:
        again.stop()
    assert retry.statuses() == {200: 1000}
    decided = retry.answered(200)
    assert all(decided[i]["decision"] == "duplicate" for i in answered)
    assert Counter(d["decision"] for d in decided.values()) == {
        "duplicate": committed,
        "skipped_disabled": 1000 - committed,
    }


# -- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory) -> Iterator[PostgresProcess]:
    """A PostgreSQL server of this module's own (it is restarted and stopped here)."""
    if find_bin_dir() is None:
        message = "PostgreSQL is not installed (run ./scripts/setup.sh)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    base = None if os.geteuid() == 0 else tmp_path_factory.mktemp("pg")
    server = PostgresProcess(base).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(240)
def test_postgresql_restarted_during_a_burst_the_webhook_recovers_and_loses_nothing(
    own_postgres, tmp_path
):
    url = own_postgres.create_database("burst_restart")
    hook = WebhookProcess(
        tmp_path / "w",
        AIOPS_DATABASE_URL=url,
        RUNBOOK_POLICY_FILE=str(command_policy(tmp_path / "p.yaml", tmp_path / "trace")),
        RUNBOOK_AUTOFIX_ENABLED="false",
    ).start()
    pid = hook.proc.pid
    burst = Burst(hook.url, 600, workers=4)
    sender = threading.Thread(target=burst.run)
    refused_while_down: list[int] = []

    def while_down() -> None:  # the server is stopped: requests now must be refused, 5xx
        with httpx.Client(timeout=30) as client:
            r = post_signed(client, hook.url, event(10_000, "down"))
        refused_while_down.append(r.status_code)

    try:
        sender.start()
        poll(lambda: burst.ok >= 100, timeout=60, every=0.002, what="100 answered events")
        own_postgres.restart(down=while_down)
        sender.join(180)
        assert not sender.is_alive()
        # the webhook was not restarted, and it serves again
        assert hook.proc.poll() is None and hook.proc.pid == pid
        poll(
            lambda: httpx.get(f"{hook.url}/healthz").status_code == 200,
            timeout=30,
            what="healthz 200 after the restart",
        )
        assert refused_while_down == [503]
        statuses = burst.statuses()
        assert set(statuses) <= {200, 503}, statuses  # answered or refused, never dropped
        assert statuses[200] >= 100
        # every answered event is in the database; every refused one is retried now
        engine = create_engine(url)
        try:
            incident_of, kinds = audit_by_event(engine)
            for i, body in burst.answered(200).items():
                assert incident_of[f"ev-{i}"] == body["incident_id"]
                assert kinds[body["incident_id"]][-1] == "skipped_disabled"
            with httpx.Client(timeout=30) as client:
                for i in burst.answered(503):
                    r = post_signed(client, hook.url, event(i))
                    assert r.status_code == 200, r.text
                    # a 503 whose commit went through before the connection broke is a
                    # duplicate now; the others are decided now
                    assert r.json()["decision"] in ("skipped_disabled", "duplicate")
            assert count(engine, tables.deliveries) == 600
            assert all(k[-1] == "skipped_disabled" for k in kinds.values())
        finally:
            engine.dispose()
        log = hook.log()
        assert "Traceback" not in log, log[-3000:]
    finally:
        hook.stop()


@pytest.mark.timeout(240)
def test_the_circuit_breaker_on_one_database_holds_for_two_processes_and_a_restart(
    own_postgres, tmp_path
):
    """SQL guard state (the default): 50 concurrent incidents of one app through two
    replicas execute exactly the hourly limit; a restarted replica still refuses; with
    the database gone, nothing runs (fail closed)."""
    url = own_postgres.create_database("breaker_two")
    trace = tmp_path / "trace"
    env = dict(
        AIOPS_DATABASE_URL=url,
        RUNBOOK_POLICY_FILE=str(command_policy(tmp_path / "p.yaml", trace)),
        RUNBOOK_AUTOFIX_ENABLED="true",
        RUNBOOK_AUTOFIX_DRY_RUN="false",
        RUNBOOK_COOLDOWN_SECONDS="0",
        RUNBOOK_CIRCUIT_MAX_HOURLY="3",
        RUNBOOK_MAX_ACTIONS_PER_WINDOW="1000",  # the per-app breaker is under test
    )
    hooks = [WebhookProcess(tmp_path / f"w{i}", **env).start() for i in range(2)]
    try:
        with httpx.Client(timeout=60) as client:

            def post(i: int) -> str:
                r = post_signed(client, hooks[i % 2].url, event(i, "race"))
                assert r.status_code == 200, r.text
                return r.json()["decision"]

            with ThreadPoolExecutor(50) as pool:
                decisions = Counter(pool.map(post, range(50)))
        assert decisions == {"executed": 3, "skipped_circuit": 47}, decisions
        assert trace.read_text().splitlines() == ["checkout"] * 3

        hooks[0].stop()
        hooks[0] = WebhookProcess(tmp_path / "w0b", **env).start()
        with httpx.Client(timeout=30) as client:
            r = post_signed(client, hooks[0].url, event(1000, "after-restart"))
        assert r.json()["decision"] == "skipped_circuit"

        refused: list[int] = []

        def down() -> None:
            with httpx.Client(timeout=30) as client:
                for h in hooks:
                    refused.append(post_signed(client, h.url, event(2000, "db-down")).status_code)

        own_postgres.restart(down=down)
        assert refused == [503, 503]
        assert trace.read_text().splitlines() == ["checkout"] * 3
    finally:
        for h in hooks:
            h.stop()


@pytest.mark.timeout(240)
def test_the_blast_radius_on_one_database_holds_for_two_processes_across_apps(
    own_postgres, tmp_path
):
    """30 concurrent incidents of 30 different apps through two replicas on PostgreSQL:
    each app is within its own breaker, the fleet's budget (3 per window) still holds
    exactly: the app locks never let two decisions count the fleet at once."""
    url = own_postgres.create_database("blast_two")
    trace = tmp_path / "trace"
    env = dict(
        AIOPS_DATABASE_URL=url,
        RUNBOOK_POLICY_FILE=str(command_policy(tmp_path / "p.yaml", trace)),
        RUNBOOK_AUTOFIX_ENABLED="true",
        RUNBOOK_AUTOFIX_DRY_RUN="false",
        RUNBOOK_COOLDOWN_SECONDS="0",
        RUNBOOK_MAX_ACTIONS_PER_WINDOW="3",
        RUNBOOK_ACTION_WINDOW_SECONDS="600",
    )
    hooks = [WebhookProcess(tmp_path / f"w{i}", **env).start() for i in range(2)]
    try:
        with httpx.Client(timeout=60) as client:

            def post(i: int) -> str:
                e = anomaly(f"fleet-{i}", app=f"app{i}")
                r = post_signed(client, hooks[i % 2].url, e)
                assert r.status_code == 200, r.text
                return r.json()["decision"]

            with ThreadPoolExecutor(30) as pool:
                decisions = Counter(pool.map(post, range(30)))
        assert decisions == {"executed": 3, "skipped_blast_radius": 27}, decisions
        assert len(trace.read_text().splitlines()) == 3
    finally:
        for h in hooks:
            h.stop()
