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
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import hookspecs, progress, reporters
from .backend import (
    DEFAULT_BACKEND,
    Backend,
    ProbeContext,
    RunOptions,
    SchedulingBackend,
    SuiteDefaults,
    backend_factory,
)
from .cases import Case, expand, with_suite_defaults
from .errors import HypocheckError, HypothesisFileError
from .items import BrokenFileItem, CaseItem, run_case
from .records import CaseVerdict
from .runsummary import (
    BASELINE_KEY,
    EMPTY_DIRS_KEY,
    NOTES_KEY,
    RunSummary,
    finished_line,
    load_baseline,
)
from .schema import hypotheses_from_doc
from .yamlsource import load_yaml

_seen_ids = pytest.StashKey[dict[str, str]]()
_backend_key = pytest.StashKey[Backend]()
SUITE_FILE = "suite.yaml"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hypocheck", "claim checking")
    group.addoption("--hypocheck-reports", default=None, metavar="DIR",
                    help="where summary.json / summary.md go (default: <rootdir>/reports)")
    group.addoption("--inconclusive-fails", action="store_true",
                    help="end the run with a failure status when any case is inconclusive (cases stay skipped)")
    group.addoption("--save-baseline", default=None, metavar="NAME",
                    help="store every case's metrics, verdict and fingerprints as baseline NAME")
    group.addoption("--baseline", default=None, metavar="NAME",
                    help="compare this run against baseline NAME: verdicts that flip and metrics that move beyond "
                         "their uncertainty are reported as drift, and the run ends with a failure status")
    group.addoption("--baseline-dir", default=None, metavar="DIR",
                    help="where baselines are kept (default: <rootdir>/baselines)")
    group.addoption("--drift-tolerance", type=float, default=0.5, metavar="FRACTION",
                    help="a metric drifts when it moves by more than FRACTION of its own 95%% CI width "
                         "(default: %(default)s; a hypothesis's tolerance: replaces this)")
    group.addoption("--drift-verdicts-only", action="store_true",
                    help="compare verdicts with the baseline, not metrics")
    group.addoption("--suite-config", default=None, metavar="FILE",
                    help="suite YAML naming models, data and SAE (default: $HYPOCHECK_SUITE, the ini option "
                         "hypocheck_suite, or suite.yaml in the rootdir)")
    group.addoption("--artifact-cache", default=None, metavar="DIR",
                    help="shared cache of heavy artifacts (pert representations, ΔY, activations, Jacobians; "
                         "default: <rootdir>/.hypocheck-cache)")
    group.addoption("--no-artifact-cache", action="store_true", help="compute everything afresh, store nothing")
    group.addoption("--clear-artifact-cache", action="store_true", help="drop the artifact cache before the run")
    group.addoption("--ray", default=None, metavar="ADDRESS",
                    help="compute heavy artifacts' chunks as tasks on the Ray cluster at ADDRESS ('auto' = the one "
                         "`ray start` made on this node; HOST:PORT); needs pip install 'hypocheck[ray]' and a "
                         "cache every node reaches (--artifact-cache on a shared path or an s3:// URL)")
    group.addoption("--hypocheck-progress", default=None, choices=progress.MODES,
                    help="show each running case's stage and ETA, and a line per finished case: auto (a live "
                         "status line on a terminal, plain lines otherwise), lines, off (default: the ini option "
                         "hypocheck_progress, else auto)")
    parser.addini("hypocheck_files", "glob patterns of hypothesis files, matched against the file name and the "
                  "rootdir-relative path (default: YAML files in a 'hypotheses' folder, and *.hyp.yaml)",
                  type="linelist", default=[])
    parser.addini("hypocheck_suite", "the suite config file, relative to the rootdir", default=SUITE_FILE)
    parser.addini("hypocheck_progress", "progress display: auto, lines or off (--hypocheck-progress)",
                  default="auto")
    parser.addini("hypocheck_backend", "the backend (entry point in 'hypocheck.backends') that reads the suite "
                  "config", default=DEFAULT_BACKEND)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hypocheck: a claim case generated from a hypothesis YAML file")
    config.stash[_seen_ids] = {}
    config.stash[NOTES_KEY] = []
    config.stash[EMPTY_DIRS_KEY] = []
    if config.option.help or config.option.version:
        return
    config.stash[BASELINE_KEY] = load_baseline(config)
    _configure_progress(config)
    reporters.register(config)
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(RunSummary(config), "hypocheck-summary")
        if config.getoption("--clear-artifact-cache"):
            from .cache import ArtifactCache

            ArtifactCache(artifact_cache_dir(config)).clear()  # controller only, before workers start


