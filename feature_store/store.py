"""Feature rows and scored anomalies in SQL.

Rows are keyed by the *series key*: the metric name and its kept labels in
Prometheus' own notation (``success_rate{app="api",namespace="shop"}``, labels
sorted), so a key reads like the series it names. Writes are idempotent upserts
on (series, ts): re-running a training window or a cycle rewrites, never doubles.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sqlalchemy import Engine, Table, and_, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from aiops.core.db import retrying
from aiops.core.numbers import finite_or_none
from aiops.core.series import series_key
from feature_store import tables

#: rows per INSERT statement batch (keeps statements within SQLite's variable limit)
BATCH_ROWS = 2000


def _json_safe(v: Any) -> Any:
    """``v`` with NaN and infinities as None: JSON has no such numbers (JSONB refuses them)."""
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    if isinstance(v, float | np.floating):
        return finite_or_none(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


class FeatureArrays(Protocol):
    """What the store reads from the detector's features (``detector.features.Features``):
    arrays of shape (n_series, n_times) and the forest's rows with their column names."""

    ready: np.ndarray
    value: np.ndarray
    baseline: np.ndarray
    scale: np.ndarray

    def names(self) -> tuple[str, ...]: ...

    def matrix(
        self, direction: str = ..., at: tuple[np.ndarray, np.ndarray] | None = ...
    ) -> np.ndarray: ...


BULK_ROWS = 50_000
_FEATURE_UPSERT = {
    dialect: (
        "INSERT INTO aiops_features (series, ts, metric, value, baseline, scale, features)"
        f" VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}{cast})"
        " ON CONFLICT (series, ts) DO UPDATE SET metric = excluded.metric,"
        " value = excluded.value, baseline = excluded.baseline, scale = excluded.scale,"
        " features = excluded.features"
    )
    for dialect, p, cast in (("sqlite", "?", ""), ("postgresql", "%s", "::jsonb"))
}


def _json_rows(names: list[str], matrix: np.ndarray) -> list[str]:
    """One JSON object per row, floats exact (``repr``), NaN and infinities as null."""
    matrix = np.where(np.isfinite(matrix), matrix, np.nan)
    fmt = "{" + ", ".join(f"{json.dumps(n)}: %r" for n in names) + "}"
    out = [fmt % tuple(row) for row in matrix.tolist()]
    return [row.replace(": nan", ": null") if ": nan" in row else row for row in out]


def _nullable(a: np.ndarray) -> list[float | None]:
    """Floats for SQL: NaN and infinities become NULL."""
    out = a.astype(object)
    out[~np.isfinite(a)] = None
    return out.tolist()


