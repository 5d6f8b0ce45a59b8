"""Regression baselines: save a run's per-case metrics and verdicts, compare a later run against them.

Usage::

    pytest hypotheses --save-baseline v1              # writes baselines/v1.json
    # … a checkpoint changes …
    pytest hypotheses --baseline v1                   # drift → a diff per case, a failing exit status

A baseline is one pretty, key-sorted JSON file per name (reviewable in a pull request): every case's verdict,
metrics and the fingerprints of the checkpoints and data it ran on, and every claim's verdict.

What drifts: a verdict (case or claim) that flips always does, and so does a case that is new or gone. A
metric drifts only beyond its own uncertainty: by default when it moves by more than ``--drift-tolerance``
(0.5) times the width of its 95% CI in the baseline — a metric without a CI of its own is measured against
its case's effect CI, and a p-value from a null distribution against three Monte-Carlo standard errors
(``√(p(1−p)/n)``, ``n`` draws). A hypothesis's ``tolerance: {abs, rel}`` replaces that rule with
``|current − baseline| ≤ abs + rel·|baseline|``; ``--drift-verdicts-only`` compares verdicts alone.
Changed checkpoint fingerprints are reported beside the drift (they explain it; on their own they are not
drift).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .atomic import atomic_write_text
from .formatting import fmt
from .records import CaseVerdict, Drift, DriftEntry, RunRecord

FORMAT = 2
DEFAULT_FRACTION = 0.5
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def baseline_path(directory: Path, name: str) -> Path:
    """``<directory>/<name>.json``; the name must be a plain file name (letters, digits, ``_ . -``)."""
    if not _NAME.match(name):
        raise ValueError(f"baseline name {name!r}: use letters, digits, '_', '.', '-' (no path separators)")
    return directory / f"{name}.json"


def fingerprints(environment: Mapping[str, Any]) -> dict[str, str]:
    """Flat ``{"models/<name>": …, "data": …, "sae": …}`` from a run environment (a model may map to a string)."""
    out: dict[str, str] = {}
    for name, model in sorted((environment.get("models") or {}).items()):
        value = model.get("fingerprint") if isinstance(model, Mapping) else model
        if value is not None:
            out[f"models/{name}"] = str(value)
    for key in ("data", "sae"):
        value = environment.get(key)
        value = value.get("fingerprint") if isinstance(value, Mapping) else value
        if value is not None:
            out[key] = str(value)
    return out


def case_fingerprints(values: Iterable[Any], environment: Mapping[str, Any]) -> dict[str, str]:
    """The fingerprints a case depends on: the models its axis/parameter values name, and the data."""
    named = {f"models/{v}" for v in values if isinstance(v, str)}
    return {k: v for k, v in fingerprints(environment).items() if k in named or k == "data"}


def within_tolerance(current: float | None, base: float | None, abs_tol: float, rel_tol: float) -> bool:
    """``|a − b| ≤ abs + rel·|b|``; undefined (None/NaN) equals only undefined; infinities must match exactly."""
    if current is None or base is None or math.isnan(current) or math.isnan(base):
        return (current is None or math.isnan(current)) == (base is None or math.isnan(base))
    if math.isinf(current) or math.isinf(base):
        return current == base
    return abs(current - base) <= abs_tol + rel_tol * abs(base)


def uncertainty(name: str, case: Mapping[str, Any], kind: str | None = None) -> tuple[float, str] | None:
    """The scale a metric of a baseline case is allowed to move on, and what it is; ``None`` when unknown.

    ``kind`` is the metric's declared kind (``CaseVerdict.metric_kinds``): a p-value from a null distribution
    may move by three Monte-Carlo standard errors.
    """
    metrics = case.get("metrics") or {}
    stem = name.removesuffix("_ci_low").removesuffix("_ci_high")
    low, high = metrics.get(f"{stem}_ci_low"), metrics.get(f"{stem}_ci_high")
    if low is not None and high is not None and high > low:
        return high - low, "its CI width"
    draws = (case.get("null") or {}).get("draws")
    value = metrics.get(name)
    if kind == "p" and draws and value is not None:
        return 3 * math.sqrt(max(value * (1 - value), 1 / draws) / draws) / DEFAULT_FRACTION, "3 Monte-Carlo SEs"
    effect_ci = case.get("ci") or [None, None]
    if effect_ci[0] is not None and effect_ci[1] is not None and effect_ci[1] > effect_ci[0]:
        return effect_ci[1] - effect_ci[0], "the effect's CI width"
    return None


def document(name: str, run: RunRecord, partial: str | None = None) -> dict[str, Any]:
    """The baseline file's content for a finished run."""
    entries = {}
    for case in run.cases:
        entries[case.id] = {
            "nodeid": case.nodeid or case.id,
            "hypothesis": case.hypothesis,
            "verdict": case.verdict,
            "effect_metric": case.effect_metric,
            "ci": list(case.ci),
            "null": case.null.to_json() if case.null is not None else None,
            "metrics": case.metrics,
            "fingerprints": case.fingerprints,
        }
    claims = {c.hypothesis: c.verdict for c in run.claims}
    return {"format": FORMAT, "baseline": name, "fingerprints": fingerprints(run.environment), "cases": entries,
            "claims": claims, "partial": partial}


