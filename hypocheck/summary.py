"""Run summaries: the run record (claims, the run-wide BH correction), summary.json / summary.md, terminal lines.

Nothing here decides anything: a case's verdict was decided when its item ran and a claim's result follows
from its cases (both in ``hypocheck.decisions``); the Benjamini–Hochberg adjusted p across the whole run is a
separate, reported result. Two reporters render the run record (``hypocheck.records.RunRecord``) on the
``pytest_hypocheck_run_finished`` hook: :class:`TerminalLines` (the ``hypocheck verdicts`` section) and
:class:`SummaryFiles` (summary.json and summary.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from .atomic import atomic_write_text
from .baseline import markdown as drift_markdown
from .decisions import claim_results
from .formatting import fmt, interval
from .records import CaseVerdict, Drift, RunCorrection, RunRecord, RunStatus
from .stats import bh_adjust


def with_run_correction(cases: Sequence[CaseVerdict]) -> list[CaseVerdict]:
    """Each case with its probe's raw p adjusted by Benjamini–Hochberg across the whole run (informational)."""
    with_p = [i for i, c in enumerate(cases) if c.p is not None and math.isfinite(c.p) and c.verdict != "error"]
    adjusted = dict(zip(with_p, bh_adjust([cases[i].p for i in with_p]), strict=True))  # type: ignore[misc]
    return [c.with_run_bh(adjusted.get(i)) for i, c in enumerate(cases)]


def run_correction(cases: Sequence[CaseVerdict], alpha: float = 0.05) -> RunCorrection:
    """How the run's significant case p-values fare under BH across the run: reported, never a verdict."""
    tested = [c for c in cases if c.p is not None and c.p_run_bh is not None]
    raw = [c.id for c in tested if c.p is not None and c.p < alpha]
    after = [c.id for c in tested if c.p_run_bh is not None and c.p_run_bh < alpha]
    return RunCorrection("Benjamini-Hochberg across every case p-value of the run", alpha, len(tested), len(raw),
                         len(after), tuple(sorted(set(raw) - set(after))))


def build_run(cases: Sequence[CaseVerdict], environment: dict[str, Any], drift: Drift | None = None) -> RunRecord:
    """The run record: cases (sorted by id, with their run-wide BH p), claims, environment, correction, drift."""
    cases = with_run_correction(sorted(cases, key=lambda c: c.id))
    return RunRecord(tuple(cases), tuple(claim_results(cases)), environment, run_correction(cases), drift)


def _reported(case: CaseVerdict) -> str:
    return ", ".join(f"{k} {fmt(v)}→{fmt(case.metrics.get(k))}" for k, v in case.reported.items())


def _effect(case: CaseVerdict) -> str:
    if case.verdict == "error":
        return "could not run: " + " ".join(case.reason.split())[:160]
    return f"{case.effect_metric}={fmt(case.effect)} {interval(case.ci)}"


def _p(case: CaseVerdict) -> str:
    if case.p is None:
        return ""
    corrected = f" p_adj={fmt(case.p_adj)}" if case.family_size > 1 else ""
    return f"  p={fmt(case.p)}{corrected}  p_run_bh={fmt(case.p_run_bh)}"


def _truth(case: CaseVerdict) -> str:
    return {"matches": "planted truth: matches", "differs": f"PLANTED TRUTH DIFFERS (expected {case.expected})",
            None: ""}[case.truth]


def references_text(case: CaseVerdict) -> str:
    """The case beside its reference arms: ``model 0.44, data 0.61 (pass), perturb_mean 0.40 (fail)``."""
    if not case.references:
        return ""
    parts = [f"model {fmt(case.effect)}"]
    for arm, ref in case.references.items():
        parts.append(f"{arm} n/a ({ref.reason})" if ref.verdict == "not applicable"
                     else f"{arm} {fmt(ref.effect)} {interval(ref.ci)} ({ref.verdict})")
    return f"{case.effect_metric}: " + ", ".join(parts)


def stability_text(case: CaseVerdict) -> str:
    """``stable: 5 of 5 control samples agree`` / ``FRAGILE: …``; empty when the case ran on one sample."""
    return case.stability.text if case.stability is not None else ""


