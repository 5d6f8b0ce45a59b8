"""Run summaries: BH across the run, summary.json / summary.md (atomic) and the terminal table."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .stats import bh_adjust


def finalize(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort by id, add BH-adjusted p over the run, and re-judge significance claims after BH.

    A case that passed on its raw p but whose BH-adjusted p is not below its
    alpha becomes a *fail*: significance is claimed over the whole run.
    A case whose verdict differs from its ``expected`` verdict is flagged.
    """
    cases = sorted(cases, key=lambda c: c["id"])
    with_p = [i for i, c in enumerate(cases) if c.get("p") is not None and c.get("verdict") != "error"]
    adjusted = bh_adjust([cases[i]["p"] for i in with_p])
    for i, p_adj in zip(with_p, adjusted, strict=True):
        cases[i]["p_adj"] = p_adj if math.isfinite(p_adj) else None
    for case in cases:
        case.setdefault("p_adj", None)
        case.setdefault("notes", [])
        alpha = case.get("alpha", 0.05)
        if case.get("verdict") == "pass" and case.get("uses_significance") and case["p_adj"] is not None:
            if case["p_adj"] >= alpha:
                case["verdict"] = "fail"
                case["notes"].append(
                    f"significant on raw p = {case['p']:.3g} but not after BH across the run "
                    f"(p_adj = {case['p_adj']:.3g} ≥ {alpha:g})"
                )
        expected = case.get("expected")
        case["matches_expected"] = None if expected is None else case.get("verdict") == expected
    return cases


def build_summary(cases: list[dict[str, Any]], environment: dict[str, Any]) -> dict[str, Any]:
    """The summary.json document."""
    counts = Counter(c["verdict"] for c in cases)
    return {
        "counts": {k: counts.get(k, 0) for k in ("pass", "fail", "inconclusive", "error")},
        "mismatches": [c["id"] for c in cases if c.get("matches_expected") is False],
        "cases": cases,
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


def markdown(summary: dict[str, Any]) -> str:
    """summary.md: counts, then one row per case."""
    counts = summary["counts"]
    lines = [
        "# Claim check summary",
        "",
        " · ".join(f"**{n}** {k}" for k, n in counts.items()),
        "",
    ]
    if summary["mismatches"]:
        lines += ["**Verdicts that differ from the expected ones:** " + ", ".join(summary["mismatches"]), ""]
    lines += [
        "| verdict | case | effect [95% CI] | p | p (BH) | reported → measured | expected |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in summary["cases"]:
        effect = f"{c.get('effect_metric', '')} {_fmt(c.get('effect'))} {_ci(c)}"
        expected = c.get("expected") or ""
        if c.get("matches_expected") is False:
            expected = f"**{expected} ✗**"
        lines.append(
            f"| {c['verdict']} | `{c['id']}` | {effect} | {_fmt(c.get('p'))} | {_fmt(c.get('p_adj'))} "
            f"| {_reported(c)} | {expected} |"
        )
    notes = [(c["id"], n) for c in summary["cases"] for n in c.get("notes", [])]
    reasons = [(c["id"], c.get("reason", "")) for c in summary["cases"] if c["verdict"] != "pass"]
    if reasons or notes:
        lines += ["", "## Why", ""]
        lines += [f"- `{i}`: {' '.join(r.split())}" for i, r in reasons if r]
        lines += [f"- `{i}`: {n}" for i, n in notes]
    env = summary.get("environment", {})
    if env:
        lines += ["", "## Environment", "", "```json", json.dumps(env, indent=2, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def terminal_lines(summary: dict[str, Any]) -> list[str]:
    """One line per case: verdict, id, effect [CI], p, p (BH), reported → measured."""
    out = []
    for c in summary["cases"]:
        line = (
            f"{c['verdict'].upper():<12} {c['id']}  {c.get('effect_metric', '')}={_fmt(c.get('effect'))} "
            f"{_ci(c)}  p={_fmt(c.get('p'))}  p_bh={_fmt(c.get('p_adj'))}"
        )
        if c.get("reported"):
            line += f"  reported→measured: {_reported(c)}"
        if c.get("matches_expected") is False:
            line += f"  (expected {c['expected']})"
        out.append(line)
        out += [f"{'':<13}note: {n}" for n in c.get("notes", [])]
    counts = summary["counts"]
    out.append(", ".join(f"{n} {k}" for k, n in counts.items()))
    return out


def write_summary(directory: Path, summary: dict[str, Any]) -> None:
    """summary.json and summary.md, each written atomically."""
    atomic_write_text(directory / "summary.json", json.dumps(summary, indent=2, sort_keys=False) + "\n")
    atomic_write_text(directory / "summary.md", markdown(summary))
