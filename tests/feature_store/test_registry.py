"""The model registry: versions, promotion, rollback, pruning, and refused artifacts.

The save/promote/rollback tests run on SQLite and on a real PostgreSQL (``pg_url``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from aiops.core.db import make_engine
from feature_store import tables
from feature_store.registry import (
    ModelLoadError,
    ModelRegistry,
    RegistryError,
    load_artifact,
)
from sql.migrate import migrate

REPO = Path(__file__).resolve().parents[2]
SERIES = 'latency_p99{app="checkout"}'
OTHER = 'latency_p99{app="search"}'
NAMES = ["z_5m", "z_15m", "z_1h"]


def fit(seed: int = 0, n_estimators: int = 20) -> IsolationForest:
    X = np.random.default_rng(seed).normal(size=(300, len(NAMES)))
    return IsolationForest(n_estimators=n_estimators, random_state=seed).fit(X)


def save(registry: ModelRegistry, model=None, *, series: str = SERIES, **kw):
    app = series.split('"')[1]
    return registry.save(
        series=series,
        metric="latency_p99",
        labels={"app": app},
        model=model if model is not None else fit(),
        feature_names=NAMES,
        params={"n_estimators": 20},
        train_start=1_700_000_000.0,
        train_end=1_700_086_400.0,
        n_samples=300,
        evaluation={"tail_anomaly_rate": 0.01},
        **kw,
    )


def states(registry: ModelRegistry, series: str = SERIES) -> dict[int, str]:
    return {r.version: r.state for r in registry.list(series=series)}


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("pg_url")


def _engine(u: str):
    engine = make_engine(u)
    migrate(engine)
    return engine


@pytest.fixture
def engine(url):
    engine = _engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url):
    engine = _engine(sqlite_url)
    yield engine
    engine.dispose()


# -- versions and states (SQLite and PostgreSQL) ---------------------------------------------
def test_save_makes_numbered_candidates(engine):
    reg = ModelRegistry(engine)
    first = save(reg)
    assert (first.version, first.state, first.tag) == (1, "candidate", "v1")
    assert first.promoted_at is None
    assert first.sklearn_version
    assert first.feature_names == NAMES
    assert first.labels == {"app": "checkout"}
    assert first.size and first.size > 1000
    second = save(reg)
    assert (second.version, second.state) == (2, "candidate")
    # numbering is per series
    assert save(reg, series=OTHER).version == 1
    with pytest.raises(RegistryError):
        reg.get(SERIES)  # nothing promoted yet


def test_save_with_promote_retires_the_previous_one(engine):
    reg = ModelRegistry(engine)
    v1 = save(reg, promote=True)
    assert v1.state == "promoted" and v1.promoted_at is not None
    v2 = save(reg, promote=True)
    assert v2.state == "promoted"
    assert states(reg) == {1: "retired", 2: "promoted"}
    assert reg.get(SERIES).version == 2
    save(reg)  # a candidate does not touch the promoted one
    assert states(reg) == {1: "retired", 2: "promoted", 3: "candidate"}
    save(reg, series=OTHER, promote=True)
    assert sorted((r.series, r.version) for r in reg.promoted()) == [(SERIES, 2), (OTHER, 1)]
    # the database itself refuses a second promoted version of one series
    t = tables.models
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            update(t).where(t.c.series == SERIES, t.c.version == 3).values(state="promoted")
        )
    assert states(reg) == {1: "retired", 2: "promoted", 3: "candidate"}


def test_promote_and_rollback(engine):
    reg = ModelRegistry(engine)
    save(reg, promote=True)  # v1
    save(reg, promote=True)  # v2
    save(reg)  # v3, candidate
    rec = reg.promote(SERIES, 3, note="looks better")
    assert (rec.version, rec.state, rec.note) == (3, "promoted", "looks better")
    assert states(reg) == {1: "retired", 2: "retired", 3: "promoted"}
    # promoting the promoted version again changes nothing
    assert reg.promote(SERIES, 3).state == "promoted"
    assert states(reg) == {1: "retired", 2: "retired", 3: "promoted"}

    back = reg.rollback(SERIES)
    assert back.version == 2  # the one promoted before v3
    assert "rollback from v3" in (back.note or "")
    assert states(reg) == {1: "retired", 2: "promoted", 3: "retired"}
    assert reg.get(SERIES).version == 2


def test_unknown_versions_and_impossible_rollbacks_raise(engine):
    reg = ModelRegistry(engine)
    with pytest.raises(RegistryError):
        reg.promote(SERIES, 1)
    with pytest.raises(RegistryError):
        reg.rollback(SERIES)  # nothing promoted
    save(reg)
    with pytest.raises(RegistryError):
        reg.rollback(SERIES)  # still nothing promoted
    with pytest.raises(RegistryError):
        reg.promote(SERIES, 7)
    with pytest.raises(RegistryError):
        reg.get(SERIES, 7)
    reg.promote(SERIES, 1)
    with pytest.raises(RegistryError):
        reg.rollback(SERIES)  # no earlier promoted version
    assert states(reg) == {1: "promoted"}


def test_load_round_trips_a_fitted_forest(engine):
    reg = ModelRegistry(engine)
    model = fit(seed=3, n_estimators=30)
    rec = save(reg, model, promote=True)
    loaded = reg.load(reg.get(SERIES))
    assert isinstance(loaded, IsolationForest)
    X = np.random.default_rng(9).normal(size=(200, len(NAMES))) * 3
    assert np.array_equal(loaded.score_samples(X), model.score_samples(X))
    t = tables.models
    with engine.connect() as conn:
        blob = bytes(conn.execute(select(t.c.artifact).where(t.c.id == rec.id)).scalar())
    assert hashlib.sha256(blob).hexdigest() == rec.sha256
    assert blob[:2] == b"PK"  # a skops (zip) file, not a pickle


# -- pruning ---------------------------------------------------------------------------------
def test_pruning_keeps_the_newest_and_never_the_promoted(sqlite_engine):
    reg = ModelRegistry(sqlite_engine, keep=3)
    save(reg, promote=True)  # v1, promoted
    for _ in range(5):
        save(reg)  # v2..v6
    assert states(reg) == {1: "promoted", 4: "candidate", 5: "candidate", 6: "candidate"}
    assert reg.load(reg.get(SERIES)) is not None  # the old promoted one is still loadable
    reg.promote(SERIES, 5)
    save(reg)  # v7: v1 is no longer promoted and is pruned now
    assert states(reg) == {5: "promoted", 6: "candidate", 7: "candidate"}
    # other series are not pruned by this one's saves
    save(reg, series=OTHER)
    save(reg, series=OTHER)
    assert set(states(reg, OTHER)) == {1, 2}
    # numbers are never reused after pruning
    assert save(reg).version == 8


# -- refused artifacts -----------------------------------------------------------------------
def _artifact(engine, rec) -> bytes:
    t = tables.models
    with engine.connect() as conn:
        return bytes(conn.execute(select(t.c.artifact).where(t.c.id == rec.id)).scalar())


def _reason(reg: ModelRegistry, rec) -> str:
    with pytest.raises(ModelLoadError) as info:
        reg.load(reg.get(rec.series, rec.version))
    return info.value.reason


def test_tampered_artifact_is_refused_by_checksum(sqlite_engine):
    reg = ModelRegistry(sqlite_engine)
    rec = save(reg, promote=True)
    blob = bytearray(_artifact(sqlite_engine, rec))
    blob[len(blob) // 2] ^= 0xFF
    t = tables.models
    with sqlite_engine.begin() as conn:
        conn.execute(update(t).where(t.c.id == rec.id).values(artifact=bytes(blob)))
    assert _reason(reg, rec) == "checksum"


class Payload:
    """Unpickling this creates (opens for writing) the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_payload_is_never_unpickled(sqlite_engine, tmp_path):
    # the payload is live: plain unpickling does create its file
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control))).close()
    assert control.exists()

    sentinel = tmp_path / "sentinel"
    blob = pickle.dumps(Payload(sentinel))
    reg = ModelRegistry(sqlite_engine)
    rec = save(reg, blob=blob, promote=True)  # stored with its own, matching sha256
    assert rec.sha256 == hashlib.sha256(blob).hexdigest()
    assert _reason(reg, rec) == "not_skops"
    with pytest.raises(ModelLoadError) as info:
        load_artifact(blob, sha256=rec.sha256, sklearn_version=rec.sklearn_version)
    assert info.value.reason == "not_skops"
    assert not sentinel.exists()


