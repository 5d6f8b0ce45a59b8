"""The pytest plugin: hypothesis YAML files become parametrized test items with verdicts.

Registered through the ``pytest11`` entry point, so installing the distribution is enough: a project holds
a suite config (``suite.yaml``, or ``--suite-config FILE``) and hypothesis files, and no conftest.

Which files are hypotheses: every ``.yaml`` / ``.yml`` file inside a folder named ``hypotheses`` (at any
depth) and every file named ``*.hyp.yaml`` / ``*.hyp.yml``; the ini option ``hypocheck_files`` (glob
patterns, matched against the file name and the path relative to the rootdir) replaces that rule; a YAML
file named on the command line is always one.

The suite config is read once per process through the backend (``hypocheck.backend``); before any case
runs, the controlling process checks it whole (files, keys, checkpoints) and a broken config ends the run
as one usage error.
"""

from __future__ import annotations

import fnmatch
import os
import platform
import sys
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from . import allure_report, hookspecs
from .backend import DEFAULT_BACKEND, Backend, ProbeContext, RunOptions, backend_factory
from .baseline import Baseline, baseline_path, case_diff, case_fingerprints, fingerprints
from .baseline import document as baseline_document
from .baseline import markdown as drift_markdown
from .baseline import save as save_baseline
from .baseline import terminal_lines as drift_terminal_lines
from .cases import Case, expand
from .errors import HypocheckError, HypothesisFileError, Location
from .registry import ProbeResult
from .schema import hypotheses_from_doc
from .summary import atomic_write_text, build_summary, finalize, markdown, terminal_lines, write_summary
from .verdict import CaseVerdict, judge
from .yamlsource import load_yaml

RECORD_KEY = "hypocheck_case"
ENV_KEY = "hypocheck_environment"
_seen_ids = pytest.StashKey[dict[str, str]]()
_baseline_key = pytest.StashKey[Baseline | None]()
_backend_key = pytest.StashKey[Backend]()
_notes_key = pytest.StashKey[list[str]]()
_empty_dirs_key = pytest.StashKey[list[Path]]()
PACKAGES = ("hypocheck", "arc-state", "torch", "transformers", "numpy", "scipy", "anndata", "pytest", "pytest-xdist")
SUITE_FILE = "suite.yaml"
FILE_RULE = ("a .yaml/.yml file in a folder named 'hypotheses', or a file named *.hyp.yaml; "
             "set the ini option hypocheck_files to change the rule")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hypocheck", "claim checking")
    group.addoption("--hypocheck-reports", default=None, metavar="DIR",
                    help="where summary.json / summary.md go (default: <rootdir>/reports)")
    group.addoption("--inconclusive-fails", action="store_true",
                    help="count inconclusive verdicts as test failures instead of skips")
    group.addoption("--save-baseline", default=None, metavar="NAME",
                    help="store every case's metrics, verdict and fingerprints as baseline NAME")
    group.addoption("--baseline", default=None, metavar="NAME",
                    help="compare this run against baseline NAME: drift beyond each hypothesis's tolerance fails")
    group.addoption("--baseline-dir", default=None, metavar="DIR",
                    help="where baselines are kept (default: <rootdir>/baselines)")
    group.addoption("--suite-config", default=None, metavar="FILE",
                    help="suite YAML naming models, data and SAE (default: $HYPOCHECK_SUITE, the ini option "
                         "hypocheck_suite, or suite.yaml in the rootdir)")
    group.addoption("--artifact-cache", default=None, metavar="DIR",
                    help="shared cache of heavy artifacts (pert representations, ΔY, activations, Jacobians; "
                         "default: <rootdir>/.hypocheck-cache)")
    group.addoption("--no-artifact-cache", action="store_true", help="compute everything afresh, store nothing")
    group.addoption("--clear-artifact-cache", action="store_true", help="drop the artifact cache before the run")
    parser.addini("hypocheck_files", "glob patterns of hypothesis files, matched against the file name and the "
                  "rootdir-relative path (default: YAML files in a 'hypotheses' folder, and *.hyp.yaml)",
                  type="linelist", default=[])
    parser.addini("hypocheck_suite", "the suite config file, relative to the rootdir", default=SUITE_FILE)
    parser.addini("hypocheck_backend", "the backend (entry point in 'hypocheck.backends') that reads the suite "
                  "config", default=DEFAULT_BACKEND)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hypocheck: a claim case generated from a hypothesis YAML file")
    config.stash[_seen_ids] = {}
    config.stash[_notes_key] = []
    config.stash[_empty_dirs_key] = []
    if config.option.help or config.option.version:
        return
    config.stash[_baseline_key] = _load_baseline(config)
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(RunSummary(config), "hypocheck-summary")
        if config.getoption("--clear-artifact-cache"):
            from .cache import ArtifactCache

            ArtifactCache(artifact_cache_dir(config)).clear()  # controller only, before workers start


