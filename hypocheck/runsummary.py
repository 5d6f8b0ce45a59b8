"""The controlling process's view of a run: every case's record, claims, the summary, baselines, exit status.

Workers send each case's verdict record (decided in its item) through ``user_properties``; this plugin
collects them as typed :class:`~hypocheck.verdict.CaseVerdict` records. A case that never finished (its
worker crashed, the run was interrupted) becomes an *error* record with the reason, so no case vanishes
from any output.
"""

from __future__ import annotations

import math
import platform
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from . import allure_report
from .baseline import Baseline, baseline_path, compare_run, drift_terminal_lines
from .baseline import document as baseline_document
from .baseline import markdown as drift_markdown
from .baseline import save as save_baseline
from .summary import build_summary, terminal_lines, write_summary
from .verdict import CaseVerdict, error_verdict

RECORD_KEY = "hypocheck_case"
ENV_KEY = "hypocheck_environment"
BASELINE_KEY = pytest.StashKey["Baseline | None"]()
NOTES_KEY = pytest.StashKey[list[str]]()
EMPTY_DIRS_KEY = pytest.StashKey[list[Path]]()
PACKAGES = ("hypocheck", "arc-state", "torch", "transformers", "numpy", "scipy", "anndata", "pytest", "pytest-xdist")
FILE_RULE = ("a .yaml/.yml file in a folder named 'hypotheses', or a file named *.hyp.yaml; "
             "set the ini option hypocheck_files to change the rule")


def reports_dir(config: pytest.Config) -> Path:
    option = config.getoption("--hypocheck-reports")
    return Path(option) if option else Path(config.rootpath) / "reports"


def baselines_dir(config: pytest.Config) -> Path:
    option = config.getoption("--baseline-dir")
    return (config.invocation_params.dir / option).resolve() if option else Path(config.rootpath) / "baselines"


def wants_fingerprints(config: pytest.Config) -> bool:
    """Whether case records carry their checkpoints' fingerprints (baseline runs)."""
    return bool(config.getoption("--baseline") or config.getoption("--save-baseline"))


def load_baseline(config: pytest.Config) -> Baseline | None:
    """The ``--baseline`` to compare against, checked before anything runs."""
    name = config.getoption("--baseline")
    if not name:
        return None
    directory = baselines_dir(config)
    try:
        path = baseline_path(directory, name)
    except ValueError as exc:
        raise pytest.UsageError(f"--baseline: {exc}") from None
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
        raise pytest.UsageError(
            f"--baseline {name}: no baseline at {path}; known: {', '.join(known) or 'none'} "
            f"(save one with --save-baseline NAME)"
        )
    try:
        return Baseline.load(path)
    except (ValueError, KeyError) as exc:
        raise pytest.UsageError(f"--baseline {name}: cannot read {path}: {exc}") from None


def is_case_nodeid(nodeid: str) -> bool:
    """Whether a node id names a hypothesis case (items of YAML files)."""
    file = nodeid.split("::")[0]
    return "::" in nodeid and file.endswith((".yaml", ".yml"))


def case_id_of(nodeid: str) -> str:
    """``dir/file.yaml::name`` → ``file::name`` (the case id), for cases that never sent their record."""
    file, _, name = nodeid.partition("::")
    return f"{Path(file).stem}::{name}" if name != "<load>" else nodeid


def _num(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3g}"


def finished_line(record: CaseVerdict, seconds: float) -> str:
    """The progress display's line for a finished case, read from its one verdict record (never re-decided):
    ``PASS  file::case[axes]  effect delta=0.42 [0.31, 0.55]  p 0.002  (12.4 s)``."""
    head = f"{record.verdict.upper():<5} {record.id}"
    if record.verdict == "error":
        return f"{head}  could not run: {' '.join(record.reason.split())[:120]}  ({seconds:.1f} s)"
    effect = (f"  effect {record.effect_metric}={_num(record.effect)} [{_num(record.ci[0])}, {_num(record.ci[1])}]"
              if record.effect_metric and record.effect is not None else "")
    p = f"  p {_num(record.p)}" if record.p is not None else ""
    why = f"  {' '.join(record.reason.split())[:100]}" if record.verdict == "inconclusive" else ""
    return f"{head}{effect}{p}{why}  ({seconds:.1f} s)"


