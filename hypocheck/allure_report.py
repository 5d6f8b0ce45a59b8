"""Allure reporting: each case's title, parameters, labels, description and attachments, plus the run's
categories and environment, and the HTML report (Allure 3 command-line tool, single file).

The reporter :class:`AllureReporter` (registered when pytest runs with ``--alluredir``) does it on the
engine's hooks:

- when a case item starts (on the process that runs it): ``start_case(case, family)``: title, parameters
  (= case axes), labels, severity;
- ``pytest_hypocheck_case_judged`` (the same process, with the live probe result):
  ``report_case(case, verdict, result)``: description, metrics JSON, tables CSV (the plots PNG come from
  the plots reporter, ``hypocheck.reporters.PlotAttachments``);
- ``pytest_hypocheck_run_finished`` (the controller, once): ``write_run_metadata(alluredir, environment)``
  (categories.json, environment.properties), a result per case gone since the baseline, and each claim's
  verdict on its cases' group.

And from the command line, after a run::

    python -m hypocheck.allure_report generate reports/allure-results -o reports/html \\
        --history reports/allure-history.jsonl

The report is a single ``index.html`` with its data inlined, so it opens from
disk (``file://``) in any browser; history (trends) accumulates in the
``--history`` file between runs. The Google Analytics tag Allure 3 writes into
every page is removed, so opening a report makes no network request.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import allure
import pytest

from .atomic import atomic_write_text
from .cases import Case
from .errors import HypocheckError
from .formatting import fmt
from .records import CaseVerdict, ClaimResult, Drift, RunRecord
from .registry import ProbeResult

#: How Allure sorts results into categories: first match wins (Allure 3), regexes written to match in Allure 2 too.
CATEGORIES: list[dict[str, Any]] = [
    {"name": "Drift from baseline", "matchedStatuses": ["failed"],
     "messageRegex": r"[\s\S]*drift from baseline[\s\S]*",
     "description": "Metrics or verdicts moved beyond the hypothesis's tolerance since the baseline"},
    {"name": "Verdict differs from the planted truth", "matchedStatuses": ["failed"],
     "messageRegex": r"[\s\S]*planted truth: differs[\s\S]*",
     "description": "The demo world's planted truth implies another verdict: a defect, not a finding"},
    {"name": "Claim failed", "matchedStatuses": ["failed"], "messageRegex": r"[\s\S]*verdict: fail[\s\S]*",
     "description": "The claim does not hold on these models: a finding"},
    {"name": "Inconclusive", "matchedStatuses": ["skipped"], "messageRegex": r"[\s\S]*inconclusive:[\s\S]*",
     "description": "The data cannot decide: too few set members, an undefined metric, no power"},
    {"name": "Error", "matchedStatuses": ["broken"],
     "description": "The case could not run: a broken hypothesis file, a probe or model error"},
]

#: The same categories in Allure 3's configuration form (it reads them from the config, not from results).
CATEGORIES_CONFIG: list[dict[str, Any]] = [
    {k: v for k, v in c.items() if k != "description"} for c in CATEGORIES
]

SEVERITIES = {s.value for s in allure.severity_level}
RESULTS_DEFAULT = Path("reports/allure-results")
HTML_DEFAULT = Path("reports/html")
HISTORY_DEFAULT = Path("reports/allure-history.jsonl")


def enabled(config: pytest.Config) -> bool:
    """Whether this run writes Allure results (``--alluredir``)."""
    return bool(getattr(config.option, "allure_report_dir", None))


def results_dir(config: pytest.Config) -> Path | None:
    """The ``--alluredir`` of this run, if any."""
    value = getattr(config.option, "allure_report_dir", None)
    return Path(value).resolve() if value else None


def family_of(path: str | Path, dirname: str = "hypotheses") -> str:
    """The claim family: the folders between the hypotheses folder and the file, e.g. ``paper``."""
    parts = Path(path).parts
    if dirname in parts:
        idx = len(parts) - 1 - parts[::-1].index(dirname)
        inner = parts[idx + 1:-1]
        if inner:
            return "/".join(inner)
    return Path(path).parent.name or "hypotheses"


def severity_of(case: Case) -> str:
    """A tag naming an Allure severity wins; else a paper's headline claim is critical, the rest normal."""
    for tag in case.hypothesis.tags:
        if tag in SEVERITIES:
            return tag
    return "critical" if case.hypothesis.source.claim is not None else "normal"


