"""Run summaries: claim-level results, the run-wide BH correction, summary.json / summary.md, terminal lines.

Nothing here changes a case's verdict: it was decided when its item ran (``hypocheck.verdict``). A claim's
result follows from its cases' verdicts by the hypothesis's ``holds_if`` rule; the Benjamini–Hochberg
adjusted p across the whole run is a separate, reported result.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .stats import bh_adjust
from .verdict import CaseOutcome, CaseVerdict

OUTCOMES: tuple[CaseOutcome, ...] = ("pass", "fail", "inconclusive", "error")


@dataclass(frozen=True)
class ClaimResult:
    """One hypothesis's answer, from its cases by its ``holds_if`` rule."""

    hypothesis: str
    claim: str
    verdict: CaseOutcome
    rule: str | int
    counts: dict[str, int]
    cases: list[str]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
                       [c.id for c in cases], f"{words}: {tally} of {n}")


def claim_results(cases: Iterable[CaseVerdict]) -> list[ClaimResult]:
    """One result per hypothesis (cases of a file that did not load form no claim)."""
    grouped: dict[str, list[CaseVerdict]] = {}
    for case in cases:
        if case.hypothesis:
            grouped.setdefault(case.hypothesis, []).append(case)
    return [claim_result(grouped[h]) for h in sorted(grouped)]


def with_run_correction(cases: Sequence[CaseVerdict]) -> list[CaseVerdict]:
    """Each case with its probe's raw p adjusted by Benjamini–Hochberg across the whole run (informational)."""
    with_p = [i for i, c in enumerate(cases) if c.p is not None and math.isfinite(c.p) and c.verdict != "error"]
    adjusted = dict(zip(with_p, bh_adjust([cases[i].p for i in with_p]), strict=True))  # type: ignore[misc]
    return [c.with_run_bh(adjusted.get(i)) for i, c in enumerate(cases)]


def run_correction(cases: Sequence[CaseVerdict], alpha: float = 0.05) -> dict[str, Any]:
    """How the run's significant case p-values fare under BH across the run: reported, never a verdict."""
    tested = [c for c in cases if c.p is not None and c.p_run_bh is not None]
    raw = [c.id for c in tested if c.p is not None and c.p < alpha]
    after = [c.id for c in tested if c.p_run_bh is not None and c.p_run_bh < alpha]
    return {"method": "Benjamini-Hochberg across every case p-value of the run", "alpha": alpha,
            "tested": len(tested), "significant_raw": len(raw), "significant_after": len(after),
            "not_after_correction": sorted(set(raw) - set(after))}


