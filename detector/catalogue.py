"""The query catalogue: which named PromQL queries the detector watches, and how.

A query returns one series per label set. ``direction`` says which way is bad:
a success rate only matters when it drops (``down``), latency when it rises
(``up``); ``both`` watches either way. ``labels`` are the series labels kept on
the exported gauges (``None`` keeps every label but ``__name__``).
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aiops.core.durations import format_duration, parse_duration
from aiops.core.errors import ConfigError
from aiops.core.settings import Settings
from detector.features import DEFAULT_WINDOWS, FeatureSpec
from detector.incidents import Dependencies

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Direction = Literal["up", "down", "both"]


DAY_SECONDS = 86400.0
WEEK_SECONDS = 7 * DAY_SECONDS


class Query(BaseModel):
    """One catalogue entry."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    promql: str = Field(min_length=1)
    direction: Direction = "both"
    labels: tuple[str, ...] | None = None
    #: seasonal period whose profile is removed where it explains the series (adaptive,
    #: per series); unset or "auto": the daily or the weekly profile, whichever explains
    #: the series better where its history holds three weeks; "none" turns it off
    seasonality: Literal["auto", "daily", "weekly", "none"] | None = None
    lookback: str | None = None
    step: str | None = None
    #: the three recent windows compared with the baseline, shortest first (durations);
    #: unset: 5m, 15m, 1h. Shorter windows notice and clear an incident sooner and are noisier
    windows: tuple[str, ...] | None = None
    min_scale: float = Field(0.0, ge=0)
    #: share of training points the trained model calls outliers (IsolationForest
    #: ``contamination``); it also bounds the anomaly rate a candidate may show on
    #: the held-back tail before it is promoted
    contamination: float = Field(0.01, gt=0, le=0.2)
    counter: bool = False
    #: the labels that name a series' service for incident grouping (detector.incidents);
    #: unset: namespace and app
    group_by: tuple[str, ...] | None = None
    #: a demand series (traffic, sessions, sign-ups): a change in it can cause a fault in
    #: the services its service calls, never be the echo of one (detector.incidents)
    demand: bool = False
    description: str = ""

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"name must match [a-zA-Z_][a-zA-Z0-9_]*, got {v!r}")
        return v

    @field_validator("labels", "group_by")
    @classmethod
    def _check_labels(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for label in v or ():
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r}")
        return v

    @field_validator("lookback", "step")
    @classmethod
    def _check_duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @field_validator("windows")
    @classmethod
    def _check_windows(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            if len(v) != len(DEFAULT_WINDOWS):
                raise ValueError(f"three durations, shortest first, are needed; got {list(v)}")
            seconds = [parse_duration(w) for w in v]
            if any(b <= a for a, b in itertools.pairwise(seconds)):
                raise ValueError(f"must grow, shortest first; got {list(v)}")
        return v

    def window_seconds(self) -> tuple[tuple[float, int], ...]:
        """Feature windows: (seconds, at least this many points), as FeatureSpec takes them."""
        if self.windows is None:
            return DEFAULT_WINDOWS
        return tuple(
            (parse_duration(w), points)
            for w, (_, points) in zip(self.windows, DEFAULT_WINDOWS, strict=True)
        )

    def lookback_seconds(self, settings: Settings) -> float:
        return parse_duration(self.lookback or settings.lookback)

    def season_seconds(self) -> float:
        """The seasonal period (seconds; 0: none): daily unless set to weekly or none."""
        return {"none": 0.0, "weekly": WEEK_SECONDS}.get(self.seasonality or "auto", DAY_SECONDS)

    def season_alt_seconds(self) -> float:
        """The period each series may take instead where it explains more (``auto``)."""
        return WEEK_SECONDS if (self.seasonality or "auto") == "auto" else 0.0

    def step_seconds(self, settings: Settings) -> float:
        return parse_duration(self.step or settings.step)


_SLO = ("namespace", "app")

#: The default catalogue: SLOs and business KPIs in the style of the demo workload
#: (request counters by status code, a latency histogram, shop counters).
DEFAULT_QUERIES: tuple[Query, ...] = (
    Query(
        name="success_rate",
        promql=(
            'sum by (namespace, app) (rate(http_requests_total{code!~"5.."}[2m]))'
            " / sum by (namespace, app) (rate(http_requests_total[2m]))"
        ),
        direction="down",
        labels=_SLO,
        min_scale=0.0005,
        description="share of requests answered without a 5xx",
    ),
    Query(
        name="latency_p99",
        promql=(
            "histogram_quantile(0.99, sum by (namespace, app, le)"
            " (rate(http_request_duration_seconds_bucket[2m])))"
        ),
        direction="up",
        labels=_SLO,
        description="99th percentile request latency, seconds",
    ),
    Query(
        name="error_budget_burn",
        promql=(
            'sum by (namespace, app) (rate(http_requests_total{code=~"5.."}[2m]))'
            " / sum by (namespace, app) (rate(http_requests_total[2m])) / (1 - 0.999)"
        ),
        direction="up",
        labels=_SLO,
        min_scale=0.5,
        description="error budget burn rate against a 99.9% SLO (1 = on budget)",
    ),
    Query(
        name="checkouts",
        promql="sum by (namespace, app) (rate(shop_checkouts_completed_total[2m]))",
        direction="down",
        labels=_SLO,
        seasonality="daily",
        description="completed checkouts per second (business KPI)",
    ),
    Query(
        name="revenue",
        promql="sum by (namespace, app) (rate(shop_revenue_euros_total[2m]))",
        direction="down",
        labels=_SLO,
        seasonality="daily",
        description="revenue, euros per second (business KPI)",
    ),
    Query(
        name="sessions",
        promql="sum by (namespace, app) (rate(shop_sessions_started_total[2m]))",
        direction="both",
        labels=_SLO,
        seasonality="daily",
        demand=True,
        description="sessions started per second (business KPI)",
    ),
)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


def _parse_entries(entries: list[Any], source: str) -> list[Query]:
    out: list[Query] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: queries[{i}] must be a mapping with name and promql")
        try:
            out.append(Query(**entry))
        except ValidationError as exc:
            name = entry.get("name", i)
            raise ConfigError(f"{source}: query {name!r}: {_first_error(exc)}") from None
    return out


def parse_metrics(spec: str, catalogue: dict[str, Query]) -> list[Query]:
    """``AIOPS_METRICS``: catalogue names and/or ``name=PromQL`` pairs separated by ``;``."""
    out: list[Query] = []
    for raw in spec.split(";"):
        item = raw.strip()
        if not item:
            continue
        name, eq, promql = item.partition("=")
        name = name.strip()
        if eq:
            if not _NAME.match(name):
                raise ConfigError(f"AIOPS_METRICS: invalid query name {name!r} in {item!r}")
            if not promql.strip():
                raise ConfigError(f"AIOPS_METRICS: query {name!r} has an empty PromQL")
            base = catalogue.get(name)
            if base is not None:
                out.append(base.model_copy(update={"promql": promql.strip()}))
            else:
                out.append(Query(name=name, promql=promql.strip()))
        elif name in catalogue:
            out.append(catalogue[name])
        else:
            known = ", ".join(sorted(catalogue)) or "none"
            raise ConfigError(f"AIOPS_METRICS: unknown query {name!r} (catalogue has: {known})")
    if not out:
        raise ConfigError("AIOPS_METRICS: no query named")
    return out


def resolve_catalogue(settings: Settings) -> list[Query]:
    """The queries to watch: the YAML catalogue or the default one, narrowed by AIOPS_METRICS."""
    if settings.queries is not None:
        if not isinstance(settings.queries, list) or not settings.queries:
            raise ConfigError("AIOPS_CONFIG: queries: must be a non-empty list")
        base = _parse_entries(settings.queries, "AIOPS_CONFIG")
    else:
        base = list(DEFAULT_QUERIES)
    catalogue = {}
    for q in base:
        if q.name in catalogue:
            raise ConfigError(f"AIOPS_CONFIG: query {q.name!r} is defined twice")
        catalogue[q.name] = q
    queries = parse_metrics(settings.metrics, catalogue) if settings.metrics else base
    Dependencies.parse(settings.depends_on)  # a bad map stops the start, naming the entry
    names = [q.name for q in queries]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"AIOPS_METRICS: query {sorted(dupes)[0]!r} named twice")
    for q in queries:
        step, lookback = q.step_seconds(settings), q.lookback_seconds(settings)
        if lookback < 30 * step:
            raise ConfigError(
                f"query {q.name!r}: lookback {lookback:g}s must hold at least 30 steps of {step:g}s"
            )
        points = FeatureSpec(step=step, windows=q.window_seconds()).window_points
        if q.windows is not None and len(points) < len(q.windows):
            raise ConfigError(
                f"query {q.name!r}: windows {list(q.windows)} are not distinct at a step of"
                f" {step:g}s (they become {', '.join(points)}); space them further apart"
            )
        # the warm-up is the longest window plus 20 steps: with less than the longest
        # window plus 30 steps of history the query could never be scored
        longest = max(points.values()) * step
        if lookback < longest + 30 * step:
            setting = "its lookback: in AIOPS_CONFIG" if q.lookback else "AIOPS_LOOKBACK"
            raise ConfigError(
                f"query {q.name!r}: lookback {lookback:g}s must hold the longest window"
                f" ({longest:g}s) and a baseline of at least 30 steps of {step:g}s, or it is"
                f" never scored; raise {setting} to at least"
                f" {format_duration(longest + 30 * step)}"
            )
        if lookback / step > 11000:
            raise ConfigError(
                f"query {q.name!r}: lookback/step = {lookback / step:.0f} points exceeds"
                " Prometheus' 11000 points per series; raise the step"
            )
    return queries