def case_title(case: Case) -> str:
    """The claim, with the case's axis values so that cases of one claim can be told apart."""
    claim = " ".join(case.hypothesis.claim.split())
    return f"{claim} [{' · '.join(str(v) for v in case.axes.values())}]" if case.axes else claim


def start_case(case: Case, family: str) -> None:
    """Title, parameters (the case axes: history follows a case by them), labels and severity."""
    allure.dynamic.title(case_title(case))
    for axis, value in case.axes.items():
        allure.dynamic.parameter(axis, str(value))
    allure.dynamic.parent_suite(family)
    allure.dynamic.suite(case.hypothesis.id)
    allure.dynamic.epic(family)
    allure.dynamic.feature(case.hypothesis.id)
    allure.dynamic.label("family", family)
    allure.dynamic.label("probe", case.probe.name)
    allure.dynamic.label("hypothesis", case.hypothesis.id)
    allure.dynamic.label("case", case.case_id)
    source = case.hypothesis.source
    if source.claim is not None:
        allure.dynamic.label("source_claim", f"claim {source.claim}")
    if source.notebook:
        allure.dynamic.label("notebook", source.notebook)
    allure.dynamic.severity(allure.severity_level(severity_of(case)))
    if case.hypothesis.tags:
        allure.dynamic.tag(*case.hypothesis.tags)
    allure.dynamic.description_html(_claim_html(case))


def start_broken_file(path: Path, family: str) -> None:
    """Title and labels of the item that stands for a hypothesis file that did not load."""
    allure.dynamic.title(f"hypothesis file does not load: {path.name}")
    allure.dynamic.parent_suite(family)
    allure.dynamic.suite(path.stem)
    allure.dynamic.label("family", family)
    allure.dynamic.severity(allure.severity_level.BLOCKER)


def _fmt(value: Any) -> str:
    return html.escape(fmt(value, 4))


def _claim_html(case: Case) -> str:
    source = case.hypothesis.source
    where = ", ".join(x for x in (f"claim {source.claim}" if source.claim is not None else "",
                                  source.notebook or "", source.note or "") if x)
    out = f"<p><b>Claim.</b> {html.escape(' '.join(case.hypothesis.claim.split()))}</p>"
    if where:
        out += f"<p><b>Source.</b> {html.escape(where)}</p>"
    out += f"<p><b>Defined at</b> <code>{html.escape(str(case.location))}</code></p>"
    return out