def save(path: Path, doc: Mapping[str, Any]) -> None:
    """Write the baseline as sorted, indented JSON (atomically)."""
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n")


@dataclass(frozen=True)
class DriftRule:
    """How a run is compared: the CI fraction, an optional fixed tolerance, or verdicts only."""

    fraction: float = DEFAULT_FRACTION
    abs_tol: float | None = None
    rel_tol: float | None = None
    verdicts_only: bool = False

    def allowed(self, name: str, base_case: Mapping[str, Any], kind: str | None = None) -> tuple[float, str]:
        base = (base_case.get("metrics") or {}).get(name)
        if self.abs_tol is not None or self.rel_tol is not None:
            abs_tol, rel_tol = self.abs_tol or 0.0, self.rel_tol or 0.0
            return abs_tol + rel_tol * abs(base or 0.0), "the hypothesis's tolerance"
        scale = uncertainty(name, base_case, kind)
        if scale is None:
            return 1e-6 + 1e-4 * abs(base or 0.0), "no uncertainty known: 1e-6 + 1e-4·|baseline|"
        return self.fraction * scale[0], f"{self.fraction:g} × {scale[1]}"


@dataclass(frozen=True)
class Baseline:
    """A saved baseline: its cases and claims by id and the run's fingerprints."""

    name: str
    path: Path
    cases: dict[str, dict[str, Any]]
    fingerprints: dict[str, str]
    claims: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> Baseline:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ValueError(f"{path}: baseline format {doc.get('format')!r}, expected {FORMAT}: save it again with "
                             "--save-baseline")
        return cls(str(doc["baseline"]), path, dict(doc["cases"]), dict(doc.get("fingerprints") or {}),
                   dict(doc.get("claims") or {}))

    def compare(self, record: CaseVerdict, rule: DriftRule) -> list[DriftEntry]:
        """Drift of one case's record against its baseline entry."""
        base = self.cases.get(record.id)
        if base is None:
            return [DriftEntry("added")]
        entries: list[DriftEntry] = []
        if base["verdict"] != record.verdict:
            entries.append(DriftEntry("verdict", baseline=base["verdict"], current=record.verdict))
        if rule.verdicts_only:
            return entries
        old, new = base.get("metrics") or {}, record.metrics
        for name in sorted(set(old) | set(new)):
            if name not in new or name not in old:
                entries.append(DriftEntry("metric_gone" if name not in new else "metric_added", name,
                                          old.get(name), new.get(name)))
                continue
            allowed, why = rule.allowed(name, base, record.kind_of(name))
            if not within_tolerance(new[name], old[name], allowed, 0.0):
                delta = new[name] - old[name] if old[name] is not None and new[name] is not None else None
                entries.append(DriftEntry("metric", name, old[name], new[name], allowed, why, delta))
        return entries

    def changed_fingerprints(self, current: Mapping[str, str]) -> dict[str, dict[str, str | None]]:
        """Fingerprints that differ from the baseline's: ``{key: {"baseline", "current"}}``."""
        keys = sorted(set(self.fingerprints) | set(current))
        return {k: {"baseline": self.fingerprints.get(k), "current": current.get(k)}
                for k in keys if self.fingerprints.get(k) != current.get(k)}


