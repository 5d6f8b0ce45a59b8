"""Regression baselines: save a run's per-case metrics and verdicts, compare a later run against them.

Usage::

    pytest hypotheses --save-baseline v1              # writes baselines/v1.json
    # … a checkpoint changes …
    pytest hypotheses --baseline v1                   # drift → failing cases with a diff

A baseline is one pretty, key-sorted JSON file per name (reviewable in a pull
request): every case's verdict, metrics and the fingerprints of the
checkpoints and data it ran on. A metric *drifts* when
``|current − baseline| > abs + rel·|baseline|`` with the hypothesis's
``tolerance: {abs, rel}``; a verdict that flips, a case that is new or gone,
or a metric that appears or disappears is drift too. Changed checkpoint
fingerprints are reported beside the drift (they explain it; on their own they
are not drift).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .summary import atomic_write_text

FORMAT = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
Entry = dict[str, Any]


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


def document(name: str, cases: list[dict[str, Any]], environment: Mapping[str, Any],
             judged: Mapping[str, str]) -> dict[str, Any]:
    """The baseline file's content for a finished run (``judged``: each case's verdict before run-level BH)."""
    entries = {}
    for case in cases:
        entries[case["id"]] = {
            "nodeid": case.get("nodeid", case["id"]),
            "hypothesis": case.get("hypothesis"),
            "verdict": case["verdict"],
            "judged": judged.get(case["id"], case["verdict"]),
            "effect_metric": case.get("effect_metric"),
            "metrics": case.get("metrics") or {},
            "fingerprints": case.get("fingerprints") or {},
        }
    return {"format": FORMAT, "baseline": name, "fingerprints": fingerprints(environment), "cases": entries}


def save(path: Path, doc: Mapping[str, Any]) -> None:
    """Write the baseline as sorted, indented JSON (atomically)."""
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n")


@dataclass(frozen=True)
class Baseline:
    """A saved baseline: its cases by id and the run's fingerprints."""

    name: str
    path: Path
    cases: dict[str, dict[str, Any]]
    fingerprints: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> Baseline:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ValueError(f"{path}: baseline format {doc.get('format')!r}, expected {FORMAT}")
        return cls(str(doc["baseline"]), path, dict(doc["cases"]), dict(doc.get("fingerprints") or {}))

    def compare(self, record: Mapping[str, Any], abs_tol: float, rel_tol: float) -> list[Entry]:
        """Drift of one case's record (as judged, before BH) against its baseline entry."""
        base = self.cases.get(record["id"])
        if base is None:
            return [{"kind": "added"}]
        entries: list[Entry] = []
        before = base.get("judged", base["verdict"])
        if before != record["verdict"]:
            entries.append({"kind": "verdict", "baseline": before, "current": record["verdict"]})
        old, new = base.get("metrics") or {}, record.get("metrics") or {}
        for name in sorted(set(old) | set(new)):
            if name not in new or name not in old:
                entries.append({"kind": "metric_gone" if name not in new else "metric_added", "name": name,
                                "baseline": old.get(name), "current": new.get(name)})
            elif not within_tolerance(new[name], old[name], abs_tol, rel_tol):
                entry: Entry = {"kind": "metric", "name": name, "baseline": old[name], "current": new[name],
                                "allowed": abs_tol + rel_tol * abs(old[name]) if old[name] is not None else None}
                if old[name] is not None and new[name] is not None:
                    entry["delta"] = new[name] - old[name]
                entries.append(entry)
        return entries

    def changed_fingerprints(self, current: Mapping[str, str]) -> dict[str, dict[str, str | None]]:
        """Fingerprints that differ from the baseline's: ``{key: {"baseline", "current"}}``."""
        keys = sorted(set(self.fingerprints) | set(current))
        return {k: {"baseline": self.fingerprints.get(k), "current": current.get(k)}
                for k in keys if self.fingerprints.get(k) != current.get(k)}


