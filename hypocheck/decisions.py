"""Every decision of a run, in one place: a case's verdict, the control rule, a claim's result, the pytest
outcome of a case and the exit status of a run (pytest's and ``hypocheck gate``'s).

Reporters never decide: they render the records these functions return (``hypocheck.records``).

**A case's verdict** (:func:`judge`) is final when the case's test item ends: the terminal, the pytest
outcome, the Allure result, the summary and the baseline all show this one. What goes into it:

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

**The control rule** (:func:`with_control_outcomes`): a passing case holds *as strongly* on a control
model when the control passes too with an effect at or above the case's lower CI bound; the case keeps its
verdict and is flagged not specific to training.

**A claim's result** (:func:`claim_result`) follows from its cases by the hypothesis's ``holds_if`` rule.

**Exit status** (:func:`run_problems`): pytest's run fails on a claim that does not hold, a verdict that
differs from the planted truth, an error, drift, or (``--inconclusive-fails``) an inconclusive case;
``hypocheck gate`` counts only defects (errors and planted-truth mismatches), since a failing claim is a
finding.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from .cases import MIN_EFFECT_NAME, REFERENCES_PREFIX, Case
from .expect import upper_p_bounds
from .records import (
    OUTCOMES,
    CaseOutcome,
    CaseVerdict,
    Check,
    ClaimResult,
    ControlOutcome,
    NullSummary,
    PValue,
    ReferenceOutcome,
    RunRecord,
    Stability,
)
from .registry import ProbeResult

# ---------------------------------------------------------------------------------------------- the case


def flat_metrics(result: ProbeResult) -> dict[str, float]:
    """The result's metrics plus ``<metric>_ci_low`` / ``_ci_high`` for every CI."""
    metrics = dict(result.metrics)
    for name, (low, high) in result.cis.items():
        metrics[f"{name}_ci_low"] = low
        metrics[f"{name}_ci_high"] = high
    return metrics


def null_summary(result: ProbeResult) -> NullSummary | None:
    """Mean, SD and number of draws of the result's null distribution (``None`` without finite draws)."""
    if result.null is None:
        return None
    null = np.asarray(result.null, dtype=float).ravel()
    null = null[np.isfinite(null)]
    if null.size == 0:
        return None
    return NullSummary(float(null.mean()), float(null.std(ddof=1)) if null.size > 1 else math.nan,
                       float(null.size), result.null_label)


def metric_kinds(case: Case, names: Iterable[str]) -> dict[str, str]:
    """What each metric is, as the case's probe declares it."""
    return {name: str(case.probe.kind_of(name)) for name in names}


def expectation_names(case: Case, references: Mapping[str, ReferenceOutcome]) -> dict[str, float]:
    """The values of the names an expectation may use besides the probe's metrics: ``min_effect`` and
    ``references.<arm>.<metric>`` (NaN for an arm that did not run or is not applicable: undecidable)."""
    names: dict[str, float] = {}
    floor = case.hypothesis.min_effect if case.hypothesis.min_effect is not None else case.probe.min_effect
    if floor is not None:
        names[MIN_EFFECT_NAME] = float(floor)
    for exp in case.expectations:
        for name in exp.metrics_used():
            if name.startswith(REFERENCES_PREFIX):
                arm, _, metric = name.removeprefix(REFERENCES_PREFIX).partition(".")
                value = references[arm].metrics.get(metric) if arm in references else None
                names[name] = math.nan if value is None else float(value)
    return names


