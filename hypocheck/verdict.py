"""Judge a probe result against a case's expectations: pass, fail or inconclusive."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .cases import Case
from .registry import ProbeResult
from .schema import Verdict


@dataclass(frozen=True)
class CaseVerdict:
    """Everything a report needs about one judged case (JSON-ready via ``to_json``)."""

    id: str
    hypothesis: str
    claim: str
    probe: str
    axes: dict[str, Any]
    verdict: Verdict
    effect_metric: str
    effect: float
    ci: tuple[float, float]
    p: float | None
    seed: int
    metrics: dict[str, float]
    reported: dict[str, float]
    checks: list[dict[str, Any]]
    reason: str
    location: str
    source: dict[str, Any]
    expected: Verdict | None = None
    alpha: float = 0.05
    uses_significance: bool = False
    p_adj: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["ci"] = list(self.ci)
        return _finite_or_none(record)


def _finite_or_none(value: Any) -> Any:
    """NaN/inf → None so the JSON is standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def flat_metrics(result: ProbeResult) -> dict[str, float]:
    """The result's metrics plus ``<metric>_ci_low`` / ``_ci_high`` for every CI."""
    metrics = dict(result.metrics)
    for name, (low, high) in result.cis.items():
        metrics[f"{name}_ci_low"] = low
        metrics[f"{name}_ci_high"] = high
    return metrics


def judge(case: Case, result: ProbeResult) -> CaseVerdict:
    """Evaluate every expectation; any undecidable check or a probe's own reason makes it inconclusive."""
    metrics = flat_metrics(result)
    missing = sorted(set(case.probe.metrics) - set(metrics))
    if missing:
        raise RuntimeError(f"probe {case.probe.name!r} did not report its declared metrics {missing}")
    checks: list[dict[str, Any]] = []
    for exp in case.expectations:
        outcome = exp.evaluate(metrics, case.probe.p, case.hypothesis.alpha)
        checks.append({"expectation": exp.source, "holds": outcome.holds, "detail": outcome.text})
    if result.inconclusive:
        verdict: Verdict = "inconclusive"
        reason = result.inconclusive
    elif any(c["holds"] is None for c in checks):
        verdict = "inconclusive"
        reason = "; ".join(c["detail"] for c in checks if c["holds"] is None)
    elif all(c["holds"] for c in checks):
        verdict = "pass"
        reason = "; ".join(c["detail"] for c in checks)
    else:
        verdict = "fail"
        reason = "; ".join(f"{c['detail']} ✗" for c in checks if not c["holds"])
    effect_name = case.effect_metric
    p = metrics.get(case.probe.p) if case.probe.p else None
    return CaseVerdict(
        id=case.case_id,
        hypothesis=case.hypothesis.id,
        claim=case.hypothesis.claim,
        probe=case.probe.name,
        axes=dict(case.axes),
        verdict=verdict,
        effect_metric=effect_name,
        effect=metrics.get(effect_name, math.nan),
        ci=result.cis.get(effect_name, (math.nan, math.nan)),
        p=p,
        seed=case.seed,
        metrics=metrics,
        reported=dict(case.reported),
        checks=checks,
        reason=reason,
        location=str(case.location),
        source=case.hypothesis.source.model_dump(exclude_none=True),
        expected=case.expected,
        alpha=case.hypothesis.alpha,
        uses_significance=any(e.kind == "significant" for e in case.expectations),
    )