PROGRESS_DIR = "hypocheck_progress_dir"
PROGRESS_PLUGIN = "hypocheck-progress"


def _configure_progress(config: pytest.Config) -> None:
    """Workers publish their stages into the run's progress folder; the controller renders them."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        if workerinput.get(PROGRESS_DIR):
            worker = str(workerinput["workerid"])
            path = Path(workerinput[PROGRESS_DIR]) / f"{worker}.json"
            progress.install(progress.Publisher(path, worker).start())
        return
    try:
        mode = progress.resolve_mode(config.getoption("--hypocheck-progress"), config.getini("hypocheck_progress"),
                                     sys.stdout.isatty())
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if mode != "off" and not config.option.collectonly:
        config.pluginmanager.register(ProgressPlugin(config, live=mode == "live"), PROGRESS_PLUGIN)


class ProgressPlugin:
    """Controller side of the progress display: a per-run folder the workers write their stages to, and the
    reporter thread that renders them (``hypocheck.progress``)."""

    def __init__(self, config: pytest.Config, live: bool) -> None:
        self.config = config
        self.live = live
        self.directory = Path(tempfile.mkdtemp(prefix="hypocheck-progress-"))
        self.reporter: progress.ProgressReporter | None = None
        self._terminal: Any = None
        self._own: progress.Publisher | None = None
        self._previous: progress.Publisher | None = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[PROGRESS_DIR] = str(self.directory)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is None:
            return
        self._terminal = terminal._tw
        screen = progress.Screen(self._terminal._file, self.live, width=lambda: int(self._terminal.fullwidth))
        self._terminal._file = screen
        self.reporter = progress.ProgressReporter(self.directory, screen)
        self.reporter.start()
        if not self.config.pluginmanager.has_plugin("dsession"):  # no xdist workers: this process runs the cases
            self._own = progress.Publisher(self.directory / "main.json", "").start()
            self._previous = progress.install(self._own)

    def pytest_hypocheck_case_recorded(self, verdict: CaseVerdict, duration: float) -> None:
        """Print a finished case's line, read from its record."""
        if self.reporter is not None:
            self.reporter.finished(finished_line(verdict, duration))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self._own is not None:  # a run inside a run (pytester) gives the outer one its publisher back
            progress.install(self._previous)
            self._own.close()
            self._own = None
        if self.reporter is not None:
            self.reporter.stop()
            self.reporter = None
        if self._terminal is not None and isinstance(self._terminal._file, progress.Screen):
            self._terminal._file = self._terminal._file._stream

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def artifact_cache_dir(config: pytest.Config) -> Path | str:
    """``--artifact-cache``: a directory (relative to where pytest was started) or an fsspec URL (kept as given)."""
    option = config.getoption("--artifact-cache")
    if option and "://" in option:
        return str(option)
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
    files, config.stash[EMPTY_DIRS_KEY] = _hypothesis_files(config)
    if not files:
        return
    try:
        backend = backend_of(config)
        if not config.option.collectonly:
            config.stash[NOTES_KEY] = backend.validate()
    except HypocheckError as exc:
        raise pytest.UsageError(f"hypocheck: the suite config cannot be used:\n{exc}") from None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Costliest first, cases that share heavy artifacts side by side (longest-processing-time order).

    xdist hands workers consecutive runs of items, so a group's artifact is computed once by one worker while
    the other computes the next group's, and both finish together. Order never changes results; a backend
    that does not declare :class:`~hypocheck.backend.SchedulingBackend`, or a reordering plugin running after
    this, wins.
    """
    if not any(isinstance(i, CaseItem) for i in items):
        return
    backend = backend_of(config)
    if not isinstance(backend, SchedulingBackend):
        return
    hint = backend.schedule
    keys = {id(item): hint(item.case) for item in items if isinstance(item, CaseItem)}
    group_cost: dict[str, float] = {}
    for cost, group in keys.values():
        group_cost[group] = group_cost.get(group, 0.0) + cost
    order = {id(item): i for i, item in enumerate(items)}

    def key(item: pytest.Item) -> tuple[float, str, int]:
        if id(item) not in keys:
            return (0.0, "", order[id(item)])
        group = keys[id(item)][1]
        return (-group_cost[group], group, order[id(item)])

    items.sort(key=key)


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
        ray_address=pytestconfig.getoption("--ray"),
    )
    return backend_of(pytestconfig).context(options)


def loadgroup_suffix(config: pytest.Config, case: Case) -> str:
    """``@<group>`` on an xdist worker under ``--dist loadgroup``: the scheduler runs the cases of one suffix on
    one worker, so the heavy artifacts they share are computed by the worker that uses them while the other
    workers compute other groups' (the group of :func:`pytest_collection_modifyitems`' order: the backend's
    ``schedule`` hint, else the case's model, else its hypothesis).

    xdist's ``xdist_group`` mark would put that suffix there by rewriting the node id after collection, which
    pytest 9.2 no longer lets it do (pytest-xdist issue 1386): the cases were spread over the workers, which
    then waited on each other's artifacts. Naming the item does the same on every version.
    """
    if not getattr(config.option, "loadgroup", False):
        return ""
    backend = backend_of(config)
    if isinstance(backend, SchedulingBackend):
        return f"@{backend.schedule(case)[1]}"
    return f"@{case.axes.get('model', case.hypothesis.id)}"


class HypothesisFileCollector(pytest.File):
    """One YAML file: its hypotheses expanded into case items, or one error item saying why it is broken."""

    def collect(self) -> Iterator[pytest.Item]:
        try:
            cases = self._cases()
        except HypocheckError as exc:
            yield BrokenFileItem.from_parent(self, name="<load>", error=exc)
            return
        for case in cases:
            item = CaseItem.from_parent(self, name=case.name + loadgroup_suffix(self.config, case), callobj=run_case)
            item.case = case
            item.add_marker(pytest.mark.hypocheck)
            for mark in case_marks(case):
                self.config.addinivalue_line("markers", f"{mark}: from hypothesis YAML")
                item.add_marker(getattr(pytest.mark, mark))
            yield item

    def _cases(self) -> list[Case]:
        doc = load_yaml(self.path)
        backend = backend_of(self.config)
        vocabulary = backend.vocabulary()
        defaults = backend.hypothesis_defaults() if isinstance(backend, SuiteDefaults) else {}
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
            expanded = expand(with_suite_defaults(hyp, defaults), doc, base, vocabulary)
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """A case's name goes to the progress display while it runs."""
    if not isinstance(item, CaseItem):
        return (yield)
    progress.begin_case(item.case.case_id)
    try:
        return (yield)
    finally:
        progress.end_case()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A case that could not run is reported as pytest reports a setup error; a project error reads as its message
    (file, line, key and what is valid), not as a traceback."""
    report = yield
    if isinstance(item, (CaseItem, BrokenFileItem)) and call.when == "setup" and call.excinfo is not None \
            and isinstance(call.excinfo.value, HypocheckError):
        report.longrepr = item.repr_failure(call.excinfo)
    return report
