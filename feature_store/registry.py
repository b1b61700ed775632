"""The model registry: versioned IsolationForest models per series, stored with skops.

Every trained model is a row of ``aiops_models``: the series it belongs to, the
skops artifact and its sha256, the scikit-learn version that wrote it, the
feature names it expects, the training window, the sample count, its evaluation
and its state (``candidate`` → ``promoted`` → ``retired``). At most one version
per series is promoted (a unique index says so).

Artifacts are written with ``skops.io`` and never read with pickle or joblib.
``load_artifact`` refuses, with a ``ModelLoadError`` naming the reason, a blob
whose checksum does not match, one written by another scikit-learn version, one
that is not a skops file (a pickle, say), one holding a type outside the small
allow-list an IsolationForest needs, one that holds anything but a fitted
IsolationForest, and (``ModelRegistry.load``) one whose feature count differs
from the recorded feature names. The caller (the detector) then falls back to
fitting on its baseline window and says so in its metrics.

Saving and promoting happen in one database transaction: a crash in the middle
(kill -9 included) leaves the previous promoted version promoted and loadable.
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any

import sklearn
import skops.io as sio
from sklearn.ensemble import IsolationForest
from sqlalchemy import Engine, and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from aiops.core.db import retrying
from aiops.core.errors import AiopsError
from feature_store import tables

STATES = ("candidate", "promoted", "retired")
#: The only types outside skops' defaults an IsolationForest artifact may contain.
TRUSTED_TYPES = frozenset({"sklearn.tree._tree.Tree"})


class RegistryError(AiopsError):
    """An operator request the registry cannot carry out (unknown version, ...)."""


class ModelLoadError(AiopsError):
    """A model artifact was refused. ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ModelRecord:
    """One version's metadata (the artifact is loaded separately)."""

    id: int
    series: str
    metric: str
    labels: dict[str, str]
    version: int
    state: str
    sha256: str
    sklearn_version: str
    feature_names: list[str]
    params: dict[str, Any]
    train_start: float
    train_end: float
    n_samples: int
    evaluation: dict[str, Any]
    created_at: float
    promoted_at: float | None = None
    note: str | None = None
    size: int | None = field(default=None)

    @property
    def tag(self) -> str:
        """The version as the detector exports it (``model_version``)."""
        return f"v{self.version}"


_META = [c for c in tables.models.c if c.name != "artifact"]


def _record(row: Any) -> ModelRecord:
    m = row._mapping
    return ModelRecord(**{c.name: m[c.name] for c in _META}, size=m.get("size"))


def dump_model(model: IsolationForest) -> bytes:
    """The skops bytes of a fitted model (deflate-compressed: about 5× smaller)."""
    return sio.dumps(model, compression=zipfile.ZIP_DEFLATED)


def load_artifact(blob: bytes, *, sha256: str, sklearn_version: str) -> IsolationForest:
    """Load a stored artifact, or raise ModelLoadError saying why it is refused."""
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise ModelLoadError(
            "checksum",
            f"artifact checksum mismatch (recorded {sha256[:12]}, stored bytes {digest[:12]}):"
            " the artifact was altered",
        )
    if sklearn_version != sklearn.__version__:
        raise ModelLoadError(
            "sklearn_version",
            f"trained with scikit-learn {sklearn_version}, this process runs"
            f" {sklearn.__version__}: retrain (aiops train) to use it",
        )
    try:
        untrusted = set(sio.get_untrusted_types(data=blob))
    except Exception as exc:  # not a zip / not a skops file (a pickle, say)
        raise ModelLoadError(
            "not_skops", f"artifact is not a skops file ({type(exc).__name__}); refused"
        ) from None
    extra = untrusted - TRUSTED_TYPES
    if extra:
        raise ModelLoadError(
            "untrusted_type", f"artifact holds untrusted types {sorted(extra)}; refused"
        )
    try:
        model = sio.loads(blob, trusted=sorted(untrusted))
    except Exception as exc:
        raise ModelLoadError("corrupt", f"artifact cannot be read: {exc}") from None
    if not isinstance(model, IsolationForest):
        raise ModelLoadError(
            "unexpected_type", f"artifact holds a {type(model).__name__}, not an IsolationForest"
        )
    if not hasattr(model, "estimators_"):
        raise ModelLoadError(
            "not_fitted", "artifact holds an IsolationForest that was never fitted"
        )
    return model


