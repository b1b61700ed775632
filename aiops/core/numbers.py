"""Numbers on their way out (JSON, SQL, events): NaN and infinities become None."""

from __future__ import annotations

import math
from typing import Any


def finite_or_none(v: Any, digits: int | None = None) -> float | None:
    """``v`` as a float, or None when it is missing, not a number, NaN or infinite;
    rounded to ``digits`` decimals when given."""
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    return round(x, digits) if digits is not None else x
