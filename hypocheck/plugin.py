"""The pytest plugin: hypothesis YAML files become parametrized test items with verdicts.

Registered through the ``pytest11`` entry point. A project supplies two things
in its ``conftest.py``: the ``hypocheck_context`` fixture (an object with
``prepare(case) -> dict`` of probe inputs and ``environment() -> dict``) and
the ``pytest_hypocheck_vocabulary`` hook (valid axis values).
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest

from . import hookspecs
from .cases import Case, expand
from .errors import HypocheckError, HypothesisFileError, Location
from .registry import ProbeResult
from .schema import hypotheses_from_doc
from .summary import build_summary, finalize, terminal_lines, write_summary
from .verdict import CaseVerdict, judge
from .yamlsource import load_yaml

RECORD_KEY = "hypocheck_case"
ENV_KEY = "hypocheck_environment"
_seen_ids = pytest.StashKey[dict[str, str]]()
PACKAGES = ("hypocheck", "arc-state", "torch", "transformers", "numpy", "scipy", "anndata", "pytest", "pytest-xdist")


class ProbeContext(Protocol):
    """What the project's ``hypocheck_context`` fixture provides."""

    def prepare(self, case: Case) -> Mapping[str, Any]:
        """The probe's keyword inputs (tensors, index sets) for one case."""

    def environment(self) -> Mapping[str, Any]:
        """Fingerprints and device, for reports."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hypocheck", "claim checking")
    group.addoption("--hypocheck-reports", default=None, metavar="DIR",
                    help="where summary.json / summary.md go (default: <rootdir>/reports)")
    group.addoption("--inconclusive-fails", action="store_true",
                    help="count inconclusive verdicts as test failures instead of skips")
    parser.addini("hypocheck_dirname", "folder name under which *.yaml files are hypotheses", default="hypotheses")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hypocheck: a claim case generated from a hypothesis YAML file")
    config.stash[_seen_ids] = {}
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(RunSummary(config), "hypocheck-summary")


def reports_dir(config: pytest.Config) -> Path:
    option = config.getoption("--hypocheck-reports")
    return Path(option) if option else Path(config.rootpath) / "reports"


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in {".yaml", ".yml"} and parent.config.getini("hypocheck_dirname") in file_path.parts:
        return HypothesisFileCollector.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def hypocheck_context() -> ProbeContext:
    """Overridden by the project's conftest.py; without one, cases cannot get their inputs."""
    raise HypocheckError(
        "no 'hypocheck_context' fixture: define one in conftest.py that returns an object with "
        "prepare(case) and environment()"
    )


class HypothesisFileCollector(pytest.File):
    """One YAML file: its hypotheses expanded into case items, or one failing item saying why it is broken."""

    def collect(self) -> Iterator[pytest.Item]:
        try:
            cases = self._cases()
        except HypocheckError as exc:
            yield BrokenFileItem.from_parent(self, name="<load>", error=exc)
            return
        for case in cases:
            item = CaseItem.from_parent(self, name=case.name, callobj=_run_case)
            item.case = case
            item.add_marker(pytest.mark.hypocheck)
            for mark in case.hypothesis.marks:
                self.config.addinivalue_line("markers", f"{mark}: from hypothesis YAML")
                item.add_marker(getattr(pytest.mark, mark))
            yield item

    def _cases(self) -> list[Case]:
        doc = load_yaml(self.path)
        vocabulary = self.config.hook.pytest_hypocheck_vocabulary(config=self.config) or {}
        seen = self.config.stash[_seen_ids]
        cases: list[Case] = []
        for hyp, base in hypotheses_from_doc(doc):
            where = str(doc.locate((*base, "id"), at_key=True))
            if hyp.id in seen and seen[hyp.id] != where:
                raise HypothesisFileError(
                    f"duplicate hypothesis id {hyp.id!r} (also at {seen[hyp.id]})", doc.locate((*base, "id")),
                    "ids must be unique across the run",
                )
            seen[hyp.id] = where
            cases += expand(hyp, doc, base, vocabulary)
        return cases


