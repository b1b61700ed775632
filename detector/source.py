"""Reading series from Prometheus onto a regular time grid.

One range query per catalogue entry returns every label set; the samples of all
series are placed on one grid (``start + k * step``) as a 2-D array
``values[series, time]`` with NaN for gaps, so that everything downstream works
on all series of a query at once.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from detector.catalogue import Query
from detector.errors import QueryError
from detector.redact import redact

log = logging.getLogger(__name__)

#: Labels that collide with the exporter's own labels are renamed like Prometheus does.
RESERVED_LABELS = frozenset({"metric", "reason", "window", "version"})


@dataclass
class SeriesBatch:
    """All series of one query on one regular time grid."""

    query: str
    start: float
    step: float
    labels: list[dict[str, str]]
    values: np.ndarray  # shape (n_series, n_points), float64, NaN = no sample
    warnings: list[str] = field(default_factory=list)

    @property
    def timestamps(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.values.shape[1])

    @property
    def end(self) -> float:
        return self.start + self.step * (self.values.shape[1] - 1)

    def __len__(self) -> int:
        return len(self.labels)


def align_end(now: float, step: float) -> float:
    """The last grid point at or before ``now`` (grids are multiples of the step)."""
    return math.floor(now / step) * step


def keep_labels(metric: dict[str, str], keep: tuple[str, ...] | None) -> dict[str, str]:
    """Labels exported for a series: the kept ones, reserved names prefixed ``exported_``."""
    items = metric.items() if keep is None else ((k, metric.get(k, "")) for k in keep)
    out = {}
    for k, v in items:
        if k == "__name__":
            continue
        out[f"exported_{k}" if k in RESERVED_LABELS else k] = v
    return out


def series_key(metric: str, labels: dict[str, str]) -> str:
    """``metric{a="x",b="y"}``: labels sorted, values escaped like Prometheus does.

    The key of a series in the feature store and the model registry.
    """
    if not labels:
        return metric

    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    inner = ",".join(f'{k}="{esc(str(v))}"' for k, v in sorted(labels.items()))
    return f"{metric}{{{inner}}}"


def shard_of(key: str, shards: int) -> int:
    """The replica (0..shards-1) that owns a series: a stable hash of its key."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") % shards


def keep_shard(batch: SeriesBatch, shard: tuple[int, int] | None) -> SeriesBatch:
    """Only the series of ``batch`` that shard ``(i, n)`` owns (all of them without one)."""
    if shard is None or len(batch) == 0:
        return batch
    i, n = shard
    rows = [r for r, lb in enumerate(batch.labels) if shard_of(series_key(batch.query, lb), n) == i]
    return SeriesBatch(
        batch.query,
        batch.start,
        batch.step,
        [batch.labels[r] for r in rows],
        batch.values[rows],
        batch.warnings,
    )


def cap_series(
    batch: SeriesBatch, limit: int, known: Collection[tuple[tuple[str, str], ...]] = ()
) -> tuple[SeriesBatch, int]:
    """At most ``limit`` series of ``batch``, and how many were dropped.

    The series exported before (``known``: sorted label items) are kept first, then the
    others in label order, so a query that suddenly returns many more series keeps the
    gauges it had and the choice is the same at every cycle.
    """
    if len(batch) <= limit:
        return batch, 0
    keys = [tuple(sorted(lb.items())) for lb in batch.labels]
    rows = sorted(range(len(batch)), key=lambda r: (keys[r] not in known, keys[r]))[:limit]
    rows.sort()
    kept = SeriesBatch(
        batch.query,
        batch.start,
        batch.step,
        [batch.labels[r] for r in rows],
        batch.values[rows],
        batch.warnings,
    )
    return kept, len(batch) - limit


def concat_batches(parts: list[SeriesBatch]) -> SeriesBatch:
    """Consecutive batches of one query (same step, each starting where the last ended)
    joined on the union of their series."""
    first = parts[0]
    index: dict[tuple[tuple[str, str], ...], int] = {}
    labels: list[dict[str, str]] = []
    for part in parts:
        for lb in part.labels:
            key = tuple(sorted(lb.items()))
            if key not in index:
                index[key] = len(labels)
                labels.append(lb)
    last = parts[-1]
    n_points = round((last.end - first.start) / first.step) + 1
    values = np.full((len(labels), n_points), np.nan)
    warnings: list[str] = []
    for part in parts:
        col = round((part.start - first.start) / first.step)
        rows = [index[tuple(sorted(lb.items()))] for lb in part.labels]
        if rows:
            values[rows, col : col + part.values.shape[1]] = part.values
        warnings += [w for w in part.warnings if w not in warnings]
    return SeriesBatch(first.query, first.start, first.step, labels, values, warnings)


def counter_to_rate(values: np.ndarray, step: float) -> np.ndarray:
    """Per-second increase of raw counters; a drop is a reset (the new value is the increase)."""
    diff = np.diff(values, axis=1)
    reset = diff < 0
    diff[reset] = values[:, 1:][reset]
    out = np.full_like(values, np.nan)
    out[:, 1:] = diff / step
    return out


