"""A case's verdict record and the rule that decides it, under their former import path.

The record is :class:`hypocheck.records.CaseVerdict`; the verdict is decided by
:func:`hypocheck.decisions.judge` (where every decision of a run lives).
"""

from __future__ import annotations

from .decisions import flat_metrics, judge
from .records import CaseOutcome, CaseVerdict, error_verdict

__all__ = ["CaseOutcome", "CaseVerdict", "error_verdict", "flat_metrics", "judge"]
