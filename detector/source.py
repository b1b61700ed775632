"""Reading series from Prometheus onto a regular time grid.

One range query per catalogue entry returns every label set; the samples of all
series are placed on one grid (``start + k * step``) as a 2-D array
``values[series, time]`` with NaN for gaps, so that everything downstream works
on all series of a query at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import httpx
import ijson
import numpy as np

from aiops.core.errors import QueryError
from aiops.core.redact import redact
from aiops.core.series import label_key, series_key
from detector.catalogue import Query

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
    #: series the source left out over the cap (``Selection.limit``), counted not kept
    dropped: int = 0

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
    keys = [label_key(lb) for lb in batch.labels]
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
            key = label_key(lb)
            if key not in index:
                index[key] = len(labels)
                labels.append(lb)
    last = parts[-1]
    n_points = round((last.end - first.start) / first.step) + 1
    values = np.full((len(labels), n_points), np.nan)
    warnings: list[str] = []
    for part in parts:
        col = round((part.start - first.start) / first.step)
        rows = [index[label_key(lb)] for lb in part.labels]
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


@dataclass
class Selection:
    """Which series of an answer are kept, decided while the answer is read.

    ``limit``: at most that many series (``AIOPS_MAX_SERIES_PER_QUERY``), chosen like
    ``cap_series``: the ``known`` ones (sorted label items, exported before) first, then
    the others in label order; ``shard``: only those replica ``(i, n)`` owns; ``keys``:
    only these label sets (the seasonal slices of the series of the window).
    """

    limit: int | None = None
    known: Collection[tuple[tuple[str, str], ...]] = ()
    shard: tuple[int, int] | None = None
    keys: Collection[tuple[tuple[str, str], ...]] | None = None


class MatrixBuilder:
    """A Prometheus matrix result placed on the grid one series at a time.

    Each series is turned into one row of the grid as it arrives and its samples are
    forgotten; past ``Selection.limit`` the rows of the series that rank last are
    dropped, and once ``limit`` rows rank before a series it is not materialised at
    all (it is only counted). So memory follows the cap, not the answer: at most
    ``2 * limit`` rows are held at any time.
    """

    def __init__(
        self, query: Query, start: float, step: float, n_points: int, select: Selection
    ) -> None:
        self.query = query
        self.start = start
        self.step = step
        self.n_points = n_points
        self.select = select
        self.warnings: list[str] = []
        self.items = 0  # series objects in the answer
        self.distinct = 0  # series with samples and a label set of their own, selected
        self.materialised = 0  # series turned into a row of the grid
        self._seen: set[tuple[tuple[str, str], ...]] = set()
        self._rows: list[tuple[tuple[bool, tuple[tuple[str, str], ...]], int, dict, Any]] = []
        self._cut: tuple[bool, tuple[tuple[str, str], ...]] | None = None

    def add(self, item: Any) -> None:
        """One element of ``data.result``."""
        self.items += 1
        if not isinstance(item, dict):
            raise ValueError("a series is not an object")
        metric = item.get("metric") or {}
        if not isinstance(metric, dict):
            raise ValueError("a series' metric is not an object")
        sel = self.select
        kept = keep_labels(metric, self.query.labels)
        key = label_key(kept)
        if sel.keys is not None and key not in sel.keys:
            return
        if key in self._seen:
            self.warnings.append(
                f"several series share the kept labels {dict(key)}; the first is used"
                " (aggregate them with sum by (...))"
            )
            return
        samples = item.get("values") or []
        if not samples:
            return
        if sel.shard is not None:
            i, n = sel.shard
            if shard_of(series_key(self.query.name, kept), n) != i:
                return
        self._seen.add(key)
        self.distinct += 1
        rank = (key not in sel.known, key)
        limit = sel.limit
        if limit is not None and (limit <= 0 or (self._cut is not None and rank > self._cut)):
            return  # ranks after ``limit`` series already held: dropped unread
        self._rows.append((rank, self.distinct, kept, self._row(samples)))
        self.materialised += 1
        if limit is not None and len(self._rows) >= 2 * limit:
            self._truncate(limit)

    def _truncate(self, limit: int) -> None:
        self._rows.sort(key=lambda r: r[0])
        del self._rows[limit:]
        self._cut = self._rows[-1][0]

    def _row(self, samples: Any) -> np.ndarray:
        try:
            pairs = np.asarray(samples, dtype=np.float64)
        except (ValueError, TypeError):
            raise ValueError("a sample is not a (timestamp, value) pair") from None
        if pairs.ndim != 2 or pairs.shape[1] < 2:
            raise ValueError("a sample is not a (timestamp, value) pair")
        row = np.full(self.n_points, np.nan)
        pos = np.rint((pairs[:, 0] - self.start) / self.step)
        ok = (pos >= 0) & (pos < self.n_points)
        row[pos[ok].astype(np.int64)] = pairs[ok, 1]
        row[~np.isfinite(row)] = np.nan
        return row

    @property
    def dropped(self) -> int:
        """Selected series over the limit."""
        limit = self.select.limit
        return 0 if limit is None else max(self.distinct - max(limit, 0), 0)

    def batch(self) -> SeriesBatch:
        limit = self.select.limit
        if limit is not None and len(self._rows) > limit:
            self._truncate(limit)
        rows = sorted(self._rows, key=lambda r: r[1])  # in the answer's order
        labels = [r[2] for r in rows]
        values = np.stack([r[3] for r in rows]) if rows else np.full((0, self.n_points), np.nan)
        if self.query.counter and len(labels):
            values = counter_to_rate(values, self.step)
        out = SeriesBatch(self.query.name, self.start, self.step, labels, values, self.warnings)
        out.dropped = self.dropped
        return out


def to_batch(
    query: Query,
    result: list[dict[str, Any]],
    start: float,
    step: float,
    n_points: int,
    select: Selection | None = None,
) -> SeriesBatch:
    """Place a Prometheus matrix result on the grid, one row per kept label set."""
    builder = MatrixBuilder(query, start, step, n_points, select or Selection())
    for item in result:
        builder.add(item)
    return builder.batch()


#: Answers Prometheus' clients retry (as the old urllib3 retry policy did).
_RETRY_STATUS = frozenset({429, 502, 503, 504})
#: Bytes of an answer kept to check its shape when it holds no series at all.
_HEAD_BYTES = 1 << 20


class _BadAnswer(Exception):
    """The answer cannot be used (not JSON, cut short, not a matrix)."""


class PrometheusSource:
    """Range and instant queries over Prometheus' HTTP API, with token, timeout, retries.

    A range query's answer is parsed while it is received (``ijson``'s C parser over
    the streamed body), one series at a time into the grid, so the series cap bounds
    memory as well as the gauges (``Selection``).
    """

    #: ``fetch`` takes ``select=`` (the detector passes its cap; test doubles need not)
    selects = True

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
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout), follow_redirects=True
        )
        self._base = url.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Any, *, min_timeout: float = 0.0) -> PrometheusSource:
        """The source every command reads Prometheus with: ``PROM_URL``, ``PROM_TOKEN``,
        ``AIOPS_PROM_TIMEOUT_SECONDS`` (at least ``min_timeout``: history reads are long),
        ``AIOPS_PROM_RETRIES`` and ``AIOPS_PROM_GZIP``."""
        token = settings.prom_token.get_secret_value() if settings.prom_token else None
        return cls(
            settings.prom_url,
            token=token,
            timeout=max(settings.prom_timeout_seconds, min_timeout),
            retries=settings.prom_retries,
            compress=settings.prom_gzip,
        )

    def close(self) -> None:
        self._client.close()

    def _get(self, query_name: str, path: str, params: dict[str, str], read: Any) -> Any:
        """GET ``path``; ``read(response)`` parses a 200 answer. Every failure is a
        QueryError of one kind: unreachable (no connection), timeout (connect or read),
        bad_query (4xx), server_error (5xx, 429), bad_response (not a usable answer)."""
        problem: QueryError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            answered = False
            try:
                with self._client.stream("GET", self._base + path, params=params) as r:
                    answered = True
                    if r.status_code == 200:
                        return read(r)
                    problem = _status_error(query_name, r)
                    if r.status_code not in _RETRY_STATUS:
                        raise problem
            except httpx.TimeoutException:
                problem = QueryError(query_name, "timeout", f"no answer within {self.timeout:g}s")
            except (httpx.DecodingError, _BadAnswer, ijson.JSONError) as exc:
                raise QueryError(query_name, "bad_response", _short(str(exc))) from None
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise QueryError(query_name, "bad_response", _short(str(exc))) from None
            except httpx.RemoteProtocolError as exc:
                if answered:  # the answer was cut short
                    raise QueryError(query_name, "bad_response", _short(str(exc))) from None
                problem = self._unreachable(query_name)
            except (httpx.TransportError, httpx.InvalidURL, httpx.UnsupportedProtocol):
                problem = self._unreachable(query_name)
        assert problem is not None
        raise problem

    def _unreachable(self, query_name: str) -> QueryError:
        return QueryError(query_name, "unreachable", f"cannot connect to {redact(self.url)}")

    def fetch(
        self,
        query: Query,
        *,
        end: float,
        lookback: float,
        step: float,
        select: Selection | None = None,
    ) -> SeriesBatch:
        """Every series of ``query`` on the grid ``(end - lookback) .. end`` by ``step``."""
        end = align_end(end, step)
        n_points = round(lookback / step) + 1
        return self._range(query, end - step * (n_points - 1), step, n_points, select)

    def _range(
        self,
        query: Query,
        start: float,
        step: float,
        n_points: int,
        select: Selection | None = None,
    ) -> SeriesBatch:
        """One range query on the grid ``start + k * step``, k < n_points."""
        end = start + step * (n_points - 1)
        params = {
            "query": query.promql,
            "start": _time_param(start),
            "end": _time_param(end),
            "step": _step_param(step),
        }

        def read(r: httpx.Response) -> SeriesBatch:
            builder = MatrixBuilder(query, start, step, n_points, select or Selection())
            _stream_matrix(r, builder)
            return builder.batch()

        return self._get(query.name, "/api/v1/query_range", params, read)

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

        def read(r: httpx.Response) -> None:
            body = json.loads(r.read())
            if not isinstance(body, dict) or body.get("status") != "success":
                raise _BadAnswer("not a Prometheus answer")

        self._get(query.name, "/api/v1/query", {"query": query.promql}, read)


def _stream_matrix(r: httpx.Response, builder: MatrixBuilder) -> None:
    """Feed the series of a range query's answer to ``builder`` as the body arrives."""
    items = ijson.sendable_list()
    coro = ijson.items_coro(items, "data.result.item", use_float=True)
    head = bytearray()
    for chunk in r.iter_bytes():
        if len(head) <= _HEAD_BYTES:
            head += chunk[: _HEAD_BYTES + 1 - len(head)]
        coro.send(chunk)
        for item in items:
            builder.add(item)
        del items[:]
    coro.close()  # an answer cut short fails here (IncompleteJSONError)
    for item in items:
        builder.add(item)
    if builder.items:
        return
    # no series at all: an empty matrix, or something else that parsed as JSON
    if len(head) > _HEAD_BYTES:
        raise _BadAnswer("a large answer without any series")
    body = json.loads(bytes(head))
    data = body.get("data") if isinstance(body, dict) else None
    if (
        not isinstance(data, dict)
        or body.get("status") != "success"
        or not isinstance(data.get("result"), list)
    ):
        raise _BadAnswer("expected a matrix result")


def _status_error(query_name: str, r: httpx.Response) -> QueryError:
    """The QueryError of a non-200 answer (its body read, at most 64 KB)."""
    body = b""
    for chunk in r.iter_bytes():
        body += chunk
        if len(body) > 65536:
            break
    detail = body[:300].decode("utf-8", "replace")
    with contextlib.suppress(ValueError, AttributeError):
        detail = json.loads(body).get("error") or detail
    kind = "bad_query" if 400 <= r.status_code < 500 and r.status_code != 429 else "server_error"
    return QueryError(query_name, kind, _short(f"HTTP {r.status_code}: {detail}"))


def _time_param(t: float) -> str:
    return f"{int(t)}" if float(t).is_integer() else f"{t:.3f}"


def _step_param(step: float) -> str:
    return f"{int(step)}s" if float(step).is_integer() else f"{step:g}s"


def _short(text: str, limit: int = 300) -> str:
    text = redact(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."