def judge(case: Case, result: ProbeResult, references: Mapping[str, ReferenceOutcome] | None = None) -> CaseVerdict:
    """Evaluate every expectation; any undecidable check or a probe's own reason makes it inconclusive.

    ``references`` are the case's reference arms, already judged: expectations may name their metrics."""
    references = dict(references or {})
    metrics = flat_metrics(result)
    missing = sorted(set(case.probe.metrics) - set(metrics))
    if missing:
        raise RuntimeError(f"probe {case.probe.name!r} did not report its declared metrics {missing}")
    m = case.family_size
    alpha = case.hypothesis.alpha
    p_values: dict[str, PValue] = {}
    checks: list[Check] = []
    unreachable: list[str] = []
    for exp in case.expectations:
        bounds = {k: v for k, v in upper_p_bounds(exp, case.probe.p, alpha).items() if k in case.p_metrics}
        seen = {**metrics, **expectation_names(case, references)}
        for metric, bound in bounds.items():
            raw = metrics.get(metric, math.nan)
            adjusted = min(1.0, raw * m) if math.isfinite(raw) else math.nan
            floor = result.attainable.get(metric)
            p_values[metric] = PValue(raw, adjusted, floor)
            seen[metric] = adjusted
            if floor is not None and min(1.0, floor * m) >= bound:
                unreachable.append(
                    f"{metric} cannot reach {bound:g}: its smallest attainable value is {floor:.3g}"
                    + (f", {min(1.0, floor * m):.3g} corrected for the claim's {m} cases" if m > 1 else "")
                )
        outcome = exp.evaluate(seen, case.probe.p, alpha)
        detail = outcome.text + (f" (corrected ×{m})" if bounds and m > 1 else "")
        checks.append(Check(exp.source, outcome.holds, detail))
    effect_name = case.effect_metric
    ci = result.cis.get(effect_name, (math.nan, math.nan))
    floor_effect = case.min_effect
    notes: list[str] = []
    verdict: CaseOutcome
    if case.margin is not None:
        verdict, reason, rule_check, rule_notes = absence_verdict(case, result, metrics, ci)
        notes += rule_notes + [f"reported, not deciding (a claim of absence is judged on its CI): {c.detail}"
                               for c in checks if not c.holds]
        checks.insert(0, rule_check)
    elif result.inconclusive:
        verdict = "inconclusive"
        reason = result.inconclusive
    elif unreachable:
        verdict, reason = "inconclusive", "; ".join(unreachable)
    elif any(c.holds is None for c in checks):
        verdict = "inconclusive"
        reason = "; ".join(c.detail for c in checks if c.holds is None)
    elif all(c.holds for c in checks):
        verdict = "pass"
        reason = "; ".join(c.detail for c in checks)
        if floor_effect is not None and not (ci[0] >= floor_effect):
            verdict = "fail"
            measured = metrics.get(effect_name, math.nan)
            reason = (f"significant but below the minimum effect: {effect_name} {measured:.3g} "
                      f"95% CI [{ci[0]:.3g}, {ci[1]:.3g}] does not clear {floor_effect:g}")
            checks.append(Check(f"{effect_name} CI above {floor_effect:g}", False, reason))
    else:
        verdict = "fail"
        reason = "; ".join(f"{c.detail} ✗" for c in checks if not c.holds)
    null = null_summary(result)
    kinds = metric_kinds(case, metrics)
    floor_p = result.attainable.get(case.probe.p) if case.probe.p else None
    p_main = metrics.get(case.probe.p, math.nan) if case.probe.p else math.nan
    if null is not None and floor_p is not None and p_main <= floor_p:
        notes.append(f"{case.probe.p} sits at its floor {floor_p:.2g} ({int(null.draws)} null draws), so the data "
                     f"say only {case.probe.p} ≤ {floor_p:.2g}, however far beyond the null the observed value lies")
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
        checks=tuple(checks),
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
        notes=tuple(notes),
        tolerance=case.hypothesis.tolerance.model_dump() if case.hypothesis.tolerance else None,
        metric_kinds=kinds,
        claim_kind="absence" if case.margin is not None else "presence",
        margin=case.margin,
        references=references,
    )


def reference_outcome(verdict: CaseVerdict) -> ReferenceOutcome:
    """A reference arm's judged case, as the model's case records it."""
    return ReferenceOutcome(verdict.verdict, verdict.effect, verdict.ci, verdict.p, dict(verdict.metrics),
                            verdict.reason, dict(verdict.measured))


def not_applicable(reason: str) -> ReferenceOutcome:
    """A reference arm on which the case's inputs cannot exist (its metrics undecidable)."""
    return ReferenceOutcome("not applicable", reason=reason)


def stability_of(samples: Sequence[str], verdicts: Sequence[CaseVerdict]) -> Stability:
    """How many of a case's control samples give its own verdict (the first sample's); fragile when any differs."""
    outcomes = tuple(v.verdict for v in verdicts)
    agree = sum(v == outcomes[0] for v in outcomes)
    return Stability(tuple(samples), outcomes, tuple(v.effect for v in verdicts), agree, agree < len(outcomes))


def with_stability(verdict: CaseVerdict, stability: Stability) -> CaseVerdict:
    """``verdict`` with its stability over control samples, and a note when it is fragile."""
    notes = (*verdict.notes, f"{stability.text}: the verdict depends on which control cells were sampled"
             ) if stability.fragile else tuple(verdict.notes)
    return replace(verdict, stability=stability, notes=notes)


