"""The verdict on one series at the newest grid point: what a detection cycle hands the
exporter, the notifier and the feature store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiops.core.numbers import finite_or_none
from detector.explain import Reason


@dataclass
class SeriesResult:
    """The verdict on one series at the newest grid point."""

    metric: str
    labels: dict[str, str]
    status: str  # "ok" (scored) or "warming_up" (not enough data to score it yet)
    value: float = float("nan")
    baseline: float = float("nan")
    #: calibrated: the strongest reason over the series' own level for it; >= 1 exactly
    #: while anomalous (``detector.verdict.calibrated_score``)
    score: float = float("nan")
    anomalous: bool = False
    reasons: list[Reason] = field(default_factory=list)
    zscores: dict[str, float] = field(default_factory=dict)
    delta: float = float("nan")
    model_version: str = ""
    observed_at: float = 0.0
    started_at: float | None = None
    model_fitted_at: float | None = None
    scale: float = float("nan")
    features: dict[str, float] = field(default_factory=dict)  # the scored row, by name
    forest_score: float = float("nan")  # the IsolationForest's score, 0..1

    def as_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return finite_or_none(v, 6)

        return {
            "metric": self.metric,
            "labels": self.labels,
            "status": self.status,
            "value": num(self.value),
            "baseline": num(self.baseline),
            "score": num(self.score),
            "forest_score": num(self.forest_score),
            "anomalous": self.anomalous,
            "reasons": [r.as_dict() for r in self.reasons],
            "zscores": {k: num(v) for k, v in self.zscores.items()},
            "delta": num(self.delta),
            "model_version": self.model_version,
            "observed_at": self.observed_at,
            "started_at": self.started_at,
        }