def _num(value: Any) -> str:
    return "undefined" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def _short(fp: str | None) -> str:
    return "none" if fp is None else fp[:12]


def entry_text(entry: Entry) -> str:
    """One drift entry in words."""
    kind = entry["kind"]
    if kind == "added":
        return "new case: not in the baseline"
    if kind == "gone":
        return "case gone: in the baseline, not produced by this run"
    if kind == "verdict":
        return f"verdict {entry['baseline']} → {entry['current']}"
    if kind == "verdict_after_bh":
        return f"verdict after BH across the run {entry['baseline']} → {entry['current']}"
    if kind in {"metric_added", "metric_gone"}:
        what = "new metric" if kind == "metric_added" else "metric no longer reported"
        return f"{what} {entry['name']}: {_num(entry['baseline'])} → {_num(entry['current'])}"
    text = f"{entry['name']}: {_num(entry['baseline'])} → {_num(entry['current'])}"
    if "delta" in entry:
        text += f" (Δ {entry['delta']:+.3g}; allowed ±{entry['allowed']:.3g})"
    return text


def case_diff(name: str, path: Path, entries: list[Entry], case_fps: Mapping[str, str],
              base_fps: Mapping[str, str]) -> str:
    """The diff shown when a case drifts: each entry, then the case's checkpoints that changed."""
    lines = [f"drift from baseline {name!r} ({path}):"]
    lines += [f"  {entry_text(e)}" for e in entries]
    changed = [k for k in sorted(set(case_fps) | set(base_fps)) if case_fps.get(k) != base_fps.get(k)]
    if changed:
        lines.append("  changed inputs of this case: " + ", ".join(
            f"{k} {_short(base_fps.get(k))} → {_short(case_fps.get(k))}" for k in changed))
    elif case_fps or base_fps:
        lines.append("  this case's checkpoints and data are unchanged")
    return "\n".join(lines)


def drift_count(drift: Mapping[str, Any]) -> int:
    """Cases that drifted, including gone ones."""
    return len(drift.get("cases", {})) + len(drift.get("gone", []))


def markdown(drift: Mapping[str, Any]) -> str:
    """The ``## Drift`` section appended to summary.md."""
    lines = ["", f"## Drift from baseline `{drift['baseline']}`", ""]
    if drift.get("checkpoints"):
        lines += ["Changed fingerprints:", ""]
        lines += [f"- `{k}`: `{_short(v['baseline'])}` → `{_short(v['current'])}`"
                  for k, v in drift["checkpoints"].items()]
        lines.append("")
    if not drift_count(drift):
        lines.append("No drift: every case matches the baseline within its tolerance.")
    for case_id, entries in drift.get("cases", {}).items():
        lines.append(f"- `{case_id}`: " + "; ".join(entry_text(e) for e in entries))
    lines += [f"- `{case_id}`: {entry_text({'kind': 'gone'})}" for case_id in drift.get("gone", [])]
    if drift.get("unchecked"):
        lines += ["", f"{len(drift['unchecked'])} baseline cases were not selected in this run (not compared)."]
    return "\n".join(lines) + "\n"


def terminal_lines(drift: Mapping[str, Any]) -> list[str]:
    """Lines for the terminal's drift section."""
    out = [f"baseline {drift['baseline']!r}: {drift['path']}"]
    for key, change in drift.get("checkpoints", {}).items():
        out.append(f"fingerprint changed  {key}: {_short(change['baseline'])} → {_short(change['current'])}")
    for case_id, entries in drift.get("cases", {}).items():
        out.append(f"DRIFT  {case_id}")
        out += [f"         {entry_text(e)}" for e in entries]
    out += [f"GONE   {case_id}" for case_id in drift.get("gone", [])]
    if drift.get("unchecked"):
        out.append(f"{len(drift['unchecked'])} baseline cases not selected in this run (not compared)")
    out.append(f"{drift_count(drift)} drifted" if drift_count(drift) else "no drift")
    return out