class Custom:
    def __init__(self) -> None:
        self.threshold = 0.5


def identity(x):
    return x


@pytest.mark.parametrize(
    ("make", "untrusted"),
    [
        (Custom, f"{__name__}.Custom"),
        (lambda: Pipeline([("f", FunctionTransformer(identity))]), f"{__name__}.identity"),
    ],
    ids=["custom_class", "pipeline_with_function"],
)
def test_untrusted_types_are_refused(sqlite_engine, make, untrusted):
    blob = sio.dumps(make())
    assert untrusted in sio.get_untrusted_types(data=blob)
    reg = ModelRegistry(sqlite_engine)
    rec = save(reg, blob=blob)
    with pytest.raises(ModelLoadError) as info:
        reg.load(rec)
    assert info.value.reason == "untrusted_type"
    assert untrusted in str(info.value)


def test_another_scikit_learn_version_is_refused(sqlite_engine):
    reg = ModelRegistry(sqlite_engine)
    rec = save(reg, promote=True)
    t = tables.models
    with sqlite_engine.begin() as conn:
        conn.execute(update(t).where(t.c.id == rec.id).values(sklearn_version="0.24.2"))
    assert _reason(reg, rec) == "sklearn_version"


def test_another_estimator_type_is_refused(sqlite_engine):
    X = np.random.default_rng(0).normal(size=(50, 3))
    blob = sio.dumps(LinearRegression().fit(X, X[:, 0]))
    assert sio.get_untrusted_types(data=blob) == []  # all of it is trusted by skops ...
    reg = ModelRegistry(sqlite_engine)
    rec = save(reg, blob=blob, promote=True)
    assert _reason(reg, rec) == "unexpected_type"  # ... but it is no IsolationForest