def build_summary(cases: Sequence[CaseVerdict], environment: dict[str, Any]) -> dict[str, Any]:
    """The summary.json document: cases (sorted by id), claims, counts, truth agreement, the run correction."""
    cases = with_run_correction(sorted(cases, key=lambda c: c.id))
    claims = claim_results(cases)
    counts = Counter(c.verdict for c in cases)
    claim_counts = Counter(c.verdict for c in claims)
    truth = [c for c in cases if c.truth is not None]
    return {
        "counts": {k: counts.get(k, 0) for k in OUTCOMES},
        "claim_counts": {k: claim_counts.get(k, 0) for k in OUTCOMES},
        "truth": {"compared": len(truth), "matches": sum(c.truth == "matches" for c in truth),
                  "differs": [c.id for c in truth if c.truth == "differs"]},
        "mismatches": [c.id for c in truth if c.truth == "differs"],
        "run_correction": run_correction(cases),
        "not_specific_to_training": [c.id for c in cases if c.specific_to_training is False],
        "claims": [c.to_json() for c in claims],
        "cases": [c.to_json() for c in cases],
        "environment": environment,
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _ci(case: dict[str, Any]) -> str:
    ci = case.get("ci") or [None, None]
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _reported(case: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_fmt(v)}→{_fmt(case['metrics'].get(k))}" for k, v in (case.get("reported") or {}).items())


def _effect(case: dict[str, Any]) -> str:
    if case["verdict"] == "error":
        return "could not run: " + " ".join(str(case.get("reason", "")).split())[:160]
    return f"{case.get('effect_metric', '')}={_fmt(case.get('effect'))} {_ci(case)}"


def _p(case: dict[str, Any]) -> str:
    if case.get("p") is None:
        return ""
    corrected = f" p_adj={_fmt(case.get('p_adj'))}" if case.get("family_size", 1) > 1 else ""
    return f"  p={_fmt(case.get('p'))}{corrected}  p_run_bh={_fmt(case.get('p_run_bh'))}"


def _truth(case: dict[str, Any]) -> str:
    return {"matches": "planted truth: matches", "differs": f"PLANTED TRUTH DIFFERS (expected {case.get('expected')})",
            None: ""}[case.get("truth")]


def markdown(summary: dict[str, Any]) -> str:
    """summary.md: claims, then one row per case, then why, the run correction and the environment."""
    counts, claim_counts = summary["counts"], summary["claim_counts"]
    lines = ["# Claim check summary", "",
             "Claims: " + " · ".join(f"**{n}** {k}" for k, n in claim_counts.items()),
             "Cases: " + " · ".join(f"**{n}** {k}" for k, n in counts.items()), ""]
    truth = summary["truth"]
    if truth["compared"]:
        lines += [f"Planted truth: {truth['matches']} of {truth['compared']} cases match"
                  + (f"; **differs:** {', '.join(truth['differs'])}" if truth["differs"] else ""), ""]
    lines += ["## Claims", "", "| claim | verdict | rule and cases |", "|---|---|---|"]
    lines += [f"| `{c['hypothesis']}` | {c['verdict']} | {c['reason']} |" for c in summary["claims"]]
    lines += ["", "## Cases", "",
              "| verdict | case | effect [95% CI] | p | p (within claim) | p (BH, run) | reported → measured | truth |",
              "|---|---|---|---|---|---|---|---|"]
    for c in summary["cases"]:
        lines.append(f"| {c['verdict']} | `{c['id']}` | {_effect(c)} | {_fmt(c.get('p'))} | {_fmt(c.get('p_adj'))} "
                     f"| {_fmt(c.get('p_run_bh'))} | {_reported(c)} | {_truth(c)} |")
    why = [(c["id"], c.get("reason", "")) for c in summary["cases"] if c["verdict"] != "pass"]
    notes = [(c["id"], n) for c in summary["cases"] for n in c.get("notes", [])]
    if why or notes:
        lines += ["", "## Why", ""]
        lines += [f"- `{i}`: {' '.join(str(r).split())}" for i, r in why if r]
        lines += [f"- `{i}` (note): {n}" for i, n in notes]
    run = summary["run_correction"]
    lines += ["", "## Multiple testing across the run", "",
              f"Each case's p-values are corrected within its claim (the verdicts use them). Across the whole run, "
              f"{run['method']}: {run['significant_raw']} of {run['tested']} case p-values are below "
              f"{run['alpha']:g} raw, {run['significant_after']} after correction."]
    if run["not_after_correction"]:
        lines.append("Not significant after the run-wide correction: "
                     + ", ".join(f"`{i}`" for i in run["not_after_correction"]))
    env = summary.get("environment", {})
    if env:
        lines += ["", "## Environment", "", "```json", json.dumps(env, indent=2, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def terminal_lines(summary: dict[str, Any]) -> list[str]:
    """One line per case, one per claim, then the counts."""
    out = []
    for c in summary["cases"]:
        line = f"{c['verdict'].upper():<12} {c['id']}  {_effect(c)}{_p(c)}"
        if c.get("reported"):
            line += f"  reported→measured: {_reported(c)}"
        if c.get("truth"):
            line += f"  ({_truth(c)})"
        out.append(line)
        out += [f"{'':<13}note: {n}" for n in c.get("notes", [])]
    out.append("claims:")
    out += [f"{c['verdict'].upper():<12} {c['hypothesis']}  {c['reason']}" for c in summary["claims"]]
    run = summary["run_correction"]
    out.append(f"cases: {', '.join(f'{n} {k}' for k, n in summary['counts'].items())}; "
               f"claims: {', '.join(f'{n} {k}' for k, n in summary['claim_counts'].items())}; "
               f"BH across the run: {run['significant_after']} of {run['significant_raw']} raw-significant p "
               f"stay below {run['alpha']:g}")
    truth = summary["truth"]
    if truth["compared"]:
        out.append(f"planted truth: {truth['matches']} of {truth['compared']} cases match"
                   + (f", {len(truth['differs'])} differ" if truth["differs"] else ""))
    return out


def write_summary(directory: Path, summary: dict[str, Any], extra_markdown: str = "") -> None:
    """summary.json and summary.md, each written atomically."""
    atomic_write_text(directory / "summary.json", json.dumps(summary, indent=2, sort_keys=False) + "\n")
    atomic_write_text(directory / "summary.md", markdown(summary) + extra_markdown)
