"""Series identity: the key of a series in the feature store, the model registry and events."""

from __future__ import annotations

import re


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


#: A series' labels as a hashable, order-free key (``label_key``).
LabelKey = tuple[tuple[str, str], ...]


def label_key(labels: dict[str, str]) -> LabelKey:
    """The labels of a series as a key of a dict or set: sorted (name, value) pairs."""
    return tuple(sorted(labels.items()))


def series_name(query: str, labels: dict[str, str]) -> str:
    """``query/a=x,b=y``: a series' name as a file path (``aiops backtest --query`` names
    its results so, and ``aiops feedback export --format labels`` keys its windows so)."""
    if not labels:
        return f"{query}/series"
    text = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return f"{query}/" + re.sub(r"[^A-Za-z0-9_.,=-]+", "_", text)