def artifact_cache_dir(config: pytest.Config) -> Path:
    option = config.getoption("--artifact-cache")
    return (config.invocation_params.dir / option).resolve() if option else Path(config.rootpath) / ".hypocheck-cache"


def suite_file(config: pytest.Config) -> Path:
    """The suite config: ``--suite-config``, else ``$HYPOCHECK_SUITE``, else the ini option (rootdir-relative)."""
    option = config.getoption("--suite-config") or os.environ.get("HYPOCHECK_SUITE")
    if option:
        return (config.invocation_params.dir / option).resolve()
    return Path(config.rootpath) / config.getini("hypocheck_suite")


@pytest.hookimpl(trylast=True)
def pytest_hypocheck_backend(config: pytest.Config) -> Backend:
    """The default backend: the one named by the ini option ``hypocheck_backend``, reading the suite file."""
    path = suite_file(config)
    if not path.is_file():
        raise HypocheckError(
            f"no suite config at {path}",
            hint="write one with `hypocheck init --run-dir NAME=DIR --data FILE.h5ad`, or pass --suite-config FILE",
        )
    factory = backend_factory(config.getini("hypocheck_backend"))
    backend: Backend = factory(path)
    return backend


def backend_of(config: pytest.Config) -> Backend:
    """This process's backend, made once (the first hypothesis file or case that needs it)."""
    if _backend_key not in config.stash:
        config.stash[_backend_key] = config.hook.pytest_hypocheck_backend(config=config)
    return config.stash[_backend_key]


def is_hypothesis_file(path: Path, config: pytest.Config) -> bool:
    """The collection rule (module docstring); a YAML file named on the command line always counts."""
    if path.suffix not in {".yaml", ".yml"}:
        return False
    if any(Path(a.split("::")[0]).resolve() == path.resolve() for a in config.args):
        return True
    patterns = config.getini("hypocheck_files")
    if patterns:
        try:
            rel = path.resolve().relative_to(Path(config.rootpath).resolve()).as_posix()
        except ValueError:
            rel = path.as_posix()
        return any(fnmatch.fnmatch(path.name, p) or fnmatch.fnmatch(rel, p) for p in patterns)
    return "hypotheses" in path.parent.parts or path.name.endswith((".hyp.yaml", ".hyp.yml"))


def _hypothesis_files(config: pytest.Config) -> tuple[list[Path], list[Path]]:
    """Hypothesis files under the run's arguments, and the directory arguments that hold none."""
    ignored = config.getini("norecursedirs")
    found: list[Path] = []
    empty: list[Path] = []
    for arg in config.args:
        start = Path(arg.split("::")[0])
        start = start if start.is_absolute() else config.invocation_params.dir / start
        if start.is_file():
            found += [start] if is_hypothesis_file(start, config) else []
            continue
        before = len(found)
        for root, dirs, files in os.walk(start):
            dirs[:] = [d for d in dirs if not d.startswith(".") and not any(fnmatch.fnmatch(d, p) for p in ignored)]
            found += [p for f in files if is_hypothesis_file(p := Path(root) / f, config)]
        if len(found) == before and start.is_dir():
            empty.append(start)
    return found, empty


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Controller: read the suite config and, unless only collecting, check it whole, once, before any case
    runs (and before xdist starts workers); a broken config is one usage error."""
    config = session.config
    if hasattr(config, "workerinput"):
        return
    files, config.stash[_empty_dirs_key] = _hypothesis_files(config)
    if not files:
        return
    try:
        backend = backend_of(config)
        if not config.option.collectonly:
            config.stash[_notes_key] = backend.validate()
    except HypocheckError as exc:
        raise pytest.UsageError(f"hypocheck: the suite config cannot be used:\n{exc}") from None


def reports_dir(config: pytest.Config) -> Path:
    option = config.getoption("--hypocheck-reports")
    return Path(option) if option else Path(config.rootpath) / "reports"


def baselines_dir(config: pytest.Config) -> Path:
    option = config.getoption("--baseline-dir")
    return (config.invocation_params.dir / option).resolve() if option else Path(config.rootpath) / "baselines"


def _load_baseline(config: pytest.Config) -> Baseline | None:
    """The ``--baseline`` to compare against (each xdist worker loads its own copy: it is one small file)."""
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


def _family(config: pytest.Config, path: str | Path) -> str:
    return allure_report.family_of(path)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if is_hypothesis_file(file_path, parent.config):
        return HypothesisFileCollector.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def hypocheck_context(pytestconfig: pytest.Config) -> ProbeContext:
    """The backend's context: models, data and SAE of the suite config, loaded the first time a case needs them."""
    options = RunOptions(
        cache_dir=artifact_cache_dir(pytestconfig),
        use_cache=not pytestconfig.getoption("--no-artifact-cache"),
        progress=pytestconfig.getoption("capture") == "no",  # progress bars of long Jacobian runs under -s
    )
    return backend_of(pytestconfig).context(options)


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
            # with `-n auto --dist loadgroup`, cases of one model run on one worker: the model loads once
            item.add_marker(pytest.mark.xdist_group(name=str(case.axes.get("model", case.hypothesis.id))))
            for mark in case_marks(case):
                self.config.addinivalue_line("markers", f"{mark}: from hypothesis YAML")
                item.add_marker(getattr(pytest.mark, mark))
            yield item

    def _cases(self) -> list[Case]:
        doc = load_yaml(self.path)
        backend = backend_of(self.config)
        vocabulary = backend.vocabulary()
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
            expanded = expand(hyp, doc, base, vocabulary)
            if expanded:
                backend.check_case(expanded[0])  # the probe and its inputs are the same for every case
            cases += expanded
        return cases