def to_batch(
    query: Query, result: list[dict[str, Any]], start: float, step: float, n_points: int
) -> SeriesBatch:
    """Place a Prometheus matrix result on the grid, one row per kept label set."""
    index: dict[tuple[tuple[str, str], ...], int] = {}
    labels: list[dict[str, str]] = []
    series: list[list[Any]] = []
    warnings: list[str] = []
    for item in result:
        kept = keep_labels(item.get("metric", {}), query.labels)
        key = tuple(sorted(kept.items()))
        if key in index:
            warnings.append(
                f"several series share the kept labels {dict(key)}; the first is used"
                " (aggregate them with sum by (...))"
            )
            continue
        samples = item.get("values") or []
        if not samples:
            continue
        index[key] = len(labels)
        labels.append(kept)
        series.append(samples)
    # every sample of every series in two flat arrays: one conversion, one assignment
    try:
        times = np.array([p[0] for s in series for p in s], dtype=np.float64)
        points = np.array([p[1] for s in series for p in s], dtype=np.float64)
    except (IndexError, KeyError):
        raise ValueError("a sample is not a (timestamp, value) pair") from None
    row = np.repeat(np.arange(len(series)), [len(s) for s in series])
    values = np.full((len(labels), n_points), np.nan)
    pos = np.rint((times - start) / step).astype(np.int64)
    ok = (pos >= 0) & (pos < n_points)
    values[row[ok], pos[ok]] = points[ok]
    values[~np.isfinite(values)] = np.nan
    if query.counter and len(labels):
        values = counter_to_rate(values, step)
    return SeriesBatch(query.name, start, step, labels, values, warnings)


class PrometheusSource:
    """Range queries through prometheus-api-client, with token, timeout and retries."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.5,
        compress: bool = False,
    ) -> None:
        # Prometheus gzips an answer only when asked; on a local network its gzip (tens of
        # MB/s) costs more than the bytes it saves: ask for it only when told to.
        headers = {"Accept-Encoding": "gzip" if compress else "identity"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=backoff,
            status_forcelist=(429, 502, 503, 504),
            allowed_methods=frozenset({"GET", "POST"}),
            raise_on_status=False,
        )
        self.url = url
        self.timeout = timeout
        self._prom = PrometheusConnect(
            url=url, headers=headers, disable_ssl=False, retry=retry, timeout=timeout
        )

    def _call(self, query_name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PrometheusApiClientException as exc:
            text = str(exc)
            kind = "bad_query" if "Status Code 4" in text else "server_error"
            raise QueryError(query_name, kind, _short(text)) from None
        except requests.exceptions.Timeout:
            raise QueryError(query_name, "timeout", f"no answer within {self.timeout:g}s") from None
        except requests.exceptions.RetryError as exc:
            raise QueryError(query_name, "server_error", _short(str(exc))) from None
        except requests.exceptions.ConnectionError:
            where = redact(self.url)
            raise QueryError(query_name, "unreachable", f"cannot connect to {where}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise QueryError(query_name, "bad_response", _short(str(exc))) from None

    def fetch(self, query: Query, *, end: float, lookback: float, step: float) -> SeriesBatch:
        """Every series of ``query`` on the grid ``(end - lookback) .. end`` by ``step``."""
        end = align_end(end, step)
        n_points = round(lookback / step) + 1
        return self._range(query, end - step * (n_points - 1), step, n_points)

    def _range(self, query: Query, start: float, step: float, n_points: int) -> SeriesBatch:
        """One range query on the grid ``start + k * step``, k < n_points."""
        end = start + step * (n_points - 1)
        result = self._call(
            query.name,
            self._prom.custom_query_range,
            query.promql,
            start_time=datetime.fromtimestamp(start, tz=timezone.utc),
            end_time=datetime.fromtimestamp(end, tz=timezone.utc),
            step=_step_param(step),
        )
        if not isinstance(result, list):
            raise QueryError(query.name, "bad_response", "expected a matrix result")
        try:
            return to_batch(query, result, start, step, n_points)
        except (ValueError, TypeError, AttributeError) as exc:
            raise QueryError(query.name, "bad_response", _short(str(exc))) from None

    def fetch_range(
        self,
        query: Query,
        *,
        start: float,
        end: float,
        step: float,
        max_points: int = 11000,
        chunk_seconds: float = 86400.0,
    ) -> SeriesBatch:
        """Every series of ``query`` over a long range, split into several range queries.

        Prometheus refuses a range query of more than 11,000 points per series, and
        one huge answer costs memory: each request covers at most ``max_points``
        points and ``chunk_seconds``. Counters (``counter: true``) are converted to
        rates after joining, so no point is lost at a chunk boundary.
        """
        end = align_end(end, step)
        start = math.ceil(start / step) * step
        if end < start:
            raise QueryError(query.name, "bad_query", "the range ends before it starts")
        per = max(1, min(max_points - 1, int(chunk_seconds // step)))
        raw = query.model_copy(update={"counter": False})
        parts = []
        t = start
        while t <= end:
            last = min(t + per * step, end)
            parts.append(self._range(raw, t, step, round((last - t) / step) + 1))
            t = last + step
        batch = concat_batches(parts)
        if query.counter and len(batch):
            batch.values = counter_to_rate(batch.values, step)
        return batch

    def check(self, query: Query) -> None:
        """Validate ``query`` with an instant query; QueryError ``bad_query`` if invalid."""
        self._call(query.name, self._prom.custom_query, query.promql)


def _step_param(step: float) -> str:
    return f"{int(step)}s" if float(step).is_integer() else f"{step:g}s"


def _short(text: str, limit: int = 300) -> str:
    text = redact(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."
