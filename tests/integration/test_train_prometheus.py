"""``aiops train`` against a real Prometheus holding days of backfilled history.

The demo workload's last 3 days are written as OpenMetrics at 1-minute
resolution and turned into TSDB blocks with ``promtool tsdb create-blocks-from
openmetrics``; the workload is then scraped live. Training pulls the 3 days in
range queries of at most a day, stores features, fits and promotes one model per
series; the detector, started afterwards on the same database, scores with the
promoted versions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from aiops.core.db import make_engine
from aiops.core.series import series_key
from demo.server import serve
from demo.workload import Workload
from feature_store import tables
from feature_store.locks import Lease
from tests.integration.conftest import detector_env, run_aiops, start_prometheus

pytestmark = pytest.mark.integration

DAYS = 3


@pytest.fixture(scope="module")
def long_history(binaries, tmp_path_factory) -> Iterator[str]:
    now = time.time()
    workload = Workload(seed=11, start=now - DAYS * 86400)
    path = tmp_path_factory.mktemp("history3d") / "history.om"
    workload.write_openmetrics(path, end=now, interval=60.0)
    server, _ = serve(workload)
    host, port = server.server_address[:2]
    prom = start_prometheus(
        tmp_path_factory.mktemp("prom3d"), path, {"demo": [f"{host}:{port}"]}, binaries
    )
    try:
        yield prom.url
    finally:
        prom.stop()
        server.stop()


def _json(proc) -> object:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.timeout(600)
def test_train_promotes_models_the_detector_then_uses(long_history, tmp_path: Path):
    env = detector_env(
        PROM_URL=long_history,
        AIOPS_DATABASE_URL=f"sqlite:///{tmp_path}/aiops.db",
        AIOPS_TRAIN_HISTORY=f"{DAYS}d",
        AIOPS_FEATURE_RETENTION=f"{DAYS}d",
        AIOPS_TRAIN_JOBS="2",
    )
    summary = _json(run_aiops("train", "--format", "json", env=env, timeout=500))
    promoted = [s for s in summary["series"] if s["decision"] == "promoted"]
    # 12 series in the demo catalogue; nearly all have a normal tail and get a model
    assert len(summary["series"]) == 12, summary
    assert len(promoted) >= 9, summary
    assert all(s["samples"] > 2000 for s in promoted)
    assert summary["feature_rows"] > 12 * 2000

    engine = make_engine(env["AIOPS_DATABASE_URL"])
    with engine.connect() as conn:
        n_features = conn.execute(select(func.count()).select_from(tables.features)).scalar()
        span = conn.execute(
            select(func.min(tables.features.c.ts), func.max(tables.features.c.ts))
        ).one()
    assert n_features == summary["feature_rows"]
    assert span[1] - span[0] > (DAYS - 0.5) * 86400  # the whole range, over several requests

    listed = _json(run_aiops("models", "list", "--format", "json", env=env))
    by_series = {m["series"]: m for m in listed if m["state"] == "promoted"}
    assert set(by_series) == {s["series"] for s in promoted}
    shown = _json(run_aiops("models", "show", next(iter(by_series)), env=env))
    assert shown["version"] == 1 and len(shown["sha256"]) == 64

    results = _json(run_aiops("detect", "--once", "--format", "json", env=env))
    scored = {series_key(r["metric"], r["labels"]): r for r in results if r["status"] == "ok"}
    assert set(by_series) <= set(scored)
    for key in by_series:
        assert scored[key]["model_version"] == "v1", (key, scored[key])
    others = set(scored) - set(by_series)
    assert all(scored[k]["model_version"].startswith("baseline-") for k in others)
    engine.dispose()


def test_train_stops_while_another_run_holds_the_lock(long_history, tmp_path: Path):
    env = detector_env(
        PROM_URL=long_history,
        AIOPS_DATABASE_URL=f"sqlite:///{tmp_path}/aiops.db",
        AIOPS_TRAIN_HISTORY="1d",
    )
    assert run_aiops("migrate", env=env).returncode == 0
    engine = make_engine(env["AIOPS_DATABASE_URL"])
    lease = Lease(engine, "train").acquire()
    try:
        proc = run_aiops("train", "--series", "checkouts", env=env)
    finally:
        lease.release()
    assert proc.returncode == 3
    (line,) = proc.stderr.strip().splitlines()
    assert "another 'train' run holds the database lock" in line and lease.holder in line
    engine.dispose()
