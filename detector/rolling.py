"""Trailing medians and maxima of many series at once, equal to pandas' rolling ones.

pandas computes ``DataFrame.rolling(...).median()`` and ``.max()`` column by column:
one Python-level call per series and, for the median, a skiplist costing about 300 ns
per point. The live detector needs them on (series × time) arrays of thousands of
series at every cycle; these functions compute the same numbers (bit for bit: the
median is an order statistic, or the mean of two, and a maximum is exact) in a few
numpy operations per time step, over all series together.

Both take the values ``lag`` columns back, like ``shift(lag)`` before ``rolling``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Below this many series the per-step numpy calls cost more than pandas' loop.
_MIN_SERIES = 32


def trailing_median(a: np.ndarray, lag: int, horizon: int) -> np.ndarray:
    """``pd.DataFrame(a.T).shift(lag).rolling(horizon, min_periods=1).median().to_numpy().T``.

    NaN values are skipped; NaN where a window holds no value.
    """
    a = np.asarray(a, dtype=np.float64)
    n, T = a.shape
    lag = max(int(lag), 0)
    if n < _MIN_SERIES or lag >= T or T - lag > horizon:
        frame = pd.DataFrame(a.T)
        return frame.shift(lag).rolling(horizon, min_periods=1).median().to_numpy().T
    # Every window is a prefix (the horizon is never reached): the median of columns
    # 0..u for u = T-1-lag down to 0. Going backwards it is a deletion-only problem:
    # the values of each row in sorted order form a doubly linked list, the lower
    # median is a node of it, and each deletion moves it at most one node.
    m = T - lag  # prefixes 0..m-1
    vals = a[:, :m]
    finite = np.isfinite(vals)
    order = np.argsort(np.where(finite, vals, np.inf), axis=1, kind="stable")
    rows = np.arange(n)[:, None]
    ranked = vals[rows, order]  # sorted values, non-finite last
    node = np.empty((n, m), dtype=np.int64)  # sorted position (node) of each column
    node[rows, order] = np.arange(m)[None, :]
    count = finite.sum(axis=1)
    # nodes 1..m of a row hold its sorted positions 0..m-1, nodes 0 and m+1 end the list
    # (NaN like the non-finite values, which sit after all finite ones and never move
    # the median); indices are flat over all rows
    width = m + 2
    base = np.arange(n, dtype=np.int64) * width
    prev = (base[:, None] + np.arange(-1, m + 1)[None, :]).reshape(-1)
    nxt = (base[:, None] + np.arange(1, m + 3)[None, :]).reshape(-1)
    value = np.full((n, width), np.nan)
    value[:, 1 : m + 1] = ranked
    value = value.reshape(-1)
    column_node = np.ascontiguousarray((base[:, None] + 1 + node).T)  # [u] -> nodes
    column_gone = np.ascontiguousarray(finite.T)
    lo = base + 1 + np.maximum(count - 1, 0) // 2  # the lower median's node
    med = np.empty((m, n))
    for u in range(m - 1, -1, -1):
        odd = (count & 1).astype(bool)
        up = nxt[lo]
        low = value[lo]
        med[u] = np.where(odd, low, (value[up] + low) / 2)  # NaN once a row is empty
        # delete column u; an odd count's lower median moves one node back unless the
        # deleted value was below it, an even count's one forward unless it was above
        x, gone = column_node[u], column_gone[u]
        back = odd & gone & (x >= lo)
        fwd = ~odd & gone & (x <= lo)
        lo = np.where(back, prev[lo], np.where(fwd, up, lo))
        p, q = prev[x], nxt[x]
        nxt[p] = q
        prev[q] = p
        count = count - gone
    out = np.full((n, T), np.nan)
    out[:, lag:] = med.T
    return out


def trailing_max(a: np.ndarray, lag: int, window: int, min_count: int) -> np.ndarray:
    """``pd.DataFrame(a.T).shift(lag).rolling(window, min_periods=min_count).max()`` (as
    ``a``'s shape) for ``a`` without NaN."""
    a = np.asarray(a, dtype=np.float64)
    n, T = a.shape
    lag = max(int(lag), 0)
    if np.isnan(a).any():
        raise ValueError("trailing_max takes no NaN")
    out = np.full((n, T), np.nan)
    m = T - lag  # columns of ``a`` that enter some window
    if m <= 0:
        return out
    src = a[:, :m]
    if m <= window:
        mx = np.maximum.accumulate(src, axis=1)
    else:
        # van Herk / Gil-Werman: within blocks of ``window`` columns, the running max
        # from the block start (g) and to the block end (h); a full window [s, e] spans
        # at most two blocks: max(h[s], g[e]).
        blocks = -(-m // window)
        padded = np.full((n, blocks * window), -np.inf)
        padded[:, :m] = src
        cube = padded.reshape(n, blocks, window)
        g = np.maximum.accumulate(cube, axis=2).reshape(n, -1)[:, :m]
        h = np.maximum.accumulate(cube[:, :, ::-1], axis=2)[:, :, ::-1].reshape(n, -1)
        mx = np.empty((n, m))
        mx[:, : window - 1] = np.maximum.accumulate(src[:, : window - 1], axis=1)
        mx[:, window - 1 :] = np.maximum(h[:, : m - window + 1], g[:, window - 1 :])
    counts = np.minimum(np.arange(1, m + 1), window)
    out[:, lag:] = np.where(counts[None, :] >= min_count, mx, np.nan)
    return out
