"""The controlling process's view of a run: every case's record, the run record, the exit status.

Workers send each case's verdict record (decided in its item) through ``user_properties``; this plugin
collects them as typed :class:`~hypocheck.records.CaseVerdict` records and hands each to the reporters
(``pytest_hypocheck_case_recorded``). A case that never finished (its worker crashed, the run was
interrupted) becomes an *error* record with the reason, so no case vanishes from any output. When the run
ends it builds the :class:`~hypocheck.records.RunRecord` (with the drift against ``--baseline``), hands it to
the reporters (``pytest_hypocheck_run_finished``) and sets the exit status (``hypocheck.decisions``).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from .baseline import Baseline, baseline_path, baselines_dir, compare_run, partial_note
from .decisions import ExitRule, run_problems, run_state
from .formatting import fmt
from .records import CaseVerdict, RunRecord, RunStatus, error_verdict
from .summary import build_run, last_complete_run, reports_dir

RECORD_KEY = "hypocheck_case"
ENV_KEY = "hypocheck_environment"
BASELINE_KEY = pytest.StashKey["Baseline | None"]()
NOTES_KEY = pytest.StashKey[list[str]]()
EMPTY_DIRS_KEY = pytest.StashKey[list[Path]]()
PACKAGES = ("hypocheck", "arc-state", "torch", "transformers", "numpy", "scipy", "anndata", "pytest", "pytest-xdist")
FILE_RULE = ("a .yaml/.yml file in a folder named 'hypotheses', or a file named *.hyp.yaml; "
             "set the ini option hypocheck_files to change the rule")


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


def hypothesis_of(case_id: str) -> str:
    """``file::hypothesis[axes]`` → ``hypothesis``: the claim a case that never ran belongs to."""
    return case_id.partition("::")[2].split("[", 1)[0]


def finished_line(record: CaseVerdict, seconds: float) -> str:
    """The progress display's line for a finished case, read from its one verdict record (never re-decided):
    ``PASS  file::case[axes]  effect delta=0.42 [0.31, 0.55]  p 0.002  (12.4 s)``."""
    head = f"{record.verdict.upper():<5} {record.id}"
    if record.verdict == "error":
        return f"{head}  could not run: {' '.join(record.reason.split())[:120]}  ({seconds:.1f} s)"
    effect = (f"  effect {record.effect_metric}={fmt(record.effect)} [{fmt(record.ci[0])}, {fmt(record.ci[1])}]"
              if record.effect_metric and record.effect is not None else "")
    p = f"  p {fmt(record.p)}" if record.p is not None else ""
    why = f"  {' '.join(record.reason.split())[:100]}" if record.verdict == "inconclusive" else ""
    fragile = "  FRAGILE" if record.stability is not None and record.stability.fragile else ""
    return f"{head}{effect}{p}{why}{fragile}  ({seconds:.1f} s)"


def merge_environment(into: dict[str, Any], reported: Mapping[str, Any]) -> None:
    """Merge one worker's environment into the run's: nested mappings (e.g. models loaded) are unioned,
    since each xdist worker loads only the models its cases need."""
    for key, value in reported.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            merge_environment(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


class RunSummary:
    """Controller-side plugin: gathers case records, hands them and the run record to the reporters, and sets
    the exit status."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: dict[str, CaseVerdict] = {}
        self.expected_nodeids: set[str] = set()
        self.environment: dict[str, Any] = {}
        self.run: RunRecord | None = None
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
            self.config.hook.pytest_hypocheck_case_recorded(config=self.config, verdict=self.records[report.nodeid],
                                                            duration=self.durations[report.nodeid])

    def _unfinished(self, session: pytest.Session) -> list[CaseVerdict]:
        if self.config.option.collectonly:
            return []
        why = "never finished: the run ended before this case ran"
        if session.shouldstop:
            why += f" ({session.shouldstop})"
        return [error_verdict(case_id_of(n), why, n, nodeid=n, hypothesis=hypothesis_of(case_id_of(n)))
                for n in sorted(self.expected_nodeids - set(self.records))]

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.collected = session.testscollected
        unfinished = self._unfinished(session)
        for record in unfinished:
            self.config.hook.pytest_hypocheck_case_recorded(config=self.config, verdict=record, duration=0.0)
        cases = [*self.records.values(), *unfinished]
        if not cases:
            return
        run = build_run(cases, environment(self.config, self.environment))
        state, why = run_state(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED or bool(session.shouldstop),
                               unfinished=len(unfinished), narrowed=partial_note(self.config))
        run_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f") + f"-{os.getpid()}"  # sorts by time
        reports = reports_dir(self.config)
        own = f"runs/{run_id}/summary.json"
        status = RunStatus(run_id, time.strftime("%Y-%m-%dT%H:%M:%S%z"), state, why,
                           own if state == "complete" else last_complete_run(reports))
        run = dataclasses.replace(run, status=status)
        baseline = self.config.stash.get(BASELINE_KEY, None)
        if baseline is not None:
            run = dataclasses.replace(run, drift=compare_run(baseline, run, _selection(self.config), self.config))
        self.run = run
        self.config.hook.pytest_hypocheck_run_finished(config=self.config, run=run)
        rule = ExitRule(inconclusive=bool(self.config.getoption("--inconclusive-fails")))
        if exitstatus == 0 and run_problems(run, rule):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    # ---------------------------------------------------------------- terminal
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        empty = self.config.stash.get(EMPTY_DIRS_KEY, [])
        if empty and not self.collected:
            patterns = self.config.getini("hypocheck_files")
            rule = f"files matching hypocheck_files = {' '.join(patterns)}" if patterns else FILE_RULE
            for directory in empty:
                terminalreporter.write_line(f"hypocheck: no hypothesis files under {directory} ({rule})",
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
