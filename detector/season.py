"""The seasonal history of the live detector: the lookback window one, two, … periods ago.

The live cycle fetches only its lookback (6 h by default), too short to learn a
day. For a seasonal query it also needs, at every point of the window, the values
one, two and three periods (days; and weeks, where a series may take the weekly
profile) before: ``detector.features.past_slices`` of a
long history. ``SeasonalHistory`` fetches exactly those slices from Prometheus —
the window shifted back by ``j`` periods, one step wider on each side for the
neighbours the profile takes — and hands them to the feature function, which then
computes at the newest point what a backtest over the whole history computes.

History does not change, so each slice is cached and the next cycle fetches only
the steps that are new since (one per cycle at the default interval): the seasonal
profiles cost three small range queries per period, query and cycle, not three
lookbacks each.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from aiops.core.errors import QueryError
from aiops.core.series import label_key
from detector.catalogue import Query
from detector.features import NEIGHBOUR_REACH, FeatureSpec
from detector.source import Selection, SeriesBatch

log = logging.getLogger("aiops.detector")

#: Extra steps fetched before the new part of a slice, so a counter's rate has
#: its previous sample (they are not copied: the cache already holds those points).
_OVERLAP = 2


class SeasonalHistory:
    """Past-period slices of each seasonal query's window, cached between cycles."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self._cache: dict[tuple[str, int], SeriesBatch] = {}
        #: the label sets each cached slice was read for (a source that selects reads
        #: only the series of the window, not every series the query returns)
        self._keys: dict[tuple[str, int], frozenset[tuple[tuple[str, str], ...]]] = {}
        self.fetched_points = 0  # grid points requested (for tests and benchmarks)

    def needed(self, spec: FeatureSpec, n_times: int) -> bool:
        """Whether a window of ``n_times`` points needs fetched slices for its profiles."""
        return any(n_times <= p + spec.warmup_points for p in spec.periods)

    def slices(self, query: Query, batch: SeriesBatch, spec: FeatureSpec) -> np.ndarray | None:
        """``past`` for ``compute_features(batch.values, spec, past)``, or None.

        None when the query is not seasonal, when the window itself is long enough,
        or when Prometheus fails to answer (the cycle then scores without the
        profile, and the failure is raised to the caller's log as a warning).
        """
        n, T = batch.values.shape
        if n == 0 or not self.needed(spec, T):
            self.forget(query.name)
            return None
        r = NEIGHBOUR_REACH
        width = T + 2 * r
        cycles = spec.season_cycles
        out = np.full((len(spec.periods) * cycles, n, width), np.nan)
        rows = {label_key(lb): i for i, lb in enumerate(batch.labels)}
        keys = frozenset(rows)
        for k, period in enumerate(spec.periods):
            for j in range(1, cycles + 1):
                lag = j * period  # points back: one slice per lag, cached under it
                start = batch.start - (lag + r) * batch.step
                part = self._slice(query, lag, start, batch.step, width, keys)
                for i, lb in enumerate(part.labels):
                    row = rows.get(label_key(lb))
                    if row is not None:
                        out[k * cycles + j - 1, row] = part.values[i]
        return out

    def forget(self, query: str) -> None:
        for key in [k for k in self._cache if k[0] == query]:
            del self._cache[key]
            self._keys.pop(key, None)

    def _fetch(
        self, query: Query, start: float, step: float, n_points: int, keys: frozenset
    ) -> SeriesBatch:
        self.fetched_points += n_points
        end = start + step * (n_points - 1)
        lookback = step * (n_points - 1)
        if getattr(self.source, "selects", False):
            sel = Selection(keys=keys)
            part = self.source.fetch(query, end=end, lookback=lookback, step=step, select=sel)
        else:
            part = self.source.fetch(query, end=end, lookback=lookback, step=step)
        return _regrid(part, start, step, n_points)

    def _slice(
        self,
        query: Query,
        lag: int,
        start: float,
        step: float,
        width: int,
        keys: frozenset = frozenset(),
    ) -> SeriesBatch:
        """The grid ``start + k·step`` (k < width), from the cache plus what is new."""
        old = self._cache.get((query.name, lag))
        end = start + step * (width - 1)
        selects = getattr(self.source, "selects", False)
        read_for = self._keys.get((query.name, lag), frozenset())
        usable = (
            old is not None
            and (not selects or keys <= read_for)
            and old.step == step
            and round((start - old.start) / step) * step == start - old.start
            and old.start <= start <= old.end < end
        )
        if not usable:
            fresh = self._fetch(query, start, step, width, keys)
            read_for = keys
        else:
            assert old is not None
            new = round((end - old.end) / step)
            tail = self._fetch(query, old.end - _OVERLAP * step, step, new + _OVERLAP + 1, keys)
            fresh = _splice(old, tail, start, step, width)
            read_for = keys
        self._cache[(query.name, lag)] = fresh
        self._keys[(query.name, lag)] = read_for
        return fresh


def _regrid(part: SeriesBatch, start: float, step: float, width: int) -> SeriesBatch:
    """``part`` on exactly the grid ``start + k·step`` (k < width): NaN where it has no
    point, its points outside dropped."""
    if part.values.size and part.step != step:
        raise QueryError(
            part.query, "bad_response", f"asked for step {step:g}s, got {part.step:g}s"
        )
    if part.start == start and part.values.shape[1] == width:
        return part
    values = np.full((len(part.labels), width), np.nan)
    if part.values.size:
        off = round((part.start - start) / step)
        lo, hi = max(off, 0), min(off + part.values.shape[1], width)
        if lo < hi:
            values[:, lo:hi] = part.values[:, lo - off : hi - off]
    return SeriesBatch(part.query, start, step, list(part.labels), values, part.warnings)


def _splice(
    old: SeriesBatch, tail: SeriesBatch, start: float, step: float, width: int
) -> SeriesBatch:
    """The grid from ``start``: ``old``'s points, then ``tail``'s points after ``old.end``."""
    labels: list[dict[str, str]] = []
    index: dict[tuple[tuple[str, str], ...], int] = {}
    for lb in (*old.labels, *tail.labels):
        k = label_key(lb)
        if k not in index:
            index[k] = len(labels)
            labels.append(lb)
    values = np.full((len(labels), width), np.nan)
    keep = round((old.end - start) / step) + 1  # columns of the new grid that ``old`` covers
    shift = round((start - old.start) / step)
    for i, lb in enumerate(old.labels):
        values[index[label_key(lb)], :keep] = old.values[i, shift : shift + keep]
    skip = round((old.end - tail.start) / step) + 1  # tail columns at or before old.end
    for i, lb in enumerate(tail.labels):
        values[index[label_key(lb)], keep:] = tail.values[i, skip : skip + width - keep]
    # series gone from both the cache and the new part fall out of the cache
    alive = np.isfinite(values).any(axis=1)
    return SeriesBatch(
        old.query,
        start,
        step,
        [lb for lb, a in zip(labels, alive, strict=True) if a],
        values[alive],
        [],
    )


def fetch_failed(query: Query, exc: QueryError) -> None:
    log.warning(
        "query=%s seasonal history unavailable kind=%s error=%s: scored without the profile",
        query.name,
        exc.kind,
        exc.message,
    )