def measured_text(case: CaseVerdict) -> str:
    """What a case measured, in one line: the provider's account, the null it was compared with, the margin of a
    claim of absence."""
    parts = [f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in case.measured.items()]
    if case.null is not None:
        parts.append(f"null: {case.null.kind}")
    if case.margin is not None:
        parts.append(f"absence margin {case.margin:g}")
    for arm, ref in case.references.items():
        features = ref.measured.get("features")
        if features and features != case.measured.get("features"):
            parts.append(f"{arm} arm: {features}")
    return "; ".join(parts)


def markdown(run: RunRecord) -> str:
    """summary.md: claims, then one row per case, then why, the run correction and the environment."""
    lines = ["# Claim check summary", "",
             "Claims: " + " · ".join(f"**{n}** {k}" for k, n in run.claim_counts.items()),
             "Cases: " + " · ".join(f"**{n}** {k}" for k, n in run.counts.items()), ""]
    truth = run.truth
    if truth["compared"]:
        lines += [f"Planted truth: {truth['matches']} of {truth['compared']} cases match"
                  + (f"; **differs:** {', '.join(truth['differs'])}" if truth["differs"] else ""), ""]
    lines += ["## Claims", "", "| claim | verdict | rule and cases |", "|---|---|---|"]
    lines += [f"| `{c.hypothesis}` | {c.verdict} | {c.reason} |" for c in run.claims]
    lines += ["", "## Cases", "",
              "| verdict | case | effect [95% CI] | beside the data and baselines | stability | p | p (within claim) "
              "| p (BH, run) | reported → measured | truth | what was measured |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in run.cases:
        lines.append(f"| {c.verdict} | `{c.id}` | {_effect(c)} | {references_text(c)} | {stability_text(c)} "
                     f"| {fmt(c.p)} | {fmt(c.p_adj)} | {fmt(c.p_run_bh)} | {_reported(c)} | {_truth(c)} "
                     f"| {measured_text(c)} |")
    why = [(c.id, c.reason) for c in run.cases if c.verdict != "pass"]
    notes = [(c.id, n) for c in run.cases for n in c.notes]
    if why or notes:
        lines += ["", "## Why", ""]
        lines += [f"- `{i}`: {' '.join(str(r).split())}" for i, r in why if r]
        lines += [f"- `{i}` (note): {n}" for i, n in notes]
    corr = run.run_correction
    lines += ["", "## Multiple testing across the run", "",
              f"Each case's p-values are corrected within its claim (the verdicts use them). Across the whole run, "
              f"{corr.method}: {corr.significant_raw} of {corr.tested} case p-values are below "
              f"{corr.alpha:g} raw, {corr.significant_after} after correction."]
    if corr.not_after_correction:
        lines.append("Not significant after the run-wide correction: "
                     + ", ".join(f"`{i}`" for i in corr.not_after_correction))
    if run.environment:
        lines += ["", "## Environment", "", "```json", json.dumps(run.environment, indent=2, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def terminal_lines(run: RunRecord) -> list[str]:
    """One line per case, one per claim, then the counts."""
    out = []
    for c in run.cases:
        line = f"{c.verdict.upper():<12} {c.id}  {_effect(c)}{_p(c)}"
        if c.reported:
            line += f"  reported→measured: {_reported(c)}"
        if c.truth:
            line += f"  ({_truth(c)})"
        out.append(line)
        out += [f"{'':<13}{text}" for text in (references_text(c), stability_text(c)) if text]
        out += [f"{'':<13}note: {n}" for n in c.notes]
    out.append("claims:")
    out += [f"{c.verdict.upper():<12} {c.hypothesis}  {c.reason}" for c in run.claims]
    corr = run.run_correction
    out.append(f"cases: {', '.join(f'{n} {k}' for k, n in run.counts.items())}; "
               f"claims: {', '.join(f'{n} {k}' for k, n in run.claim_counts.items())}; "
               f"BH across the run: {corr.significant_after} of {corr.significant_raw} raw-significant p "
               f"stay below {corr.alpha:g}")
    truth = run.truth
    if truth["compared"]:
        out.append(f"planted truth: {truth['matches']} of {truth['compared']} cases match"
                   + (f", {len(truth['differs'])} differ" if truth["differs"] else ""))
    return out


def write_summary(directory: Path, run: RunRecord) -> None:
    """summary.json and summary.md (with the drift section against a baseline), each written atomically."""
    extra = drift_markdown(run.drift) if run.drift is not None else ""
    atomic_write_text(directory / "summary.json", json.dumps(run.to_json(), indent=2, sort_keys=False) + "\n")
    atomic_write_text(directory / "summary.md", markdown(run) + extra)


def failure_text(verdict: CaseVerdict) -> str:
    """A failing case's pytest message: the claim, the verdict and why, each expectation ✓/✗ with the measured
    values, the paper's figures beside the measured ones, the planted truth, the seed and where it is defined."""
    lines = [f"claim: {verdict.claim}", f"verdict: {verdict.verdict} — {verdict.reason}"]
    for check in verdict.checks:
        mark = {True: "✓", False: "✗", None: "?"}[check.holds]
        lines.append(f"  {mark} {check.detail}")
    for metric, value in verdict.reported.items():
        lines.append(f"  reported {metric} = {value:g}, measured {verdict.metrics.get(metric, float('nan')):.4g}")
    lines += [f"  {text}" for text in (references_text(verdict), stability_text(verdict)) if text]
    if verdict.truth is not None:
        lines.append(f"  planted truth: {verdict.truth} (expected {verdict.expected})")
    lines.append(f"  seed {verdict.seed}; defined at {verdict.location}")
    return "\n".join(lines)


def reports_dir(config: pytest.Config) -> Path:
    """Where summary.json / summary.md go: ``--hypocheck-reports``, else ``<rootdir>/reports``."""
    option = config.getoption("--hypocheck-reports")
    return Path(option) if option else Path(config.rootpath) / "reports"


class TerminalLines:
    """Reporter: the ``hypocheck verdicts`` terminal section, one line per case and claim, then the counts."""

    def __init__(self) -> None:
        self.run: RunRecord | None = None

    def pytest_hypocheck_run_finished(self, config: pytest.Config, run: RunRecord) -> None:
        self.run = run

    @pytest.hookimpl(tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.run is None:
            return
        terminalreporter.section("hypocheck verdicts")
        for line in terminal_lines(self.run):
            terminalreporter.write_line(line)


def last_complete_run(reports: Path) -> str | None:
    """The newest complete run's summary under ``reports/runs/`` (relative to ``reports``), if there is one."""
    for path in sorted((reports / "runs").glob("*/summary.json"), reverse=True):
        try:
            state = json.loads(path.read_text(encoding="utf-8")).get("run", {}).get("state")
        except (OSError, ValueError):
            continue
        if state == "complete":
            return path.relative_to(reports).as_posix()
    return None


class SummaryFiles:
    """Reporter: each run's summary.json and summary.md in its own folder, ``reports/runs/<id>/``, never
    overwritten; ``reports/summary.json`` / ``summary.md`` are the latest run's and say whether it was complete,
    interrupted or narrowed, and where the latest complete run's summary is."""

    def __init__(self) -> None:
        self.written: Path | None = None
        self.status: RunStatus | None = None

    def pytest_hypocheck_run_finished(self, config: pytest.Config, run: RunRecord) -> None:
        root = reports_dir(config)
        if run.status is not None:
            write_summary(root / "runs" / run.status.id, run)
        self.written, self.status = root / "summary.json", run.status
        write_summary(root, run)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.written is None:
            return
        terminalreporter.write_line(f"written: {self.written} and summary.md")
        status = self.status
        if status is not None and status.state != "complete":
            kept = (f"the latest complete run's: {self.written.parent / status.last_complete}"
                    if status.last_complete else "no complete run yet")
            terminalreporter.write_line(f"this run is {status.state} ({status.why}); {kept}", yellow=True)