def rule_for(tolerance: Mapping[str, float] | None, config: Any) -> DriftRule:
    """The drift rule of a case: the hypothesis's ``tolerance`` if it sets one, else the command line's."""
    fraction = config.getoption("--drift-tolerance")
    verdicts_only = bool(config.getoption("--drift-verdicts-only"))
    if tolerance:
        return DriftRule(fraction, tolerance.get("abs"), tolerance.get("rel"), verdicts_only)
    return DriftRule(fraction, verdicts_only=verdicts_only)


def compare_run(baseline: Baseline, run: RunRecord, selected: Callable[[str], bool], config: Any) -> Drift:
    """The run's drift: per case, claims whose verdict flipped, cases gone, changed fingerprints."""
    seen = {c.id for c in run.cases}
    per_case: dict[str, tuple[DriftEntry, ...]] = {}
    for case in run.cases:
        entries = baseline.compare(case, rule_for(case.tolerance, config))
        if entries:
            per_case[case.id] = tuple(entries)
    gone: list[str] = []
    unchecked: list[str] = []
    for case_id, base in sorted(baseline.cases.items()):
        if case_id not in seen:
            (gone if selected(base.get("nodeid", case_id)) else unchecked).append(case_id)
    claims = {c.hypothesis: {"baseline": baseline.claims[c.hypothesis], "current": c.verdict}
              for c in run.claims
              if c.hypothesis in baseline.claims and baseline.claims[c.hypothesis] != c.verdict}
    return Drift(baseline.name, str(baseline.path), baseline.changed_fingerprints(fingerprints(run.environment)),
                 per_case, claims, tuple(gone), tuple(unchecked),
                 {case_id: str(baseline.cases[case_id].get("nodeid", case_id)) for case_id in gone})


def _num(value: Any) -> str:
    return fmt(value, 6, missing="undefined")


def _short(fp: str | None) -> str:
    return "none" if fp is None else fp[:12]


def entry_text(entry: DriftEntry) -> str:
    """One drift entry in words."""
    kind = entry.kind
    if kind == "added":
        return "new case: not in the baseline"
    if kind == "gone":
        return "case gone: in the baseline, not produced by this run"
    if kind == "verdict":
        return f"verdict {entry.baseline} → {entry.current}"
    if kind in {"metric_added", "metric_gone"}:
        what = "new metric" if kind == "metric_added" else "metric no longer reported"
        return f"{what} {entry.name}: {_num(entry.baseline)} → {_num(entry.current)}"
    text = f"{entry.name}: {_num(entry.baseline)} → {_num(entry.current)}"
    if entry.delta is not None:
        text += f" (Δ {entry.delta:+.3g}; allowed ±{entry.allowed:.3g}, {entry.rule or ''})"
    return text