def case_marks(case: Case) -> list[str]:
    """Marks to select a case with ``-m``: its probe's name, its YAML ``marks`` and its ``tags`` (as names:
    characters other than letters, digits and _ become _)."""
    names = [case.probe.name, *case.hypothesis.marks, *case.hypothesis.tags]
    marks = ["".join(ch if ch.isalnum() or ch == "_" else "_" for ch in n) for n in names]
    return list(dict.fromkeys(m if m[:1].isalpha() or m[:1] == "_" else f"_{m}" for m in marks))


class BrokenFileItem(pytest.Item):
    """Stands for a hypothesis file that could not be loaded: fails with the file:line message."""

    def __init__(self, *, error: HypocheckError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        if allure_report.enabled(self.config):
            allure_report.start_broken_file(self.path, _family(self.config, self.path))
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
    reporting = allure_report.enabled(item.config)
    if reporting:
        allure_report.start_case(case, _family(item.config, item.path))
    env = dict(hypocheck_context.environment())
    item.user_properties.append((ENV_KEY, env))
    try:
        inputs = hypocheck_context.prepare(case)
        result = case.probe.fn(**inputs, params=case.params, rng=np.random.default_rng(case.seed))
        if not isinstance(result, ProbeResult):
            raise TypeError(f"probe {case.probe.name!r} returned {type(result).__name__}, not ProbeResult")
        verdict = judge(case, result)
    except Exception as exc:  # a crashing probe or model is an error of the run, not a missing case
        error = _error_record(case.case_id, exc, str(case.location))
        if not isinstance(exc, HypocheckError):
            error["reason"] = f"{type(exc).__name__}: {exc}"
        item.user_properties.append((RECORD_KEY, error))
        raise
    record = verdict.to_json()
    record["nodeid"] = item.nodeid
    drift = _drift(item.config, case, record, hypocheck_context)
    item.user_properties.append((RECORD_KEY, record))
    if reporting:
        allure_report.report_case(case, verdict, result, inputs)
        if drift:
            allure_report.attach_drift(drift)
    if drift:
        pytest.fail(f"{drift}\n{_explain(case, verdict)}", pytrace=False)
    _conclude(item.config, case, verdict)


def _drift(config: pytest.Config, case: Case, record: dict[str, Any], context: ProbeContext) -> str | None:
    """With a baseline option: the case's fingerprints into its record; with ``--baseline``: its drift, as text."""
    baseline = config.stash[_baseline_key]
    if baseline is None and not config.getoption("--save-baseline"):
        return None
    values = [*case.axes.values(), *case.params.model_dump().values()]
    record["fingerprints"] = case_fingerprints(values, context.environment())
    if baseline is None:
        return None
    tolerance = case.hypothesis.tolerance
    entries = baseline.compare(record, tolerance.abs, tolerance.rel)
    record["drift"] = entries
    if not entries:
        return None
    base_fps = (baseline.cases.get(case.case_id) or {}).get("fingerprints") or {}
    return case_diff(baseline.name, baseline.path, entries, record["fingerprints"], base_fps)


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


def merge_environment(into: dict[str, Any], reported: Mapping[str, Any]) -> None:
    """Merge one worker's environment into the run's: nested mappings (e.g. models loaded) are unioned,
    since each xdist worker loads only the models its cases need."""
    for key, value in reported.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            merge_environment(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


class RunSummary:
    """Controller-side plugin: gathers case records (xdist forwards user_properties) and writes the summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: list[dict[str, Any]] = []
        self.environment: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self.drift: dict[str, Any] | None = None
        self.saved_baseline: Path | None = None
        self.collected = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props: dict[str, Any] = dict(report.user_properties)
        if ENV_KEY in props:
            merge_environment(self.environment, props[ENV_KEY])
        if RECORD_KEY in props and report.when == "call":
            self.records.append(props[RECORD_KEY])
        elif report.failed and report.when == "setup" and "hypocheck" in report.keywords:
            self.records.append(_error_record(report.nodeid, Exception(str(report.longrepr)), report.nodeid))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.collected = session.testscollected
        alluredir = allure_report.results_dir(self.config)
        env = environment(self.config, self.environment)
        if alluredir is not None:
            allure_report.write_run_metadata(alluredir, env)
        if not self.records:
            return
        judged = {r["id"]: r["verdict"] for r in self.records}
        cases = finalize(self.records)
        self.summary = build_summary(cases, env)
        baseline = self.config.stash[_baseline_key]
        if baseline is not None:
            self.drift = self._compare(baseline, cases, env, alluredir)
            self.summary["drift"] = self.drift
        out = reports_dir(self.config)
        write_summary(out, self.summary)
        if self.drift is not None:
            atomic_write_text(out / "summary.md", markdown(self.summary) + drift_markdown(self.drift))
        name = self.config.getoption("--save-baseline")
        if name:
            self.saved_baseline = baseline_path(baselines_dir(self.config), name)
            save_baseline(self.saved_baseline, baseline_document(name, cases, env, judged))
        drifted = bool(self.drift and (self.drift["cases"] or self.drift["gone"]))
        if (any(c.get("notes") for c in cases) or self.summary["mismatches"] or drifted) and exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _compare(self, baseline: Baseline, cases: list[dict[str, Any]], env: Mapping[str, Any],
                 alluredir: Path | None) -> dict[str, Any]:
        """The run's drift: per-case entries (items compared themselves; errors and BH flips are added here),
        cases gone since the baseline, and changed fingerprints."""
        seen = {c["id"] for c in cases}
        for case in cases:
            entries = case.get("drift")
            if entries is None:  # an error record: no metrics, compare its verdict
                entries = baseline.compare({"id": case["id"], "verdict": case["verdict"], "metrics": {}}, 0, 0)
                if case["id"] in baseline.cases:
                    entries = [e for e in entries if e["kind"] == "verdict"]
            base = baseline.cases.get(case["id"])
            if base and base["verdict"] != case["verdict"] and not any(e["kind"] == "verdict" for e in entries):
                entries = [*entries, {"kind": "verdict_after_bh", "baseline": base["verdict"],
                                      "current": case["verdict"]}]
            case["drift"] = entries
        selected = _selection(self.config)
        unchecked: list[str] = []
        gone: list[str] = []
        for case_id, base in sorted(baseline.cases.items()):
            if case_id in seen:
                continue
            (gone if selected(base.get("nodeid", case_id)) else unchecked).append(case_id)
        drift = {
            "baseline": baseline.name,
            "path": str(baseline.path),
            "checkpoints": baseline.changed_fingerprints(fingerprints(env)),
            "cases": {c["id"]: c["drift"] for c in cases if c["drift"]},
            "gone": gone,
            "unchecked": unchecked,
        }
        if alluredir is not None:
            for case_id in gone:
                base = baseline.cases[case_id]
                diff = case_diff(baseline.name, baseline.path, [{"kind": "gone"}], {}, base.get("fingerprints") or {})
                allure_report.write_gone_result(alluredir, case_id, diff, _family(self.config, base["nodeid"]))
        return drift

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        empty = self.config.stash[_empty_dirs_key]
        if empty and not self.collected:
            for directory in empty:
                terminalreporter.write_line(f"hypocheck: no hypothesis files under {directory} ({FILE_RULE})",
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
            if self.config.getoption("keyword") or self.config.getoption("markexpr"):
                terminalreporter.write_line(
                    f"note: the run was narrowed with -k/-m; the baseline holds only its {len(self.summary['cases'])} "
                    "cases", yellow=True)


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
        **({"notes": notes} if (notes := config.stash.get(_notes_key, None)) else {}),
    }