class ModelRegistry:
    def __init__(self, engine: Engine, *, keep: int = 5) -> None:
        self.engine = engine
        self.keep = keep

    # -- writing ------------------------------------------------------------------------
    def save(
        self,
        *,
        series: str,
        metric: str,
        labels: dict[str, str],
        feature_names: list[str],
        params: dict[str, Any],
        train_start: float,
        train_end: float,
        n_samples: int,
        evaluation: dict[str, Any],
        promote: bool = False,
        note: str | None = None,
        model: IsolationForest | None = None,
        blob: bytes | None = None,
    ) -> ModelRecord:
        """Store a new version (the next number for ``series``); promote it in the same
        transaction when ``promote``. Older versions beyond ``keep`` are pruned."""
        if blob is None:
            if model is None:
                raise ValueError("save needs the model or its skops bytes (blob=)")
            blob = dump_model(model)
        digest = hashlib.sha256(blob).hexdigest()
        t = tables.models

        def work() -> int:
            with self.engine.begin() as conn:
                now = time.time()
                current = conn.execute(
                    select(func.max(t.c.version)).where(t.c.series == series)
                ).scalar()
                version = (current or 0) + 1
                if promote:
                    conn.execute(
                        update(t)
                        .where(and_(t.c.series == series, t.c.state == "promoted"))
                        .values(state="retired")
                    )
                conn.execute(
                    t.insert().values(
                        series=series,
                        metric=metric,
                        labels=dict(labels),
                        version=version,
                        state="promoted" if promote else "candidate",
                        artifact=blob,
                        sha256=digest,
                        sklearn_version=sklearn.__version__,
                        feature_names=list(feature_names),
                        params=params,
                        train_start=float(train_start),
                        train_end=float(train_end),
                        n_samples=int(n_samples),
                        evaluation=evaluation,
                        created_at=now,
                        promoted_at=now if promote else None,
                        note=note,
                    )
                )
                self._prune(conn, series)
                return version

        for attempt in range(5):
            try:
                version = retrying(work, what="model registry")
                break
            except IntegrityError:  # a concurrent writer took the same number: take the next
                if attempt == 4:
                    raise
        return self.get(series, version)

    def promote(self, series: str, version: int, *, note: str | None = None) -> ModelRecord:
        """Make ``version`` the promoted one (the current one is retired), atomically."""
        t = tables.models
        with self.engine.begin() as conn:
            row = conn.execute(
                select(t.c.state).where(and_(t.c.series == series, t.c.version == version))
            ).one_or_none()
            if row is None:
                raise RegistryError(f"no version {version} of {series}")
            if row.state != "promoted":
                conn.execute(
                    update(t)
                    .where(and_(t.c.series == series, t.c.state == "promoted"))
                    .values(state="retired")
                )
                values: dict[str, Any] = {"state": "promoted", "promoted_at": time.time()}
                if note:
                    values["note"] = note
                conn.execute(
                    update(t)
                    .where(and_(t.c.series == series, t.c.version == version))
                    .values(**values)
                )
        return self.get(series, version)

    def rollback(self, series: str) -> ModelRecord:
        """Promote again the version promoted before the current one."""
        t = tables.models
        with self.engine.connect() as conn:
            current = conn.execute(
                select(t.c.version).where(and_(t.c.series == series, t.c.state == "promoted"))
            ).scalar()
            if current is None:
                raise RegistryError(f"{series} has no promoted version to roll back from")
            previous = conn.execute(
                select(t.c.version)
                .where(
                    and_(
                        t.c.series == series,
                        t.c.state == "retired",
                        t.c.promoted_at.is_not(None),
                        t.c.version != current,
                    )
                )
                .order_by(t.c.promoted_at.desc())
                .limit(1)
            ).scalar()
        if previous is None:
            raise RegistryError(f"{series} has no earlier promoted version (current: v{current})")
        return self.promote(series, previous, note=f"rollback from v{current}")

    def _prune(self, conn: Any, series: str) -> None:
        """Delete versions beyond the newest ``keep`` (never the promoted one)."""
        t = tables.models
        versions = conn.execute(
            select(t.c.version, t.c.state).where(t.c.series == series).order_by(t.c.version.desc())
        ).all()
        old = [v for v, state in versions[self.keep :] if state != "promoted"]
        if old:
            conn.execute(delete(t).where(and_(t.c.series == series, t.c.version.in_(old))))

    # -- reading ------------------------------------------------------------------------
    def list(
        self,
        *,
        metric: str | None = None,
        series: str | None = None,
        state: str | None = None,
    ) -> list[ModelRecord]:
        t = tables.models
        q = select(*_META, func.length(t.c.artifact).label("size")).order_by(
            t.c.series, t.c.version.desc()
        )
        if metric:
            q = q.where(t.c.metric == metric)
        if series:
            q = q.where(t.c.series == series)
        if state:
            q = q.where(t.c.state == state)
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(q)]

    def get(self, series: str, version: int | None = None) -> ModelRecord:
        """One version (default: the promoted one)."""
        t = tables.models
        q = select(*_META, func.length(t.c.artifact).label("size")).where(t.c.series == series)
        q = q.where(t.c.state == "promoted") if version is None else q.where(t.c.version == version)
        with self.engine.connect() as conn:
            row = conn.execute(q).one_or_none()
        if row is None:
            what = "promoted version" if version is None else f"version {version}"
            raise RegistryError(f"no {what} of {series}")
        return _record(row)

    def promoted(self, *, metric: str | None = None) -> list[ModelRecord]:
        return self.list(metric=metric, state="promoted")

    def load(self, record: ModelRecord) -> IsolationForest:
        """The record's model; ModelLoadError if its artifact is refused."""
        t = tables.models
        with self.engine.connect() as conn:
            blob = conn.execute(select(t.c.artifact).where(t.c.id == record.id)).scalar()
        if blob is None:
            raise ModelLoadError("missing", f"{record.series} v{record.version} has no artifact")
        model = load_artifact(
            bytes(blob), sha256=record.sha256, sklearn_version=record.sklearn_version
        )
        if model.n_features_in_ != len(record.feature_names):
            raise ModelLoadError(
                "feature_mismatch",
                f"{record.series} v{record.version} was fitted on {model.n_features_in_}"
                f" features but records {len(record.feature_names)} feature names",
            )
        return model