def markdown(drift: Drift) -> str:
    """The ``## Drift`` section appended to summary.md: one line per drifting case."""
    lines = ["", f"## Drift from baseline `{drift.baseline}`", ""]
    if drift.checkpoints:
        lines += ["Changed fingerprints:", ""]
        lines += [f"- `{k}`: `{_short(v['baseline'])}` → `{_short(v['current'])}`"
                  for k, v in drift.checkpoints.items()]
        lines.append("")
    if not drift.count and not drift.claims:
        lines.append("No drift: every case matches the baseline within its uncertainty.")
    for hyp, change in drift.claims.items():
        lines.append(f"- claim `{hyp}`: verdict {change['baseline']} → {change['current']}")
    for case_id, entries in drift.cases.items():
        lines.append(f"- `{case_id}`: " + "; ".join(entry_text(e) for e in entries))
    lines += [f"- `{case_id}`: {entry_text(DriftEntry('gone'))}" for case_id in drift.gone]
    if drift.unchecked:
        lines += ["", f"{len(drift.unchecked)} baseline cases were not selected in this run (not compared)."]
    return "\n".join(lines) + "\n"


def drift_terminal_lines(drift: Drift, shown: int = 3) -> list[str]:
    """One screen: the changed fingerprints, one line per drifting case (its first entries), then the count."""
    out = [f"baseline {drift.baseline!r}: {drift.path}"]
    for key, change in drift.checkpoints.items():
        out.append(f"fingerprint changed  {key}: {_short(change['baseline'])} → {_short(change['current'])}")
    for hyp, claim in drift.claims.items():
        out.append(f"CLAIM  {hyp}: verdict {claim['baseline']} → {claim['current']}")
    for case_id, entries in drift.cases.items():
        more = f"; +{len(entries) - shown} more in summary.md" if len(entries) > shown else ""
        out.append(f"DRIFT  {case_id}: " + "; ".join(entry_text(e) for e in entries[:shown]) + more)
    out += [f"GONE   {case_id}" for case_id in drift.gone]
    if drift.unchecked:
        out.append(f"{len(drift.unchecked)} baseline cases not selected in this run (not compared)")
    verdicts = sum(any(e.kind == "verdict" for e in es) for es in drift.cases.values())
    out.append(f"{drift.count} cases drifted ({verdicts} with a verdict change)" if drift.count else "no drift")
    return out


def baselines_dir(config: pytest.Config) -> Path:
    """Where baselines are kept: ``--baseline-dir``, else ``<rootdir>/baselines``."""
    option = config.getoption("--baseline-dir")
    return (config.invocation_params.dir / option).resolve() if option else Path(config.rootpath) / "baselines"


def partial_note(config: pytest.Config) -> str | None:
    """Why a saved baseline may hold fewer cases than the suite has (-k / -m / a narrower path)."""
    narrowed = [f"-k {config.getoption('keyword')}" if config.getoption("keyword") else "",
                f"-m {config.getoption('markexpr')}" if config.getoption("markexpr") else ""]
    testpaths = [str(p) for p in config.getini("testpaths")]
    args = [str(a) for a in config.args]
    if args and testpaths and sorted(args) != sorted(testpaths):
        narrowed.append("paths " + " ".join(args))
    chosen = [n for n in narrowed if n]
    return "the run was narrowed (" + "; ".join(chosen) + ")" if chosen else None


class BaselineReporter:
    """Reporter: the ``hypocheck drift`` terminal section of a run compared with ``--baseline`` (the drift
    itself is part of the run record), and ``--save-baseline NAME``: the run stored as a baseline."""

    def __init__(self) -> None:
        self.run: RunRecord | None = None
        self.saved: Path | None = None
        self.partial: str | None = None

    def pytest_hypocheck_run_finished(self, config: pytest.Config, run: RunRecord) -> None:
        self.run = run
        name = config.getoption("--save-baseline")
        if name:
            self.saved = baseline_path(baselines_dir(config), name)
            self.partial = partial_note(config)
            save(self.saved, document(name, run, self.partial))

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.run is None:
            return
        if self.run.drift is not None:
            terminalreporter.section("hypocheck drift")
            for line in drift_terminal_lines(self.run.drift):
                terminalreporter.write_line(line)
        if self.saved is not None:
            terminalreporter.write_line(f"baseline saved: {self.saved}")
            if self.partial:
                terminalreporter.write_line(
                    f"note: {self.partial}; the baseline holds only its {len(self.run.cases)} cases", yellow=True)