def description_html(case: Case, verdict: CaseVerdict) -> str:
    """Claim, verdict, effect with CI, p, the paper's figures beside the measured ones, and each expectation."""
    ci = f"[{_fmt(verdict.ci[0])}, {_fmt(verdict.ci[1])}]"
    rows = [
        ("verdict", f"<b>{html.escape(verdict.verdict.upper())}</b>"),
        ("effect", f"{html.escape(str(verdict.effect_metric))} = {_fmt(verdict.effect)} (95% CI {ci})"
                   + (f"; minimum effect of interest {verdict.min_effect:g}" if verdict.min_effect is not None
                      else "")),
        ("p (raw)", _fmt(verdict.p)),
        ("p (corrected within the claim)",
         f"{_fmt(verdict.p_adj)} (Bonferroni over the claim's {verdict.family_size} cases)"
         if verdict.family_size > 1 else _fmt(verdict.p_adj)),
        ("p (BH across the run)", "in summary.md / summary.json (known when the run ends)"),
        ("seed", str(verdict.seed)),
    ]
    if verdict.margin is not None:
        rows.insert(2, ("claim of absence", f"the 95% CI of {html.escape(str(verdict.effect_metric))} is judged "
                                            f"against the margin {verdict.margin:g}"))
    rows += [(f"measured: {html.escape(str(k))}", html.escape(str(v))) for k, v in verdict.measured.items()]
    for metric, values in verdict.p_values.items():
        if metric != case.probe.p:
            rows.append((f"{metric} (raw → corrected)", f"{_fmt(values.raw)} → {_fmt(values.adjusted)}"))
    if verdict.null is not None:
        rows.append(("null distribution", f"{html.escape(verdict.null.kind)}: mean "
                                          f"{_fmt(verdict.null.mean)}, SD {_fmt(verdict.null.sd)}, "
                                          f"{int(verdict.null.draws)} draws"))
    for kind, control in verdict.controls.items():
        rows.append((f"on the {html.escape(kind)} control",
                     f"{html.escape(control.verdict.upper())}, {html.escape(str(verdict.effect_metric))} = "
                     f"{_fmt(control.effect)} (95% CI [{_fmt(control.ci[0])}, {_fmt(control.ci[1])}])"))
    for arm, ref in verdict.references.items():
        shown = (f"not applicable: {html.escape(ref.reason)}" if ref.verdict == "not applicable" else
                 f"{html.escape(ref.verdict.upper())}, {html.escape(str(verdict.effect_metric))} = {_fmt(ref.effect)} "
                 f"(95% CI [{_fmt(ref.ci[0])}, {_fmt(ref.ci[1])}])"
                 + (f"; measured: {html.escape(str(ref.measured['features']))}" if ref.measured.get("features")
                    else ""))
        rows.append((f"reference arm: {html.escape(arm)}", shown))
    if verdict.stability is not None:
        stab = verdict.stability
        detail = ", ".join(f"{html.escape(s)}: {v} ({_fmt(e)})" for s, v, e in
                           zip(stab.samples, stab.verdicts, stab.effects, strict=True))
        rows.append(("stability", f"<b>{html.escape(stab.text)}</b> — {detail}"))
    if verdict.specific_to_training is False:
        rows.append(("specific to training", "<b>NO</b>: the claim holds as strongly on a control model"))
    if verdict.truth is not None:
        rows.append(("planted truth", f"expects {html.escape(str(verdict.expected))}: the verdict "
                                      f"<b>{'matches' if verdict.truth == 'matches' else 'DIFFERS'}</b>"))
    out = _claim_html(case) + "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    out += f"<p><b>Why.</b> {html.escape(verdict.reason)}</p>"
    if verdict.reported:
        out += "<p><b>Reported by the paper vs measured</b></p><table><tr><th>metric</th><th>reported</th>"
        out += "<th>measured</th></tr>"
        for metric, value in verdict.reported.items():
            out += (f"<tr><td>{html.escape(metric)}</td><td>{_fmt(value)}</td>"
                    f"<td>{_fmt(verdict.metrics.get(metric))}</td></tr>")
        out += "</table>"
    marks = {True: "✓", False: "✗", None: "?"}
    out += "<p><b>Expectations</b></p><ul>" + "".join(
        f"<li>{marks[c.holds]} {html.escape(c.detail)}</li>" for c in verdict.checks) + "</ul>"
    if verdict.notes:
        out += "<p><b>Notes</b></p><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in verdict.notes) + "</ul>"
    return out


def _csv(table: Any) -> str:
    import pandas as pd

    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    return str(frame.to_csv(index=False))


def report_case(case: Case, verdict: CaseVerdict, result: ProbeResult) -> None:
    """Description with the figures; attachments: metrics JSON, tables CSV."""
    allure.dynamic.description_html(description_html(case, verdict))
    if verdict.truth is not None:
        allure.dynamic.tag(f"planted truth {verdict.truth}")
        allure.dynamic.label("planted_truth", verdict.truth)
    if verdict.stability is not None:
        allure.dynamic.tag("fragile" if verdict.stability.fragile else "stable")
    payload = {k: v for k, v in verdict.to_json().items() if k not in {"claim", "location", "source"}}
    payload["cis"] = {k: list(v) for k, v in result.cis.items()}
    allure.attach(json.dumps(payload, indent=2, sort_keys=True), name="metrics",
                  attachment_type=allure.attachment_type.JSON)
    for name, table in result.tables.items():
        allure.attach(_csv(table), name=f"{name}.csv", attachment_type=allure.attachment_type.CSV)