def with_inputs(verdict: CaseVerdict, inputs: object) -> CaseVerdict:
    """``verdict`` with what its inputs say of themselves: how they were computed (notes) and what they measure."""
    notes = [str(n) for n in getattr(inputs, "notes", ())]
    measured = dict(getattr(inputs, "measured", {}) or {})
    if not notes and not measured:
        return verdict
    return replace(verdict, notes=(*verdict.notes, *notes), measured={**verdict.measured, **measured})


def absence_verdict(case: Case, result: ProbeResult, metrics: Mapping[str, float],
                    ci: tuple[float, float]) -> tuple[CaseOutcome, str, Check, list[str]]:
    """A claim of absence, as an equivalence test on the effect's 95% CI and the margin ``m``.

    ``below`` (no effect of ``m`` or more): pass when the CI lies wholly below ``m``, fail when it lies wholly at
    or above it, inconclusive when it straddles it. ``within`` (no difference beyond ± ``m``): pass inside
    (−m, m), fail wholly outside, inconclusive otherwise. The point null's p decides nothing: with many cells a
    negligible effect is always significant, which is said as a note. The probe's own reason (too few members,
    no exchangeable knockdowns) makes the case inconclusive first. Presence uses the same effect, CI and
    floor, so one effect never passes (or fails) both claims.
    """
    name, margin, rule = case.effect_metric, float(case.margin or 0.0), case.probe.absence or "below"
    label = f"{name} 95% CI " + ("within ± " if rule == "within" else "below ") + f"{margin:g}"
    if result.inconclusive:
        return "inconclusive", result.inconclusive, Check(label, None, result.inconclusive), []
    low, high = ci
    if not (math.isfinite(low) and math.isfinite(high)):
        reason = f"{name} has no finite 95% CI, which a claim of absence is judged on"
        return "inconclusive", reason, Check(label, None, reason), []
    shown = f"{name} {metrics.get(name, math.nan):.3g} 95% CI [{low:.3g}, {high:.3g}]"
    verdict: CaseOutcome
    if rule == "within":
        if -margin < low and high < margin:
            verdict, reason = "pass", f"{shown} lies within ± {margin:g}: no difference of {margin:g} or more"
        elif low >= margin or high <= -margin:
            verdict, reason = "fail", f"{shown} lies beyond ± {margin:g}: a difference of at least {margin:g}"
        else:
            verdict, reason = "inconclusive", (f"{shown} reaches past ± {margin:g}: the data cannot tell a "
                                               f"difference of {margin:g} from none")
    elif high < margin:
        verdict, reason = "pass", f"{shown} lies below the margin {margin:g}"
    elif low >= margin:
        verdict, reason = "fail", f"{shown} lies above the margin {margin:g}: the effect is there"
    else:
        verdict, reason = "inconclusive", (f"{shown} straddles the margin {margin:g}: the data cannot tell a "
                                           "relevant effect from a negligible one")
    notes = []
    p_name = case.probe.p
    p = metrics.get(p_name, math.nan) if p_name else math.nan
    if verdict == "pass" and math.isfinite(p) and p < case.hypothesis.alpha:
        notes.append(f"detectable but {'within' if rule == 'within' else 'below'} the margin: {p_name} = {p:.2g} "
                     f"< {case.hypothesis.alpha:g}, yet the whole CI lies {'within ±' if rule == 'within' else 'below'}"
                     f" {margin:g}")
    return verdict, reason, Check(label, {"pass": True, "fail": False}.get(verdict), reason), notes


def case_outcome(verdict: CaseOutcome) -> Literal["passed", "failed", "skipped", "error"]:
    """A case's pytest outcome is its verdict: pass → passed, fail → failed, inconclusive → skipped."""
    return {"pass": "passed", "fail": "failed", "inconclusive": "skipped", "error": "error"}[verdict]  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- controls


def holds_as_strongly(verdict: CaseVerdict, control: CaseVerdict) -> bool:
    """Whether a passing case's claim holds as strongly on a control: the control passes too, with an effect at
    or above the case's lower CI bound (its effect when the CI is undefined)."""
    if verdict.verdict != "pass" or verdict.claim_kind == "absence":  # a control shows absence, as it should
        return False
    low = verdict.ci[0] if verdict.ci[0] is not None and math.isfinite(verdict.ci[0]) else verdict.effect
    return control.verdict == "pass" and control.effect is not None and low is not None and control.effect >= low