class BrokenFileItem(pytest.Item):
    """Stands for a hypothesis file that could not be loaded: fails with the file:line message."""

    def __init__(self, *, error: HypocheckError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        self.user_properties.append((RECORD_KEY, _error_record(self.nodeid, self.error, str(self.path))))
        raise self.error

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, (self.error.location.line or 1) - 1 if self.error.location else 0, self.name


class CaseItem(pytest.Function):
    """A pytest Function running one case; fixtures resolve through pytest as usual."""

    case: Case

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, (self.case.location.line or 1) - 1, self.case.case_id

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, HypocheckError):
            return f"{self.case.case_id}: {excinfo.value}"
        return super().repr_failure(excinfo)


def _error_record(case_id: str, error: BaseException, location: str) -> dict[str, Any]:
    where = error.location if isinstance(error, HypocheckError) and error.location else Location(location)
    return {
        "id": case_id, "hypothesis": None, "claim": None, "verdict": "error", "effect": None, "ci": [None, None],
        "p": None, "p_adj": None, "reported": {}, "metrics": {}, "seed": None, "reason": str(error),
        "location": str(where), "expected": None,
    }


def _run_case(hypocheck_context: ProbeContext, request: pytest.FixtureRequest) -> None:
    """The body of every case item: inputs → probe → verdict → record → pytest outcome."""
    item = request.node
    assert isinstance(item, CaseItem)
    case = item.case
    env = dict(hypocheck_context.environment())
    item.user_properties.append((ENV_KEY, env))
    try:
        inputs = hypocheck_context.prepare(case)
        result = case.probe.fn(**inputs, params=case.params, rng=np.random.default_rng(case.seed))
        if not isinstance(result, ProbeResult):
            raise TypeError(f"probe {case.probe.name!r} returned {type(result).__name__}, not ProbeResult")
        verdict = judge(case, result)
    except HypocheckError as exc:
        item.user_properties.append((RECORD_KEY, _error_record(case.case_id, exc, str(case.location))))
        raise
    item.user_properties.append((RECORD_KEY, verdict.to_json()))
    _conclude(item.config, case, verdict)


def _explain(case: Case, verdict: CaseVerdict) -> str:
    lines = [f"claim: {case.hypothesis.claim}", f"verdict: {verdict.verdict} — {verdict.reason}"]
    for check in verdict.checks:
        mark = {True: "✓", False: "✗", None: "?"}[check["holds"]]
        lines.append(f"  {mark} {check['detail']}")
    for metric, value in verdict.reported.items():
        lines.append(f"  reported {metric} = {value:g}, measured {verdict.metrics.get(metric, float('nan')):.4g}")
    lines.append(f"  seed {verdict.seed}; defined at {case.location}")
    return "\n".join(lines)


def _conclude(config: pytest.Config, case: Case, verdict: CaseVerdict) -> None:
    if case.expected is not None:
        if verdict.verdict != case.expected:
            pytest.fail(f"expected verdict {case.expected!r}, got {verdict.verdict!r}\n" + _explain(case, verdict),
                        pytrace=False)
        return
    if verdict.verdict == "fail":
        pytest.fail(_explain(case, verdict), pytrace=False)
    if verdict.verdict == "inconclusive":
        if config.getoption("--inconclusive-fails"):
            pytest.fail(_explain(case, verdict), pytrace=False)
        pytest.skip(f"inconclusive: {verdict.reason}")


class RunSummary:
    """Controller-side plugin: gathers case records (xdist forwards user_properties) and writes the summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: list[dict[str, Any]] = []
        self.environment: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props: dict[str, Any] = dict(report.user_properties)
        if ENV_KEY in props:
            self.environment.update(props[ENV_KEY])
        if RECORD_KEY in props and report.when == "call":
            self.records.append(props[RECORD_KEY])
        elif report.failed and report.when == "setup" and "hypocheck" in report.keywords:
            self.records.append(_error_record(report.nodeid, Exception(str(report.longrepr)), report.nodeid))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self.records:
            return
        cases = finalize(self.records)
        self.summary = build_summary(cases, environment(self.config, self.environment))
        write_summary(reports_dir(self.config), self.summary)
        if (any(c.get("notes") for c in cases) or self.summary["mismatches"]) and exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.summary:
            return
        terminalreporter.section("hypocheck verdicts")
        for line in terminal_lines(self.summary):
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"written: {reports_dir(self.config) / 'summary.json'} and summary.md")


def environment(config: pytest.Config, reported: Mapping[str, Any]) -> dict[str, Any]:
    """Package versions, Python, platform, worker count, and what the project's context reported."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    workers = getattr(config.option, "numprocesses", None)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "xdist_workers": workers if workers else 0,
        **reported,
    }