def merge_environment(into: dict[str, Any], reported: Mapping[str, Any]) -> None:
    """Merge one worker's environment into the run's: nested mappings (e.g. models loaded) are unioned,
    since each xdist worker loads only the models its cases need."""
    for key, value in reported.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            merge_environment(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


class RunSummary:
    """Controller-side plugin: gathers case records and writes the summary, the drift and the baseline."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: dict[str, CaseVerdict] = {}
        self.expected_nodeids: set[str] = set()
        self.environment: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self.drift: dict[str, Any] | None = None
        self.saved_baseline: Path | None = None
        self.partial_note: str | None = None
        self.collected = 0
        self.durations: dict[str, float] = {}

    # ---------------------------------------------------------------- what should run
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.expected_nodeids |= {item.nodeid for item in session.items if is_case_nodeid(item.nodeid)}

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.expected_nodeids |= {i for i in ids if is_case_nodeid(i)}

    # ---------------------------------------------------------------- what did run
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props: dict[str, Any] = dict(report.user_properties)
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + float(report.duration or 0.0)
        known = report.nodeid in self.records
        if ENV_KEY in props:
            merge_environment(self.environment, props[ENV_KEY])
        if RECORD_KEY in props and report.nodeid not in self.records:
            record = CaseVerdict.from_json({**props[RECORD_KEY], "nodeid": report.nodeid})
            self.records[report.nodeid] = record
        elif report.failed and is_case_nodeid(report.nodeid) and report.nodeid not in self.records:
            # a setup error, or a worker that died while running the case: the case is an error, not gone
            reason = str(report.longrepr).strip().splitlines()[-1] if report.longrepr else "failed before judging"
            if report.when not in {"setup", "call", "teardown"}:
                reason = f"never finished: {str(report.longrepr).strip().splitlines()[0]}"
            self.records[report.nodeid] = error_verdict(case_id_of(report.nodeid), reason, report.nodeid,
                                                        nodeid=report.nodeid)
        if not known and report.nodeid in self.records:
            display = self.config.pluginmanager.get_plugin("hypocheck-progress")
            if display is not None:
                display.finished(finished_line(self.records[report.nodeid], self.durations[report.nodeid]))

    def _unfinished(self, session: pytest.Session) -> list[CaseVerdict]:
        if self.config.option.collectonly:
            return []
        why = "never finished: the run ended before this case ran"
        if session.shouldstop:
            why += f" ({session.shouldstop})"
        return [error_verdict(case_id_of(n), why, n, nodeid=n)
                for n in sorted(self.expected_nodeids - set(self.records))]

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.collected = session.testscollected
        alluredir = allure_report.results_dir(self.config)
        env = environment(self.config, self.environment)
        if alluredir is not None:
            allure_report.write_run_metadata(alluredir, env)
        cases = [*self.records.values(), *self._unfinished(session)]
        if not cases:
            return
        self.summary = build_summary(cases, env)
        baseline = self.config.stash.get(BASELINE_KEY, None)
        extra = ""
        if baseline is not None:
            self.drift = compare_run(baseline, self.summary, _selection(self.config), self.config)
            self.summary["drift"] = self.drift
            extra = drift_markdown(self.drift)
            if alluredir is not None:
                for case_id in self.drift["gone"]:
                    base = baseline.cases[case_id]
                    allure_report.write_gone_result(alluredir, case_id, f"case gone since baseline {baseline.name}",
                                                    allure_report.family_of(base.get("nodeid", case_id)))
        if alluredir is not None:
            allure_report.label_claims(alluredir, self.summary["claims"], (self.drift or {}).get("cases"))
        write_summary(reports_dir(self.config), self.summary, extra)
        name = self.config.getoption("--save-baseline")
        if name:
            self.saved_baseline = baseline_path(baselines_dir(self.config), name)
            self.partial_note = self._partial_note()
            save_baseline(self.saved_baseline, baseline_document(name, self.summary, env, self.partial_note))
        if exitstatus == 0 and self._run_failed():
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _run_failed(self) -> bool:
        """Non-zero exit beyond failed items: a claim that does not hold, truth that differs, drift, or an
        inconclusive case under ``--inconclusive-fails``."""
        assert self.summary is not None
        bad_claims = any(c["verdict"] in {"fail", "error"} for c in self.summary["claims"])
        inconclusive = self.config.getoption("--inconclusive-fails") and self.summary["counts"]["inconclusive"]
        drifted = bool(self.drift and (self.drift["cases"] or self.drift["gone"]))
        return bool(bad_claims or self.summary["mismatches"] or inconclusive or drifted
                    or self.summary["counts"]["error"])

    def _partial_note(self) -> str | None:
        """Why a saved baseline may hold fewer cases than the suite has (-k / -m / a narrower path)."""
        narrowed = [f"-k {self.config.getoption('keyword')}" if self.config.getoption("keyword") else "",
                    f"-m {self.config.getoption('markexpr')}" if self.config.getoption("markexpr") else ""]
        testpaths = [str(p) for p in self.config.getini("testpaths")]
        args = [str(a) for a in self.config.args]
        if args and testpaths and sorted(args) != sorted(testpaths):
            narrowed.append("paths " + " ".join(args))
        chosen = [n for n in narrowed if n]
        return "the run was narrowed (" + "; ".join(chosen) + ")" if chosen else None

    # ---------------------------------------------------------------- terminal
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        empty = self.config.stash.get(EMPTY_DIRS_KEY, [])
        if empty and not self.collected:
            patterns = self.config.getini("hypocheck_files")
            rule = f"files matching hypocheck_files = {' '.join(patterns)}" if patterns else FILE_RULE
            for directory in empty:
                terminalreporter.write_line(f"hypocheck: no hypothesis files under {directory} ({rule})",
                                            yellow=True)
        if not self.summary:
            return
        terminalreporter.section("hypocheck verdicts")
        for line in terminal_lines(self.summary):
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"written: {reports_dir(self.config) / 'summary.json'} and summary.md")
        if self.drift is not None:
            terminalreporter.section("hypocheck drift")
            for line in drift_terminal_lines(self.drift):
                terminalreporter.write_line(line)
        if self.saved_baseline is not None:
            terminalreporter.write_line(f"baseline saved: {self.saved_baseline}")
            if self.partial_note:
                terminalreporter.write_line(
                    f"note: {self.partial_note}; the baseline holds only its {len(self.summary['cases'])} cases",
                    yellow=True)


def _selection(config: pytest.Config) -> Callable[[str], bool]:
    """Whether a baseline case (by node id) was within this run's selection, so that its absence means 'gone'.

    Paths and node ids on the command line bound the selection; with ``-k`` or ``-m`` a missing case cannot be
    told from a deselected one, so only cases whose hypothesis file is gone count as gone.
    """
    root = Path(config.rootpath)
    scopes: list[tuple[str, str]] = []
    for arg in config.args or ["."]:
        path, _, rest = str(arg).partition("::")
        try:
            rel = (config.invocation_params.dir / path).resolve().relative_to(root).as_posix()
        except ValueError:
            continue
        scopes.append(("" if rel == "." else rel, rest))
    filtered = bool(config.getoption("keyword", "") or config.getoption("markexpr", ""))

    def selected(nodeid: str) -> bool:
        file, _, name = nodeid.partition("::")
        inside = any(
            (file == rel and (not sel or name.startswith(sel))) or (not sel and (not rel or file.startswith(rel + "/")))
            for rel, sel in scopes
        )
        return inside and (not filtered or not (root / file).exists())

    return selected


def environment(config: pytest.Config, reported: Mapping[str, Any]) -> dict[str, Any]:
    """Package versions, Python, platform, worker count, what the contexts reported, and config notes."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    workers = getattr(config.option, "numprocesses", None)
    notes = config.stash.get(NOTES_KEY, [])
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "xdist_workers": workers if workers else 0,
        **reported,
        **({"notes": list(notes)} if notes else {}),
    }
