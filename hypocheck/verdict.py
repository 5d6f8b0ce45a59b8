"""Judge a probe result against a case's expectations: pass, fail or inconclusive, decided once.

The verdict is final when the case's test item ends: the terminal, the pytest outcome, the Allure result,
the summary and the baseline all show this one. What goes into it:

- **Multiple testing, within the claim.** A hypothesis tests ``m`` cases; every p-value that a presence
  expectation (``significant``, ``p < 0.05``) uses is corrected for them (Bonferroni: ``min(1, p·m)``), so a
  case's verdict depends on no other case and never changes afterwards. Absence expectations (``p > 0.05``)
  read the raw p, the conservative side for them. The Benjamini–Hochberg adjusted p across the whole run is
  reported beside it (``p_run_bh``), as a separate result that changes no verdict.
- **Attainable significance.** A probe reports the smallest p each test can attain (``1/(n+1)`` for ``n``
  null draws, ``1/C(n, k)`` for an exact rank test); when even that, corrected, cannot reach the threshold,
  the case is *inconclusive*, not a fail.
- **Minimum effect of interest.** A probe's effect metric has a documented floor (overridable with
  ``min_effect:``); a presence claim passes only when the effect's CI clears it: "significant but below the
  minimum effect" is a fail that says so.
- **The planted truth** (``expected:``, demo world) is compared here too: ``truth`` is ``matches`` or
  ``differs``, its own outcome beside the verdict, never folded into it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np

from .cases import Case
from .expect import upper_p_bounds
from .registry import ProbeResult
from .schema import Verdict

CaseOutcome = Literal["pass", "fail", "inconclusive", "error"]


@dataclass(frozen=True)
class CaseVerdict:
    """Everything a report needs about one judged case (JSON-ready via ``to_json``, back via ``from_json``)."""

    id: str
    hypothesis: str
    claim: str
    probe: str
    axes: dict[str, Any]
    verdict: CaseOutcome
    effect_metric: str | None
    effect: float | None
    ci: tuple[float | None, float | None]
    p: float | None
    seed: int | None
    metrics: dict[str, float]
    reported: dict[str, float]
    checks: list[dict[str, Any]]
    reason: str
    location: str
    source: dict[str, Any] = field(default_factory=dict)
    expected: Verdict | None = None
    truth: Literal["matches", "differs"] | None = None
    alpha: float = 0.05
    p_adj: float | None = None
    """The probe's p-value corrected within the hypothesis (what the verdict used), ``None`` without one."""
    family_size: int = 1
    p_values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Every p-value a check used: raw, corrected (``adjusted``) and smallest attainable (``floor``)."""
    null: dict[str, Any] | None = None
    """Mean, SD and number of draws of the null distribution the probe compared against, when it has one."""
    min_effect: float | None = None
    holds_if: str | int = "all"
    notes: list[str] = field(default_factory=list)
    p_run_bh: float | None = None
    """Benjamini–Hochberg adjusted p across the run (set when the run ends; informational)."""
    nodeid: str = ""
    tolerance: dict[str, float] | None = None
    """The hypothesis's fixed drift tolerance, when it sets one."""
    fingerprints: dict[str, str] = field(default_factory=dict)
    """Checkpoints and data this case ran on (baseline runs)."""
    controls: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per control model kind: the same case's verdict, effect, CI and p on that control."""
    specific_to_training: bool | None = None
    """For a passing case with controls: False when it holds as strongly on a control."""

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["ci"] = list(self.ci)
        return _finite_or_none(record)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> CaseVerdict:
        """The typed record back from its JSON form (as xdist workers send it)."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in record.items() if k in known}
        data["ci"] = tuple(data.get("ci") or (None, None))
        return cls(**data)

    def with_run_bh(self, p_run_bh: float | None) -> CaseVerdict:
        return replace(self, p_run_bh=p_run_bh)


def error_verdict(case_id: str, reason: str, location: str, *, hypothesis: str = "", claim: str = "",
                  probe: str = "", axes: dict[str, Any] | None = None, nodeid: str = "",
                  expected: Verdict | None = None, holds_if: str | int = "all") -> CaseVerdict:
    """A case that could not be judged: the probe or model failed, the file did not load, the worker died."""
    return CaseVerdict(
        id=case_id, hypothesis=hypothesis, claim=claim, probe=probe, axes=axes or {}, verdict="error",
        effect_metric=None, effect=None, ci=(None, None), p=None, seed=None, metrics={}, reported={}, checks=[],
        reason=reason, location=location, expected=expected, holds_if=holds_if, nodeid=nodeid,
    )


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


def _null_summary(result: ProbeResult) -> dict[str, Any] | None:
    if result.null is None:
        return None
    null = np.asarray(result.null, dtype=float).ravel()
    null = null[np.isfinite(null)]
    if null.size == 0:
        return None
    return {"mean": float(null.mean()), "sd": float(null.std(ddof=1)) if null.size > 1 else math.nan,
            "draws": float(null.size), "kind": result.null_label}


def judge(case: Case, result: ProbeResult) -> CaseVerdict:
    """Evaluate every expectation; any undecidable check or a probe's own reason makes it inconclusive."""
    metrics = flat_metrics(result)
    missing = sorted(set(case.probe.metrics) - set(metrics))
    if missing:
        raise RuntimeError(f"probe {case.probe.name!r} did not report its declared metrics {missing}")
    m = case.family_size
    alpha = case.hypothesis.alpha
    p_values: dict[str, dict[str, float | None]] = {}
    checks: list[dict[str, Any]] = []
    unreachable: list[str] = []
    for exp in case.expectations:
        bounds = {k: v for k, v in upper_p_bounds(exp, case.probe.p, alpha).items() if k in case.p_metrics}
        seen = dict(metrics)
        for metric, bound in bounds.items():
            raw = metrics.get(metric, math.nan)
            adjusted = min(1.0, raw * m) if math.isfinite(raw) else math.nan
            floor = result.attainable.get(metric)
            p_values[metric] = {"raw": raw, "adjusted": adjusted, "floor": floor}
            seen[metric] = adjusted
            if floor is not None and min(1.0, floor * m) >= bound:
                unreachable.append(
                    f"{metric} cannot reach {bound:g}: its smallest attainable value is {floor:.3g}"
                    + (f", {min(1.0, floor * m):.3g} corrected for the claim's {m} cases" if m > 1 else "")
                )
        outcome = exp.evaluate(seen, case.probe.p, alpha)
        detail = outcome.text + (f" (corrected ×{m})" if bounds and m > 1 else "")
        checks.append({"expectation": exp.source, "holds": outcome.holds, "detail": detail})
    effect_name = case.effect_metric
    ci = result.cis.get(effect_name, (math.nan, math.nan))
    floor_effect = case.min_effect
    notes: list[str] = []
    if result.inconclusive:
        verdict: CaseOutcome = "inconclusive"
        reason = result.inconclusive
    elif unreachable:
        verdict, reason = "inconclusive", "; ".join(unreachable)
    elif any(c["holds"] is None for c in checks):
        verdict = "inconclusive"
        reason = "; ".join(c["detail"] for c in checks if c["holds"] is None)
    elif all(c["holds"] for c in checks):
        verdict = "pass"
        reason = "; ".join(c["detail"] for c in checks)
        if floor_effect is not None and not (ci[0] >= floor_effect):
            verdict = "fail"
            measured = metrics.get(effect_name, math.nan)
            reason = (f"significant but below the minimum effect: {effect_name} {measured:.3g} "
                      f"95% CI [{ci[0]:.3g}, {ci[1]:.3g}] does not clear {floor_effect:g}")
            checks.append({"expectation": f"{effect_name} CI above {floor_effect:g}", "holds": False,
                           "detail": reason})
    else:
        verdict = "fail"
        reason = "; ".join(f"{c['detail']} ✗" for c in checks if not c["holds"])
    null = _null_summary(result)
    if null is not None and case.probe.p:
        floor = result.attainable.get(case.probe.p)
        p_main = metrics.get(case.probe.p, math.nan)
        if floor is not None and p_main <= floor and "z" in metrics:
            notes.append(f"z = {metrics['z']:.3g} is descriptive: the empirical p sits at its floor {floor:.2g} "
                         f"({int(null['draws'])} null draws), so the data say only p ≤ {floor:.2g}")
    if ci[0] is not None and ci[0] == ci[1] and math.isfinite(ci[0]):
        notes.append(f"the 95% CI of {effect_name} has zero width: every resample gave the same value")
    p = metrics.get(case.probe.p) if case.probe.p else None
    p_adj = None if p is None or not math.isfinite(p) else (min(1.0, p * m) if case.probe.p in case.p_metrics else p)
    return CaseVerdict(
        id=case.case_id,
        hypothesis=case.hypothesis.id,
        claim=case.hypothesis.claim,
        probe=case.probe.name,
        axes=dict(case.axes),
        verdict=verdict,
        effect_metric=effect_name,
        effect=metrics.get(effect_name, math.nan),
        ci=ci,
        p=p,
        seed=case.seed,
        metrics=metrics,
        reported=dict(case.reported),
        checks=checks,
        reason=reason,
        location=str(case.location),
        source=case.hypothesis.source.model_dump(exclude_none=True),
        expected=case.expected,
        truth=None if case.expected is None else ("matches" if verdict == case.expected else "differs"),
        alpha=alpha,
        p_adj=p_adj,
        family_size=m,
        p_values=p_values,
        null=null,
        min_effect=floor_effect,
        holds_if=case.hypothesis.holds_if,
        notes=notes,
        tolerance=case.hypothesis.tolerance.model_dump() if case.hypothesis.tolerance else None,
    )
