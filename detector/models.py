"""Trained models from the registry, for the live detector, with a safe fallback.

``RegistryModelProvider`` looks at the registry once per cycle (one small query
for the promoted versions, artifacts only for what changed), so a version that
``aiops train`` or ``aiops models promote`` just promoted is in use at the next
cycle, without a restart. Trained forests of one query are packed together
(``PackedForests``) and score every series in one vectorised walk.

A series without a usable trained model is scored by the query's baseline model,
fitted on the lookback (``BaselineModelProvider``): so is a series whose artifact
was refused (checksum, untrusted type, scikit-learn version — see
``feature_store.registry``). A refusal is logged once per version and counted in
``aiops_detector_model_load_failures_total``; an unreachable database keeps the
models already loaded and sets ``aiops_detector_database_up`` to 0.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from aiops.core.redact import short_error
from detector.scoring import BaselineModelProvider, Model, PackedForests

log = logging.getLogger("aiops.models")


@dataclass
class TrainedGroup:
    """Promoted models of one query that take the same feature columns."""

    feature_names: tuple[str, ...]
    index: dict[str, int]  # series key -> forest row in ``pack``
    versions: list[str]
    fitted_at: list[float]
    pack: PackedForests


@dataclass
class _Loaded:
    record_id: int
    sha256: str
    metric: str
    version: str
    fitted_at: float
    feature_names: tuple[str, ...]
    model: object
    #: reason -> the series' own level, learned by the retrain (detector.verdict)
    levels: dict[str, float] = field(default_factory=dict)
    #: the retrain found the weekly profile explains the series better than the daily
    weekly: bool = False


@dataclass
class RegistryState:
    up: bool | None = None
    error: str | None = None
    last_refresh: float | None = None
    failures: dict[str, tuple[int, str, str]] = field(default_factory=dict)


class RegistryModelProvider:
    """Per-series promoted models from the registry; the baseline model for the rest."""

    def __init__(
        self,
        registry: object,
        fallback: BaselineModelProvider,
        *,
        on_failure: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.fallback = fallback
        self.on_failure = on_failure
        self.state = RegistryState()
        self._loaded: dict[str, _Loaded] = {}
        self._groups: dict[str, list[TrainedGroup]] = {}

    # -- the ModelProvider protocol (baseline models) ---------------------------------------
    def model_for(self, query: str, train: np.ndarray, *, now: float) -> Model:
        return self.fallback.model_for(query, train, now=now)

    def reusable(self, query: str, n_features: int, *, now: float) -> Model | None:
        return self.fallback.reusable(query, n_features, now=now)

    def current(self, query: str) -> Model | None:
        return self.fallback.current(query)

    # -- trained models -------------------------------------------------------------------
    def trained(self, query: str) -> list[TrainedGroup]:
        return self._groups.get(query, [])

    def weekly(self, query: str) -> dict[str, bool]:
        """Series key → whether its promoted model was trained on the weekly profile."""
        return {key: m.weekly for key, m in self._loaded.items() if m.metric == query}

    def levels(self, query: str) -> dict[str, dict[str, float]]:
        """Series key → reason → the series' own level its promoted model was trained with
        (``detector.verdict.latest_levels``; only the known ones)."""
        return {key: m.levels for key, m in self._loaded.items() if m.metric == query and m.levels}

    def refresh(self) -> None:
        """Pick up promoted versions that changed since the last call."""
        from feature_store.registry import ModelLoadError

        try:
            records = self.registry.promoted()  # type: ignore[attr-defined]
        except Exception as exc:  # the database is down: keep what is loaded
            msg = short_error(exc)
            if self.state.up is not False:
                log.error("model registry unreachable, keeping loaded models error=%s", msg)
            self.state.up, self.state.error = False, msg
            return
        if self.state.up is False:
            log.info("model registry reachable again")
        self.state.up, self.state.error, self.state.last_refresh = True, None, time.time()
        changed: set[str] = set()
        promoted = {r.series: r for r in records}
        for key in [k for k in self._loaded if k not in promoted]:
            changed.add(self._loaded.pop(key).metric)
            log.info("model unloaded series=%s (no promoted version)", key)
        for key in [k for k in self.state.failures if k not in promoted]:
            del self.state.failures[key]  # its refused version is no longer promoted
        for key, rec in promoted.items():
            have = self._loaded.get(key)
            if have is not None and have.record_id == rec.id and have.sha256 == rec.sha256:
                continue
            failed = self.state.failures.get(key)
            if failed is not None and failed[0] == rec.id:
                continue  # refused before; it stays refused until a new version comes
            try:
                model = self.registry.load(rec)  # type: ignore[attr-defined]
            except ModelLoadError as exc:
                self.state.failures[key] = (rec.id, exc.reason, str(exc))
                log.error(
                    "model refused series=%s version=v%d reason=%s: %s; falling back to the"
                    " baseline model",
                    key,
                    rec.version,
                    exc.reason,
                    exc,
                )
                if self.on_failure:
                    self.on_failure(rec.metric, exc.reason, key)
                if self._loaded.pop(key, None) is not None:
                    changed.add(rec.metric)
                continue
            except Exception as exc:  # database trouble while reading the artifact
                log.error("cannot read model series=%s error=%s", key, exc)
                continue
            self.state.failures.pop(key, None)
            self._loaded[key] = _Loaded(
                rec.id,
                rec.sha256,
                rec.metric,
                rec.tag,
                rec.created_at,  # when it was trained: a rollback does not make it younger
                tuple(rec.feature_names),
                model,
                stored_levels(rec.evaluation),
                bool((rec.evaluation or {}).get("weekly") is True),
            )
            changed.add(rec.metric)
            log.info("model loaded series=%s version=%s", key, rec.tag)
        for metric in changed:
            self._regroup(metric)

    def _regroup(self, metric: str) -> None:
        by_names: dict[tuple[str, ...], list[tuple[str, _Loaded]]] = {}
        for key, m in sorted(self._loaded.items()):
            if m.metric == metric:
                by_names.setdefault(m.feature_names, []).append((key, m))
        groups = []
        for names, members in by_names.items():
            sizes: dict[int, list[tuple[str, _Loaded]]] = {}
            for key, m in members:
                sizes.setdefault(len(m.model.estimators_), []).append((key, m))  # type: ignore[attr-defined]
            for same in sizes.values():
                groups.append(
                    TrainedGroup(
                        feature_names=names,
                        index={key: i for i, (key, _) in enumerate(same)},
                        versions=[m.version for _, m in same],
                        fitted_at=[m.fitted_at for _, m in same],
                        pack=PackedForests([m.model for _, m in same]),  # type: ignore[misc]
                    )
                )
        self._groups[metric] = groups

    def failures(self) -> dict[str, tuple[int, str, str]]:
        return dict(self.state.failures)


def stored_levels(evaluation: dict | None) -> dict[str, float]:
    """Reason → level from a model's evaluation (``levels``; a model trained before they
    were stored has only ``spike_level``, or nothing): the finite ones."""
    ev = evaluation or {}
    raw = ev.get("levels")
    if not isinstance(raw, dict):
        raw = {"spike": ev.get("spike_level")}
    out = {str(r): _finite(v) for r, v in raw.items()}
    return {r: v for r, v in out.items() if math.isfinite(v)}


def _finite(v: object) -> float:
    """A stored number, or NaN for anything else."""
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
    return x if math.isfinite(x) else float("nan")