def upsert(conn: Any, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE for SQLite and PostgreSQL, in batches."""
    if not rows:
        return
    dialect = conn.engine.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for i in range(0, len(rows), BATCH_ROWS):
        chunk = rows[i : i + BATCH_ROWS]
        stmt = insert(table)
        cols = [c for c in chunk[0] if c not in keys]
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in cols}
        )
        conn.execute(stmt, chunk)


class FeatureStore:
    """Feature rows of THE feature function, and the anomalies the detector scored."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- features -------------------------------------------------------------------------
    @staticmethod
    def feature_rows(
        metric: str,
        labels: list[dict[str, str]],
        times: np.ndarray,
        feats: FeatureArrays,
        direction: str,
        mask: np.ndarray | None = None,
    ) -> list[dict[str, Any]]:
        """Rows for every (series, time) where ``mask`` (default: ``feats.ready``) holds."""
        mask = feats.ready if mask is None else mask & feats.ready
        ii, tt = np.nonzero(mask)
        if len(ii) == 0:
            return []
        names = feats.names()
        matrix = feats.matrix(direction, (ii, tt))
        keys = [series_key(metric, lb) for lb in labels]
        value, baseline, scale = feats.value[ii, tt], feats.baseline[ii, tt], feats.scale[ii, tt]
        rows = []
        for r in range(len(ii)):
            rows.append(
                {
                    "series": keys[ii[r]],
                    "ts": float(times[tt[r]]),
                    "metric": metric,
                    "value": finite_or_none(value[r]),
                    "baseline": finite_or_none(baseline[r]),
                    "scale": finite_or_none(scale[r]),
                    "features": {
                        n: finite_or_none(x) for n, x in zip(names, matrix[r], strict=True)
                    },
                }
            )
        return rows

    def write_rows(self, rows: list[dict[str, Any]]) -> int:
        """Upsert feature rows in one transaction (retried whole if the connection drops)."""

        def work() -> int:
            with self.engine.begin() as conn:
                upsert(conn, tables.features, rows, ("series", "ts"))
            return len(rows)

        return retrying(work, what="feature store")

    def write_features(
        self,
        metric: str,
        labels: list[dict[str, str]],
        times: np.ndarray,
        feats: FeatureArrays,
        direction: str,
        mask: np.ndarray | None = None,
    ) -> int:
        """Upsert the rows ``feature_rows`` would build, in bulk (the training path).

        Millions of rows: the columns are built with numpy and pandas (JSON in C)
        and handed to the driver's ``executemany`` in one transaction.
        """
        mask = feats.ready if mask is None else mask & feats.ready
        ii, tt = np.nonzero(mask)
        if len(ii) == 0:
            return 0
        names = list(feats.names())
        matrix = feats.matrix(direction, (ii, tt))
        features = _json_rows(names, matrix)
        keys = np.array([series_key(metric, lb) for lb in labels], dtype=object)[ii].tolist()
        params = list(
            zip(
                keys,
                times[tt].astype(float).tolist(),
                [metric] * len(ii),
                _nullable(feats.value[ii, tt]),
                _nullable(feats.baseline[ii, tt]),
                _nullable(feats.scale[ii, tt]),
                features,
                strict=True,
            )
        )
        sql = _FEATURE_UPSERT[self.engine.dialect.name]

        def work() -> int:
            with self.engine.begin() as conn:
                for i in range(0, len(params), BULK_ROWS):
                    conn.exec_driver_sql(sql, params[i : i + BULK_ROWS])
            return len(params)

        return retrying(work, what="feature store")

    def read_features(
        self,
        series: str,
        *,
        start: float | None = None,
        end: float | None = None,
        columns: Sequence[str] = (),
    ) -> pd.DataFrame:
        """One series' feature rows in ``[start, end]``: a frame indexed by ``ts``, its
        feature columns in the order of ``columns`` (e.g. ``Features.names()``), any others
        after them by name (PostgreSQL's JSONB keeps no key order)."""
        t = tables.features
        cond = [t.c.series == series]
        if start is not None:
            cond.append(t.c.ts >= start)
        if end is not None:
            cond.append(t.c.ts <= end)
        q = (
            select(t.c.ts, t.c.value, t.c.baseline, t.c.scale, t.c.features)
            .where(and_(*cond))
            .order_by(t.c.ts)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        base = pd.DataFrame(
            [(r.ts, r.value, r.baseline, r.scale) for r in rows],
            columns=["ts", "value", "baseline", "scale"],
        )
        extra = pd.DataFrame([r.features for r in rows])
        rank = {name: i for i, name in enumerate(columns)}
        extra = extra[sorted(extra.columns, key=lambda c: (rank.get(c, len(rank)), c))]
        frame = pd.concat([base, extra], axis=1).set_index("ts")
        return frame.astype(float)

    def prune_features(self, before: float) -> int:
        """Delete feature rows older than ``before`` (Unix seconds)."""
        with self.engine.begin() as conn:
            return conn.execute(
                delete(tables.features).where(tables.features.c.ts < before)
            ).rowcount

    # -- anomalies ------------------------------------------------------------------------
    def record_anomalies(self, results: Iterable[Any]) -> int:
        """Record every anomalous ``SeriesResult`` (idempotent per series and time)."""
        rows = [
            {
                "series": series_key(r.metric, r.labels),
                "metric": r.metric,
                "labels": dict(r.labels),
                "ts": float(r.observed_at),
                "started_at": finite_or_none(r.started_at),
                "score": finite_or_none(r.score),
                "value": finite_or_none(r.value),
                "baseline": finite_or_none(r.baseline),
                "reasons": _json_safe([x.as_dict() for x in r.reasons]),
                "model_version": r.model_version or "",
            }
            for r in results
            if r.anomalous
        ]
        if not rows:
            return 0

        def work() -> int:
            with self.engine.begin() as conn:
                upsert(conn, tables.anomalies, rows, ("series", "ts"))
            return len(rows)

        return retrying(work, what="feature store")

    def anomalies(
        self, *, metric: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        t = tables.anomalies
        q = select(t).order_by(t.c.ts.desc(), t.c.id.desc()).limit(limit)
        if metric is not None:
            q = q.where(t.c.metric == metric)
        if since is not None:
            q = q.where(t.c.ts >= since)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # -- change events (deploys, configuration changes) -----------------------------------
    def record_change(
        self,
        change_id: str,
        *,
        at: float,
        service: str,
        kind: str,
        description: str,
        source: str,
        received_at: float,
    ) -> bool:
        """Store a change once (a replayed id changes nothing); True if it was new."""
        row = {
            "id": change_id,
            "at": float(at),
            "service": service,
            "kind": kind,
            "description": description,
            "source": source,
            "received_at": float(received_at),
        }

        def work() -> bool:
            t = tables.changes
            try:
                with self.engine.begin() as conn:
                    if conn.execute(select(t.c.id).where(t.c.id == change_id)).first():
                        return False
                    conn.execute(t.insert().values(**row))
            except IntegrityError:  # the same id, recorded meanwhile by a replica
                return False
            return True

        return retrying(work, what="feature store")

    def changes(self, *, since: float, limit: int = 1000) -> list[dict[str, Any]]:
        """Changes at or after ``since``, newest first."""
        t = tables.changes
        q = select(t).where(t.c.at >= since).order_by(t.c.at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # -- operators' feedback on anomalies (issue 21) -----------------------------------------
    def episode(self, series: str, started_at: float) -> dict[str, Any] | None:
        """The anomaly of ``series`` that began at ``started_at`` (its recorded rows
        summed up: reasons at their strongest, the peak score, the first value and
        baseline, the feature row at the onset), or None when nothing was recorded."""
        t, f = tables.anomalies, tables.features
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t)
                .where(and_(t.c.series == series, t.c.started_at == float(started_at)))
                .order_by(t.c.ts)
            ).all()
            if not rows:
                return None
            feats = conn.execute(
                select(f.c.features).where(and_(f.c.series == series, f.c.ts == rows[0].ts))
            ).scalar()
        reasons = [x for r in rows for x in (r.reasons or [])]
        scores = [r.score for r in rows if r.score is not None]
        return {
            "series": series,
            "metric": rows[0].metric,
            "labels": dict(rows[0].labels),
            "started_at": float(started_at),
            "reasons": reasons,
            "score": max(scores) if scores else None,
            "value": rows[0].value,
            "baseline": rows[0].baseline,
            "features": feats,
            "ended_at": rows[-1].ts,
        }

    def record_feedback(self, row: dict[str, Any]) -> bool:
        """Store a verdict; a person's second verdict on an anomaly replaces the first.
        True when it replaced one."""
        t = tables.feedback
        mine = and_(
            t.c.series == row["series"],
            t.c.started_at == row["started_at"],
            t.c.actor == row["actor"],
        )
        safe = {
            **row,
            "reasons": _json_safe(row["reasons"]),
            "features": _json_safe(row.get("features")),
        }

        def work() -> bool:
            with self.engine.begin() as conn:
                replaced = conn.execute(t.delete().where(mine)).rowcount > 0
                conn.execute(t.insert().values(**safe))
            return replaced

        return retrying(work, what="feature store")

    def feedback(
        self,
        *,
        since: float | None = None,
        metric: str | None = None,
        verdict: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Verdicts, newest first."""
        t = tables.feedback
        q = select(t).order_by(t.c.given_at.desc(), t.c.id.desc()).limit(limit)
        if since is not None:
            q = q.where(t.c.given_at >= since)
        if metric is not None:
            q = q.where(t.c.metric == metric)
        if verdict is not None:
            q = q.where(t.c.verdict == verdict)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]