def label_claims(directory: Path, claims: Sequence[ClaimResult], drift: Drift | None = None) -> None:
    """Show each claim's result as the parent of its cases: the suite (group) of every case result of a
    hypothesis is renamed to the hypothesis with its claim-level verdict; a case that drifted from the
    baseline gets a "drift from baseline" tag (result files rewritten atomically when the run ends)."""
    by_id = {c.hypothesis: c for c in claims}
    drifted = drift.cases if drift is not None else {}
    for path in sorted(directory.glob("*-result.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        labels = result.get("labels", [])
        hyp = next((lab["value"] for lab in labels if lab.get("name") == "hypothesis"), None)
        if hyp not in by_id:
            continue
        claim = by_id[hyp]
        title = f"{hyp} — claim {claim.verdict.upper()} ({claim.reason})"
        result["labels"] = [lab for lab in labels if lab.get("name") not in {"suite", "claim_verdict"}]
        result["labels"] += [{"name": "suite", "value": title}, {"name": "claim_verdict", "value": claim.verdict}]
        case_id = next((lab["value"] for lab in labels if lab.get("name") == "case"), None)
        if case_id in drifted:
            result["labels"].append({"name": "tag", "value": "drift from baseline"})
        atomic_write_text(path, json.dumps(result) + "\n")


# ---------------------------------------------------------------------------------------------- run metadata
def _flatten(value: Any, prefix: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            yield from _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple):
        yield prefix, json.dumps(value)
    else:
        yield prefix, "" if value is None else str(value)


def _escape(text: str, key: bool) -> str:
    out = []
    for i, char in enumerate(text):
        if char == "\\":
            out.append("\\\\")
        elif char in "\n\r\t\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}[char])
        elif (key and char in " =:#!") or (not key and i == 0 and char in " #!"):
            out.append("\\" + char)
        elif ord(char) > 126:
            units = char.encode("utf-16-be")
            out += [f"\\u{units[j]:02x}{units[j + 1]:02x}" for j in range(0, len(units), 2)]
        else:
            out.append(char)
    return "".join(out)


def environment_properties(environment: Mapping[str, Any]) -> str:
    """``environment.properties``: the nested environment flattened to ``a.b.c=value`` lines (Java escaping)."""
    lines = [f"{_escape(k, True)}={_escape(v, False)}" for k, v in _flatten(environment)]
    return "\n".join(lines) + "\n"


def allure_environment(run: RunRecord) -> dict[str, Any]:
    """The run's environment plus, against a baseline, which baseline and the checkpoints whose fingerprint
    changed (both fingerprints), so Allure's Environment panel says what the run was compared with."""
    if run.drift is None:
        return dict(run.environment)
    return {**run.environment, "baseline": {"name": run.drift.baseline, "changed": run.drift.checkpoints}}


def write_run_metadata(directory: Path, environment: Mapping[str, Any]) -> None:
    """``categories.json`` and ``environment.properties`` in the Allure results folder."""
    atomic_write_text(directory / "categories.json", json.dumps(CATEGORIES, indent=2) + "\n")
    atomic_write_text(directory / "environment.properties", environment_properties(environment))


def write_gone_result(directory: Path, case_id: str, message: str, family: str) -> None:
    """A failed Allure result for a baseline case this run no longer produces (so the report shows it)."""
    now = int(time.time() * 1000)
    result = {
        "uuid": str(uuid.uuid4()), "historyId": f"gone::{case_id}", "testCaseId": f"gone::{case_id}",
        "name": f"case gone since baseline: {case_id}", "fullName": case_id, "status": "failed",
        "statusDetails": {"message": f"drift from baseline: {message}"}, "stage": "finished", "start": now,
        "stop": now,
        "labels": [{"name": "parentSuite", "value": family}, {"name": "suite", "value": "gone since baseline"},
                   {"name": "family", "value": family}, {"name": "severity", "value": "critical"}],
        "parameters": [], "attachments": [], "steps": [],
    }
    atomic_write_text(directory / f"{result['uuid']}-result.json", json.dumps(result) + "\n")


class AllureReporter:
    """Reporter: Allure results. A case's title, labels, description and attachments are written by the
    process that runs the case (an xdist worker); the run's metadata by the controller."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        case = getattr(item, "case", None)
        if isinstance(case, Case):
            start_case(case, family_of(item.path))
        elif isinstance(getattr(item, "error", None), HypocheckError):  # a hypothesis file that does not load
            start_broken_file(item.path, family_of(item.path))

    def pytest_hypocheck_case_judged(self, case: Case, verdict: CaseVerdict, result: ProbeResult) -> None:
        report_case(case, verdict, result)

    def pytest_hypocheck_run_finished(self, config: pytest.Config, run: RunRecord) -> None:
        write_run_metadata(self.directory, allure_environment(run))
        if run.drift is not None:
            for case_id, nodeid in run.drift.gone_nodeids.items():
                write_gone_result(self.directory, case_id, f"case gone since baseline {run.drift.baseline}",
                                  family_of(nodeid))
        label_claims(self.directory, run.claims, run.drift)


# ---------------------------------------------------------------------------------------------- HTML report
class AllureNotFoundError(FileNotFoundError):
    """The Allure command-line tool is not installed where we look."""


def find_allure(root: Path | None = None) -> str:
    """The Allure 3 command-line tool: ``$HYPOCHECK_ALLURE``, ``node_modules`` of the current folder (or
    ``root``), of this source checkout, or PATH."""
    chosen = os.environ.get("HYPOCHECK_ALLURE")
    if chosen:
        return chosen
    bases = [root] if root else [Path.cwd(), Path(__file__).resolve().parents[1]]
    for base in bases:
        local = base / "node_modules" / ".bin" / "allure"
        if local.exists():
            return str(local)
    found = shutil.which("allure")
    if found:
        return found
    raise AllureNotFoundError(
        "the Allure command-line tool (Node.js >= 20) is not installed: run `npm install --save-dev allure@3` in "
        f"{bases[0]}, or put `allure` on PATH, or set HYPOCHECK_ALLURE to its path"
    )


def allure_config(name: str, output: Path, history: Path | None) -> dict[str, Any]:
    """The Allure 3 configuration: single-file awesome report, our categories, grouping, history file."""
    config: dict[str, Any] = {
        "name": name,
        "output": str(output),
        "categories": CATEGORIES_CONFIG,
        "plugins": {"awesome": {"options": {"singleFile": True, "reportName": name, "reportLanguage": "en",
                                            "groupBy": ["parentSuite", "suite", "subSuite"]}}},
    }
    if history is not None:
        config["historyPath"] = str(history)
    return config



def generate_html(results: Sequence[Path], output: Path, history: Path | None = HISTORY_DEFAULT,
                  name: str = "hypocheck claims", allure_bin: str | None = None, timeout: float = 300) -> Path:
    """Run ``allure generate`` and return the report's ``index.html`` (one self-contained file)."""
    output = output.resolve()
    if output.exists() and any(output.iterdir()) and not (output / "index.html").exists():
        raise FileExistsError(f"{output} is not empty and holds no Allure report; refusing to overwrite it")
    if output.exists():
        shutil.rmtree(output)
    if history is not None:
        history = history.resolve()
        history.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hypocheck-allure-") as tmp:
        config_path = Path(tmp) / "allurerc.json"
        config_path.write_text(json.dumps(allure_config(name, output, history), indent=2), encoding="utf-8")
        cmd = [allure_bin or find_allure(), "generate", "--config", str(config_path), "--output", str(output),
               *(str(Path(r).resolve()) for r in results)]
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "NO_COLOR": "1", "CI": os.environ.get("CI", "1")})
    index = output / "index.html"
    if done.returncode != 0 or not index.exists():
        raise RuntimeError(f"allure generate failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    page = index.read_text(encoding="utf-8")
    stripped = _ANALYTICS.sub("", page)
    if stripped != page:
        index.write_text(stripped, encoding="utf-8")
    return index


#: Allure 3's page loads Google Analytics unconditionally; a local report of unpublished results should not.
_ANALYTICS = re.compile(
    r'<script async src="https://www\.googletagmanager\.com/[^"]*"></script>\s*<script>\s*window\.dataLayer'
    r"[\s\S]*?</script>"
)


def main(argv: list[str] | None = None) -> int:
    """``python -m hypocheck.allure_report generate [RESULTS…] [-o DIR] [--history FILE]``."""
    parser = argparse.ArgumentParser(prog="python -m hypocheck.allure_report", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="render Allure results as a single-file HTML report")
    gen.add_argument("results", nargs="*", type=Path, default=[RESULTS_DEFAULT])
    gen.add_argument("-o", "--output", type=Path, default=HTML_DEFAULT)
    gen.add_argument("--history", type=Path, default=HISTORY_DEFAULT,
                     help="history file kept between runs, for trends (default: %(default)s)")
    gen.add_argument("--no-history", action="store_true", help="do not read or extend a history file")
    gen.add_argument("--name", default="hypocheck claims")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.results if not Path(r).is_dir()]
    if missing:
        print(f"no Allure results at {', '.join(missing)}: run pytest with --alluredir first", file=sys.stderr)
        return 2
    try:
        index = generate_html(args.results, args.output, None if args.no_history else args.history, args.name)
    except AllureNotFoundError as exc:
        print(f"cannot render the HTML report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {index} (opens from disk; or serve it: python -m http.server -d {index.parent})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