def with_control_outcomes(verdict: CaseVerdict, controls: Mapping[str, CaseVerdict]) -> CaseVerdict:
    """``verdict`` with each control's verdict, effect and CI, and the flag when one holds as strongly."""
    if not controls:
        return verdict
    notes = list(verdict.notes)
    specific: bool | None = None
    for kind, judged in controls.items():
        if verdict.verdict != "pass":
            continue
        strong = holds_as_strongly(verdict, judged)
        specific = (specific is not False) and not strong
        if strong:
            notes.append(f"not specific to training: the claim holds as strongly on the {kind} control "
                         f"({verdict.effect_metric} {judged.effect:.3g} vs {verdict.effect:.3g})")
    outcomes = {kind: ControlOutcome(c.verdict, c.effect, c.ci, c.p) for kind, c in controls.items()}
    return replace(verdict, controls=outcomes, specific_to_training=specific, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------- claims


def claim_result(cases: Sequence[CaseVerdict]) -> ClaimResult:
    """All cases must pass by default (``holds_if: all``); ``any`` needs one; a number needs that many.

    Fail when the rule can no longer be met even if every undecided case passed; pass when it is met;
    otherwise error (a case could not run) or inconclusive (the data cannot decide).
    """
    first = cases[0]
    counts = Counter(c.verdict for c in cases)
    n = len(cases)
    rule = first.holds_if
    needed = n if rule == "all" else 1 if rule == "any" else int(rule)
    passed, undecided = counts["pass"], counts["inconclusive"] + counts["error"]
    words = {"all": "all cases must pass", "any": "any one case must pass"}.get(str(rule),
                                                                            f"at least {needed} cases must pass")
    if passed >= needed:
        verdict: CaseOutcome = "pass"
    elif passed + undecided < needed:
        verdict = "fail"
    else:
        verdict = "error" if counts["error"] else "inconclusive"
    tally = ", ".join(f"{counts[k]} {k}" for k in OUTCOMES if counts[k])
    return ClaimResult(first.hypothesis, first.claim, verdict, rule, {k: counts[k] for k in OUTCOMES},
                       tuple(c.id for c in cases), f"{words}: {tally} of {n}")


def claim_results(cases: Iterable[CaseVerdict]) -> list[ClaimResult]:
    """One result per hypothesis (cases of a file that did not load form no claim)."""
    grouped: dict[str, list[CaseVerdict]] = {}
    for case in cases:
        if case.hypothesis:
            grouped.setdefault(case.hypothesis, []).append(case)
    return [claim_result(grouped[h]) for h in sorted(grouped)]


# ---------------------------------------------------------------------------------------------- the run


def run_state(*, interrupted: bool, unfinished: int, narrowed: str | None
              ) -> tuple[Literal["complete", "interrupted", "narrowed"], str]:
    """Whether a run is complete, interrupted (it stopped before every selected case ran) or narrowed (a
    selection of the suite: ``-k``, ``-m``, some files), and why."""
    if interrupted or unfinished:
        return "interrupted", (f"{unfinished} case(s) never finished" if unfinished else "the run was stopped")
    if narrowed:
        return "narrowed", narrowed
    return "complete", ""


# ---------------------------------------------------------------------------------------------- exit status


@dataclass(frozen=True)
class ExitRule:
    """What makes a run's exit status non-zero. pytest's run: everything but inconclusive cases (unless
    ``--inconclusive-fails``); ``hypocheck gate``: defects only (``ExitRule.GATE``)."""

    failed_claims: bool = True
    drift: bool = True
    inconclusive: bool = False


GATE = ExitRule(failed_claims=False, drift=False)


def run_problems(run: RunRecord, rule: ExitRule = ExitRule()) -> list[str]:
    """Why ``run`` ends with a failure status under ``rule``, one line each (empty: it passes)."""
    problems = [f"error: {c.id}" for c in run.cases if c.verdict == "error"]
    problems += [f"verdict differs from the planted truth: {i}" for i in run.mismatches]
    if rule.failed_claims:
        problems += [f"claim {c.verdict}s: {c.hypothesis}" for c in run.claims if c.verdict in {"fail", "error"}]
    if rule.inconclusive:
        problems += [f"inconclusive: {c.id}" for c in run.cases if c.verdict == "inconclusive"]
    if rule.drift and run.drift is not None:
        problems += [f"drift from baseline {run.drift.baseline}: {i}" for i in [*run.drift.cases, *run.drift.gone]]
    return problems

