"""The one number formatter every rendering uses: terminal lines, summary.md, Allure, drift, progress.

    >>> fmt(0.123456), fmt(0.123456, 4), fmt(None), fmt(float("nan")), fmt(None, missing="undefined")
    ('0.123', '0.1235', '–', '–', 'undefined')
    >>> interval((0.31, 0.55))
    '[0.31, 0.55]'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MISSING = "–"


def fmt(value: Any, digits: int = 3, missing: str = MISSING) -> str:
    """A number with ``digits`` significant digits; ``missing`` for None, NaN and infinities; other values as text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def interval(ci: Sequence[Any] | None, digits: int = 3) -> str:
    """A confidence interval, ``[low, high]``."""
    low, high = (ci or (None, None))[:2]
    return f"[{fmt(low, digits)}, {fmt(high, digits)}]"