def test_an_unfitted_forest_is_refused(sqlite_engine):
    reg = ModelRegistry(sqlite_engine)
    rec = save(reg, blob=sio.dumps(IsolationForest(n_estimators=5)), promote=True)
    assert _reason(reg, rec) == "not_fitted"


def test_a_forest_fitted_on_other_columns_is_refused(sqlite_engine):
    reg = ModelRegistry(sqlite_engine)
    X = np.random.default_rng(0).normal(size=(100, len(NAMES) + 2))
    rec = save(reg, IsolationForest(n_estimators=5, random_state=0).fit(X), promote=True)
    assert _reason(reg, rec) == "feature_mismatch"  # five columns, three names recorded


# -- kill -9 in the middle of a save ---------------------------------------------------------
HELPER = """
import os, sys
from aiops.core.db import make_engine
from feature_store.registry import ModelRegistry

url, size = sys.argv[1], int(sys.argv[2])
registry = ModelRegistry(make_engine(url))
prune = registry._prune

def hold(conn, series):
    # the big row is written, the transaction not committed: wait here to be killed
    prune(conn, series)
    sys.stdin.read()

registry._prune = hold
registry.save(
    series=sys.argv[3], metric="latency_p99", labels={"app": "checkout"}, model=None,
    feature_names=["z_5m"], params={}, train_start=0.0, train_end=1.0, n_samples=1,
    evaluation={}, promote=True, blob=os.urandom(size),
)
print("committed")
"""


def test_kill_9_during_a_promoting_save_keeps_the_promoted_version(tmp_path, sqlite_url):
    engine = _engine(sqlite_url)
    reg = ModelRegistry(engine)
    model = fit(seed=5)
    save(reg, model, promote=True)
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    wal = db.with_name(db.name + "-wal")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    assert not wal.exists() or wal.stat().st_size == 0

    script = tmp_path / "slow_save.py"
    script.write_text(textwrap.dedent(HELPER))
    size = 48 * 1024 * 1024
    proc = subprocess.Popen(
        [sys.executable, str(script), sqlite_url, str(size), SERIES],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not (wal.exists() and wal.stat().st_size > 16 * 1024 * 1024):
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the save never got going"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert b"committed" not in out
    engine.dispose()

    # a restarted process: the old promoted version is there and loads
    engine = _engine(sqlite_url)
    try:
        reg = ModelRegistry(engine)
        assert states(reg) == {1: "promoted"}
        rec = reg.get(SERIES)
        X = np.random.default_rng(1).normal(size=(50, len(NAMES)))
        assert np.array_equal(reg.load(rec).score_samples(X), model.score_samples(X))
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        assert save(reg, promote=True).version == 2  # and the database takes writes again
    finally:
        engine.dispose()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
