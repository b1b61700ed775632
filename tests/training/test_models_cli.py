"""``aiops models ...`` and ``aiops migrate`` as an operator uses them (subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from aiops.core.db import make_engine
from feature_store.registry import ModelRegistry
from sql.migrate import migrate
from tests.integration.conftest import detector_env, run_aiops

SERIES = 'lat{app="a"}'


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return detector_env(AIOPS_DATABASE_URL=f"sqlite:///{tmp_path}/aiops.db")


@pytest.fixture
def registry(env):
    engine = make_engine(env["AIOPS_DATABASE_URL"])
    migrate(engine)
    yield ModelRegistry(engine)
    engine.dispose()


def save(registry: ModelRegistry, *, promote: bool, seed: int):
    X = np.random.default_rng(seed).normal(size=(300, 3))
    return registry.save(
        series=SERIES,
        metric="lat",
        labels={"app": "a"},
        model=IsolationForest(n_estimators=10, random_state=seed).fit(X),
        feature_names=["a", "b", "c"],
        params={"seed": seed},
        train_start=0.0,
        train_end=1.0,
        n_samples=300,
        evaluation={"tail_anomaly_rate": 0.01 * seed},
        promote=promote,
    )


def test_list_show_promote_and_rollback(env, registry):
    save(registry, promote=True, seed=1)
    save(registry, promote=False, seed=2)

    listed = json.loads(run_aiops("models", "list", "--format", "json", env=env).stdout)
    assert [(m["version"], m["state"]) for m in listed] == [(2, "candidate"), (1, "promoted")]
    table = run_aiops("models", "list", env=env)
    assert table.returncode == 0 and "v2" in table.stdout and "candidate" in table.stdout

    shown = json.loads(run_aiops("models", "show", SERIES, env=env).stdout)
    assert shown["version"] == 1 and shown["params"] == {"seed": 1}

    proc = run_aiops("models", "promote", SERIES, "2", env=env)
    assert proc.returncode == 0 and "v2 promoted" in proc.stdout
    assert registry.get(SERIES).version == 2

    proc = run_aiops("models", "rollback", SERIES, env=env)
    assert proc.returncode == 0 and "rolled back to v1" in proc.stdout
    assert registry.get(SERIES).version == 1
    assert {(r.version, r.state) for r in registry.list()} == {(1, "promoted"), (2, "retired")}


def test_unknown_versions_fail_with_one_line(env, registry):
    save(registry, promote=True, seed=1)
    for args in (("show", SERIES, "9"), ("promote", SERIES, "9"), ("show", 'nope{a="b"}')):
        proc = run_aiops("models", *args, env=env)
        assert proc.returncode == 1, args
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("aiops: no ") and "Traceback" not in proc.stderr
    proc = run_aiops("models", "rollback", SERIES, env=env)
    assert proc.returncode == 1 and "no earlier promoted version" in proc.stderr


def test_migrate_status_and_a_bad_database_url(env):
    first = run_aiops("migrate", env=env)
    assert first.returncode == 0 and "applied 001_init.sql" in first.stdout
    again = run_aiops("migrate", env=env)
    assert again.returncode == 0 and "applied" not in again.stdout and "up to date" in again.stdout
    status = run_aiops("migrate", "--status", env=env)
    assert status.stdout.count("applied") >= 2 and "pending" not in status.stdout
    bad = run_aiops("migrate", env={**env, "AIOPS_DATABASE_URL": "mysql://x/y"})
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "aiops: config error: AIOPS_DATABASE_URL: unsupported database 'mysql'"
        " (use sqlite:/// or postgresql://) (got 'mysql://x/y')"
    )
