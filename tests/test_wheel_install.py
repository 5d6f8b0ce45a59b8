"""The package as a user gets it: the wheel built from this repository, installed into a fresh virtual environment
outside the repository, runs a hypothesis file in a directory of its own (a suite.yaml, one hypothesis file, no
conftest.py anywhere up its tree) with nothing but ``python -m pytest``.

Steps (each timed; the timings, the wheel's size and its file count are printed at the end of the module); one
test runs them all, so that an xdist run builds one wheel and one venv:

1. build: the working tree is copied to a temporary directory (so that the build's ``build/`` and ``*.egg-info``
   never land in the repository) and ``pip wheel --no-deps`` builds it, with build isolation. The wheel must hold
   the three folders mapped into the one ``hypocheck`` namespace and the entry points, and none of the
   repository's tools (the demo generator, the calibration scripts), tests, benchmarks or data files.
2. install: a fresh venv (``python -m venv``, its own pip) gets the wheel with ``--no-deps``. Its dependencies
   (torch, arc-state, ...: gigabytes) come read-only from this repository's venv through a ``.pth`` file that names
   that venv's site-packages: a plain path line does not run the editable-install finder that lives there, so
   ``hypocheck`` must import from the new venv only, and the repository's top-level folders (``probes``,
   ``fixtures``) must not import at all. ``HYPOCHECK_WHEEL_FULL=1`` instead installs the wheel with its
   dependencies from the package index into a clean venv (slow: several GB), and checks them with ``pip check``.
3. run: ``<venv>/bin/python -m pytest`` in the user's directory, against the demo world (absolute paths), passes
   its one case and writes reports/summary.json; a suite.yaml with a misspelt key is one usage error (exit 4)
   naming the file, line and key.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "tools" / "demo"
FULL = os.environ.get("HYPOCHECK_WHEEL_FULL") == "1"

# what the copy of the working tree leaves out (build outputs, caches, the venv: see .gitignore)
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                     ".*_cache", ".hypothesis", ".hypocheck-cache", "node_modules", "reports",
                                     ".typecheck")

ENTRY_POINTS = {
    "pytest11": {"hypocheck": "hypocheck.plugin"},
    "hypocheck.probes": {"hypocheck": "hypocheck.probes"},
    "hypocheck.inputs": {"hypocheck": "hypocheck.fixtures.inputs",
                         "hypocheck-jacobians": "hypocheck.fixtures.routing_inputs"},
    "hypocheck.backends": {"suite": "hypocheck.fixtures.backend:SuiteBackend.from_file"},
    "hypocheck.adapters": {"arc-state": "hypocheck.fixtures.st_adapter:STAdapter"},
}
NAMESPACE = {"hypocheck": "hypocheck", "probes": "hypocheck/probes", "fixtures": "hypocheck/fixtures"}  # package-dir
FORBIDDEN_PREFIXES = ("tools/", "hypocheck/tools/", "tests/", "bench/",
                      "hypotheses/", "probes/", "fixtures/", "hypocheck/tests/")
DATA_SUFFIXES = (".h5ad", ".ckpt", ".pt", ".pth", ".torch", ".pkl", ".safetensors", ".npz", ".npy", ".pyc")
MAX_WHEEL_BYTES = 2 * 1024 * 1024  # ~150 kB of code: a data file or a checkpoint would show here first

SUITE_YAML = f"""\
# a user's suite config: the repository's demo world, by absolute path
models:
  fewshot: {{run_dir: {DEMO / "runs" / "fewshot"}, checkpoint: final}}
  zeroshot: {{run_dir: {DEMO / "runs" / "zeroshot"}, checkpoint: final}}
data:
  path: {DEMO / "world" / "demo.h5ad"}
  gene_key: gene
  cell_line_key: cell_line
  expr_key: X_hvg
  batch_key: batch
  control_label: non-targeting
cell_lines: [hepg2, jurkat]
control_sentence: {{cells: 64, seed: 42, cell_set_len: sentence}}
"""

CLAIM_YAML = """\
id: mitoribosome_pert_clustering
claim: Knockdowns of the mitoribosome point the same way in pert_encoder space
source: {notebook: NB02, note: "a user's hypothesis file, run from the installed wheel"}
probe: pert_embedding_clustering
cases:
  model: [fewshot]
  gene_set: [mitoribosome]
params: {null_sets: 200, bootstrap: 200}
expect:
  - z > 2
"""
CASE_ID = "claim::mitoribosome_pert_clustering[fewshot-mitoribosome]"

# run in the new venv: where everything imports from, and that every module of the wheel imports there
PROBE_SCRIPT = r"""
import importlib, importlib.metadata as md, importlib.util, json, pkgutil, sys, sysconfig
import hypocheck, hypocheck.fixtures, hypocheck.probes
groups = json.loads(sys.argv[1])
out = {"purelib": sysconfig.get_paths()["purelib"], "sys_path": sys.path,
       "meta_path": [type(f).__module__ + "." + type(f).__qualname__ for f in sys.meta_path],
       "files": {n: sys.modules[n].__file__ for n in ("hypocheck", "hypocheck.probes", "hypocheck.fixtures")},
       "top_level_found": {n: importlib.util.find_spec(n) is not None
                           for n in ("probes", "fixtures", "tests", "tools")},
       "dist_location": str(md.distribution("hypocheck").locate_file("")), "version": md.version("hypocheck"),
       "entry_points": {}, "entry_point_files": {}, "modules": {}, "import_errors": {}}
for group in groups:
    eps = [e for e in md.entry_points(group=group) if e.dist is not None and e.dist.name == "hypocheck"]
    out["entry_points"][group] = {e.name: e.value for e in eps}
    for e in eps:
        try:
            e.load()
            out["entry_point_files"][f"{group}:{e.name}"] = sys.modules[e.module].__file__
        except Exception as exc:
            out["import_errors"][f"entry point {group}:{e.name}"] = f"{type(exc).__name__}: {exc}"
def onerror(name):
    out["import_errors"][name] = repr(sys.exc_info()[1])
for info in pkgutil.walk_packages(hypocheck.__path__, "hypocheck.", onerror=onerror):
    try:
        out["modules"][info.name] = importlib.import_module(info.name).__file__
    except Exception as exc:
        out["import_errors"][info.name] = f"{type(exc).__name__}: {exc}"
print("HYPOCHECK-PROBE " + json.dumps(out))
"""

TIMINGS: dict[str, float] = {}  # step -> seconds, printed at the end of the module
NOTES: list[str] = []


@dataclass(frozen=True)
class Built:
    wheel: Path
    names: list[str]
    source: Path  # the copy of the working tree the wheel was built from


@dataclass(frozen=True)
class Installed:
    mode: str  # fast (dependencies from the repository venv) | full (from the package index)
    venv: Path
    python: Path
    purelib: Path
    deps_purelib: Path | None  # the repository venv's site-packages (the .pth), None in full mode


def run(cmd: Sequence[str | Path], *, what: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, stdout and stderr together; on failure say what was being done and show the output's tail."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output or ""
        pytest.fail(f"{what}: timed out after {timeout:.0f} s: {' '.join(map(str, cmd))}\n--- output (tail) ---\n"
                    f"{output[-6000:]}", pytrace=False)
    TIMINGS[what] = TIMINGS.get(what, 0.0) + time.perf_counter() - start
    if check and proc.returncode != 0:
        pytest.fail(f"{what}: exit status {proc.returncode}: {' '.join(map(str, cmd))}\n--- output (tail) ---\n"
                    f"{proc.stdout[-6000:]}", pytrace=False)
    return proc


def parse_entry_points(text: str) -> dict[str, dict[str, str]]:
    """entry_points.txt: ``[group]`` headers, then ``name = value`` lines."""
    groups: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = groups.setdefault(line[1:-1].strip(), {})
            continue
        name, _, value = line.partition("=")
        current[name.strip()] = value.strip()
    return groups


def user_env(venv: Path) -> dict[str, str]:
    """The environment of a user who activated the venv: none of this session's PYTHONPATH, pytest or hypocheck
    variables (HYPOCHECK_SUITE would point the run at another suite config)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PYTEST_", "HYPOCHECK_", "VIRTUAL_ENV", "CONDA_", "COV_CORE"))}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")  # a shared, small machine: one torch thread is plenty for one case
    return env


def is_within(path: Path | str, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


@pytest.fixture(scope="module")
def workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """One temporary directory outside the repository for the whole module, removed at its end."""
    root = Path(tempfile.mkdtemp(prefix="hypocheck-wheel-")).resolve()
    assert not is_within(root, REPO_ROOT), f"the temporary directory {root} is inside the repository"
    yield root
    start = time.perf_counter()
    shutil.rmtree(root)
    TIMINGS["clean up"] = time.perf_counter() - start
    assert not root.exists(), f"{root} was not removed"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and TIMINGS:  # (none on an xdist worker)
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line("wheel install timings (seconds):")
            for what, seconds in TIMINGS.items():
                reporter.write_line(f"  {seconds:7.1f}  {what}")
            for note in NOTES:
                reporter.write_line(f"  {note}")


@pytest.fixture(scope="module")
def built(workdir: Path) -> Built:
    source = workdir / "source"
    start = time.perf_counter()
    shutil.copytree(REPO_ROOT, source, ignore=COPY_IGNORE, symlinks=True)
    TIMINGS["copy the working tree"] = time.perf_counter() - start
    dist = workdir / "dist"
    run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "-w", dist],
        what="build the wheel (pip wheel, build isolation)", cwd=workdir, timeout=600)
    wheels = sorted(dist.glob("hypocheck-*.whl"))
    assert len(wheels) == 1, f"expected one hypocheck wheel in {dist}, found {[w.name for w in dist.iterdir()]}"
    with zipfile.ZipFile(wheels[0]) as zf:
        names = zf.namelist()
    return Built(wheels[0], names, source)


def install(workdir: Path, built: Built, *, full: bool) -> Installed:
    """A fresh venv with the wheel: its dependencies from this repository's venv (.pth), or, ``full``, from the
    package index."""
    mode = "full" if full else "fast"
    venv = workdir / f"venv-{mode}"
    what = f"[{mode}] create a fresh venv (python -m venv, with pip)"
    run([sys.executable, "-m", "venv", venv], what=what, cwd=workdir, timeout=300)
    python = venv / "bin" / "python"
    env = user_env(venv)
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       what=what, cwd=workdir, env=env).stdout.strip())
    assert is_within(purelib, venv), f"the new venv's site-packages {purelib} is not inside {venv}"
    if full:
        run([python, "-m", "pip", "install", "torch==2.13.0"], what="[full] pip install torch==2.13.0",
            cwd=workdir, env=env, timeout=3600)
        run([python, "-m", "pip", "install", built.wheel], what="[full] pip install the wheel with its dependencies",
            cwd=workdir, env=env, timeout=3600)
        return Installed(mode, venv, python, purelib, None)
    # the wheel first, the .pth after: pip must neither see nor touch the repository venv's editable hypocheck
    run([python, "-m", "pip", "install", "--no-deps", built.wheel], what="[fast] pip install --no-deps the wheel",
        cwd=workdir, env=env, timeout=300)
    deps = Path(sysconfig.get_paths()["purelib"])  # this (the repository's) venv's site-packages
    assert (deps / "torch").is_dir(), f"the repository venv's site-packages {deps} holds no torch"
    (purelib / "_hypocheck_repo_venv_deps.pth").write_text(f"{deps}\n")
    return Installed(mode, venv, python, purelib, deps)


def make_user_project(directory: Path, suite_yaml: str) -> Path:
    """A user's directory: suite.yaml and hypotheses/claim.yaml, nothing else, no conftest.py up its tree."""
    (directory / "hypotheses").mkdir(parents=True)
    (directory / "suite.yaml").write_text(suite_yaml)
    (directory / "hypotheses" / "claim.yaml").write_text(CLAIM_YAML)
    conftests = [d / "conftest.py" for d in (directory, *directory.parents) if (d / "conftest.py").exists()]
    assert not conftests, f"a conftest.py up the user's directory would make the test meaningless: {conftests}"
    return directory


def check_wheel_contents(built: Built) -> None:
    names = set(built.names)
    size = built.wheel.stat().st_size
    NOTES.append(f"wheel: {built.wheel.name}, {size:,} bytes, {len(names)} files")
    version = tomllib.loads((built.source / "pyproject.toml").read_text())["project"]["version"]
    distinfo = f"hypocheck-{version}.dist-info/"

    # every module of the three folders (sub-packages too), under the one namespace (the tools live outside them)
    expected = set()
    for folder, target in NAMESPACE.items():
        for path in (built.source / folder).rglob("*.py"):
            expected.add(f"{target}/{path.relative_to(built.source / folder).as_posix()}")
    expected |= {"hypocheck/plugin.py", "hypocheck/probes/__init__.py", "hypocheck/probes/clustering.py",
                 "hypocheck/fixtures/st_adapter.py", "hypocheck/fixtures/backend.py",
                 "hypocheck/fixtures/suite.example.yaml"}
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}; it holds {sorted(names)}"

    forbidden = sorted(n for n in names if n.startswith(FORBIDDEN_PREFIXES) or n.endswith(DATA_SUFFIXES)
                       or "__pycache__" in n)
    assert not forbidden, f"the wheel holds repository tools, tests or data files: {forbidden}"
    stray = sorted(n for n in names if not n.startswith(("hypocheck/", distinfo)))
    assert not stray, f"the wheel holds files outside hypocheck/ and {distinfo}: {stray}"
    assert size < MAX_WHEEL_BYTES, f"the wheel is {size:,} bytes (limit {MAX_WHEEL_BYTES:,}): {sorted(names)}"

    with zipfile.ZipFile(built.wheel) as zf:
        entry_points = parse_entry_points(zf.read(distinfo + "entry_points.txt").decode())
        top_level = zf.read(distinfo + "top_level.txt").decode().split()
        record = {line.split(",")[0] for line in zf.read(distinfo + "RECORD").decode().splitlines() if line}
        metadata = zf.read(distinfo + "METADATA").decode()
    for group, entries in ENTRY_POINTS.items():
        assert entry_points.get(group) == entries, (
            f"entry points of {group!r} in the wheel: {entry_points.get(group)}, expected {entries}")
    assert "hypocheck-schema" in entry_points.get("console_scripts", {}), f"no hypocheck-schema: {entry_points}"
    assert top_level == ["hypocheck"], f"top_level.txt: {top_level} (one namespace: hypocheck)"
    assert record == names, f"RECORD and the zip disagree: {sorted(record ^ names)}"

    # the dependencies a full install resolves are the ones pyproject.toml declares
    declared = tomllib.loads((built.source / "pyproject.toml").read_text())["project"]["dependencies"]
    requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines()
                if line.startswith("Requires-Dist: ") and "extra ==" not in line]
    assert sorted(r.replace(" ", "") for r in requires) == sorted(d.replace(" ", "") for d in declared), (
        f"the wheel's Requires-Dist {requires} are not pyproject.toml's dependencies {declared}")


def check_imports_only_from_the_venv(installed: Installed) -> None:
    proc = run([installed.python, "-c", PROBE_SCRIPT, json.dumps([*ENTRY_POINTS, "console_scripts"])],
               what=f"[{installed.mode}] import every module of the installed package", cwd=installed.venv,
               env=user_env(installed.venv), timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("HYPOCHECK-PROBE ")), None)
    assert line is not None, f"the import check printed no result:\n{proc.stdout[-4000:]}"
    info = json.loads(line.removeprefix("HYPOCHECK-PROBE "))

    for name, file in info["files"].items():
        assert is_within(file, installed.purelib), f"{name} imports from {file}, not from {installed.purelib}"
    assert not is_within(info["files"]["hypocheck"], REPO_ROOT), "hypocheck imports from the repository"
    found = [name for name, yes in info["top_level_found"].items() if yes]
    assert not found, f"the repository's top-level folders import in the user's venv: {found} (sys.path: " \
                      f"{info['sys_path']})"
    editable = [f for f in info["meta_path"] if "editable" in f.lower()]
    assert not editable, f"an editable-install finder is active in the new venv: {editable}"
    assert is_within(info["dist_location"], installed.purelib), (
        f"importlib.metadata finds the hypocheck distribution at {info['dist_location']}, not in the new venv")
    if installed.deps_purelib is not None:
        assert str(installed.deps_purelib) in info["sys_path"], "the .pth did not put the dependencies on sys.path"
    else:
        leaked = [p for p in info["sys_path"] if is_within(p, REPO_ROOT)]
        assert not leaked, f"full mode: the repository is on sys.path: {leaked}"

    assert not info["import_errors"], f"modules of the installed package fail to import: {info['import_errors']}"
    outside = {m: f for m, f in info["modules"].items() if not is_within(f, installed.purelib)}
    assert not outside, f"modules imported from outside the new venv: {outside}"
    assert {"hypocheck.plugin", "hypocheck.probes.clustering", "hypocheck.fixtures.st_adapter"} <= set(info["modules"])
    for group, entries in ENTRY_POINTS.items():
        assert info["entry_points"].get(group) == entries, (
            f"installed entry points of {group!r}: {info['entry_points'].get(group)}, expected {entries}")
    for key, file in info["entry_point_files"].items():
        assert is_within(file, installed.purelib), f"entry point {key} loads {file}, outside the new venv"


def check_console_scripts(installed: Installed) -> None:
    proc = run([installed.venv / "bin" / "hypocheck-schema"], what=f"[{installed.mode}] run hypocheck-schema",
               cwd=installed.venv, env=user_env(installed.venv), timeout=120)
    schema = json.loads(proc.stdout)
    assert schema.get("title") == "hypocheck hypothesis file" and '"probe"' in proc.stdout, (
        f"hypocheck-schema printed no hypothesis schema: {proc.stdout[:1000]}")

    script = installed.venv / "bin" / "hypocheck"
    if script.exists():  # the `hypocheck` CLI (hypocheck.cli: `hypocheck init`), where the wheel has it
        proc = run([script, "--help"], what=f"[{installed.mode}] run `hypocheck --help`", cwd=installed.venv,
                   env=user_env(installed.venv), timeout=120)
        assert "init" in proc.stdout, f"`hypocheck --help` does not mention `init`:\n{proc.stdout}"
    else:
        NOTES.append("no `hypocheck` console script in the wheel: `hypocheck --help` not checked")


def check_user_run(installed: Installed, user_project: Path) -> None:
    proc = run([installed.python, "-m", "pytest", "-p", "no:cacheprovider"],
               what=f"[{installed.mode}] pytest in the user's directory (1 case, demo world)", cwd=user_project,
               env=user_env(installed.venv), timeout=600, check=False)
    out = proc.stdout
    assert proc.returncode == 0, f"pytest in the user's directory: exit status {proc.returncode}\n{out[-6000:]}"
    assert f"rootdir: {user_project}" in out, f"pytest chose another rootdir than the user's directory:\n{out[:2000]}"
    assert "hypocheck-" in out.split("plugins:", 1)[-1].splitlines()[0], f"plugin not loaded:\n{out[:2000]}"
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"=+ 1 passed(, \d+ warnings?)? in .+ =+", last), f"expected one case to pass:\n{out[-6000:]}"

    summary_path = user_project / "reports" / "summary.json"
    assert summary_path.is_file(), f"no {summary_path}; the run wrote: {sorted(map(str, user_project.rglob('*')))}"
    summary = json.loads(summary_path.read_text())
    verdicts = {case["id"]: case["verdict"] for case in summary["cases"]}
    assert verdicts == {CASE_ID: "pass"}, f"summary.json verdicts: {verdicts}"
    (case,) = summary["cases"]  # what was measured is named: the features, the null, the claim's kind
    measured = case["measured"]
    assert {k: measured[k] for k in ("features", "model")} == {"features": "pert_encoder output r_k",
                                                               "model": "fewshot"}, measured
    assert re.fullmatch(r"(\d+) of \1", measured["members"]), measured  # the demo set is used whole
    assert "matched" in case["null"]["kind"] and case["claim_kind"] == "presence", case["null"]
    assert summary["counts"] == {"pass": 1, "fail": 0, "inconclusive": 0, "error": 0}, summary["counts"]
    assert Path(summary["environment"]["suite_config"]).resolve() == (user_project / "suite.yaml").resolve()
    assert not (user_project / "conftest.py").exists()


def check_broken_suite_config(installed: Installed, workdir: Path) -> None:
    broken = SUITE_YAML.replace("  gene_key: gene", "  gene_kye: gene")
    assert broken != SUITE_YAML
    project = make_user_project(workdir / f"project-{installed.mode}-broken", broken)
    line = broken.splitlines().index("  gene_kye: gene") + 1

    proc = run([installed.python, "-m", "pytest", "-p", "no:cacheprovider"],
               what=f"[{installed.mode}] pytest, suite.yaml with a misspelt key (usage error)", cwd=project,
               env=user_env(installed.venv), timeout=300, check=False)
    out = proc.stdout
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, (
        f"a broken suite config: exit status {proc.returncode}, expected 4 (usage error)\n{out[-6000:]}")
    where = f"{project / 'suite.yaml'}:{line}:3 (at data.gene_kye): unknown key 'gene_kye'"
    assert where in out, f"the error does not name the file, line and key ({where!r}):\n{out[-6000:]}"
    assert "did you mean 'gene_key'" in out, f"no close match offered:\n{out[-6000:]}"
    errors = [ln for ln in out.splitlines() if ln.startswith("ERROR")]
    assert len(errors) == 1 and out.count("unknown key") == 1, f"expected exactly one error:\n{out[-6000:]}"
    assert "Traceback" not in out, f"a traceback instead of a usage error:\n{out[-6000:]}"
    assert not (project / "reports" / "summary.json").exists(), "a run with a broken config wrote a summary"


# A third-party package of its own: a new input kind, its provider for the shipped suite backend and a probe that
# takes it, registered through entry points only (no conftest, no edit of hypocheck).
PLUGIN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "hypocheck-norms"
version = "0.1.0"

[project.entry-points."hypocheck.probes"]
norms = "hypocheck_norms.probe"

[project.entry-points."hypocheck.inputs"]
norms = "hypocheck_norms.provider"
"""
PLUGIN_KIND = """\
from dataclasses import dataclass

import numpy as np

from hypocheck.inputs import InputRecord


@dataclass(frozen=True)
class PertNorms(InputRecord):
    \"\"\"Each knockdown's pert-representation norm and a set's members among them.\"\"\"

    norms: np.ndarray
    members: np.ndarray
"""
PLUGIN_PROBE = """\
import numpy as np

from hypocheck.registry import ProbeResult, probe

from .kinds import PertNorms


@probe("pert_norm_ratio", takes=PertNorms, axes=("model", "gene_set"), metrics=("norm_ratio", "n_members", "n_kds"),
       effect="norm_ratio", kinds={"count": ("n_members", "n_kds")})
def pert_norm_ratio(*, norms, members, params, rng):
    \"\"\"Mean norm of a set's members' pert representations over the mean of all knockdowns.\"\"\"
    ratio = float(np.mean(norms[members]) / np.mean(norms))
    return ProbeResult(metrics={"norm_ratio": ratio, "n_members": len(members), "n_kds": len(norms)})
"""
PLUGIN_PROVIDER = """\
import numpy as np

from hypocheck.fixtures.providers import provides

from .kinds import PertNorms


@provides(PertNorms)
def pert_norms(art, case):
    names, reps = art.embeddings.pert_embeddings(str(case.axes["model"]))
    members = art.suite.members(names, str(case.axes["gene_set"]))
    return PertNorms(norms=np.linalg.norm(reps, axis=1), members=members,
                     notes=("norms from the hypocheck-norms provider",))
"""
PLUGIN_CLAIM = """\
id: mitoribosome_norms
claim: Mitoribosome knockdowns have pert representations of ordinary length
source: {note: "a third-party probe on the shipped backend"}
probe: pert_norm_ratio
cases:
  model: [fewshot]
  gene_set: [mitoribosome]
expect:
  - norm_ratio > 0.5
  - norm_ratio < 2
"""
PLUGIN_CASE_ID = "claim::mitoribosome_norms[fewshot-mitoribosome]"
RECOMPUTE_NORMS = """\
import json, sys, torch
from hypocheck.fixtures.config import SuiteConfig
from hypocheck.fixtures.suite import LoadedSuite
suite = LoadedSuite(SuiteConfig.load(sys.argv[1]))
model, names = suite.model("fewshot"), suite.knockdowns("fewshot")
with torch.no_grad():
    norms = model.encode_perturbation(model.onehot(names)).double().norm(dim=1).numpy()
members = suite.members(names, "mitoribosome")
print(json.dumps({"ratio": float(norms[members].mean() / norms.mean()), "n": len(members)}))
"""


def check_third_party_probe_package(installed: Installed, workdir: Path) -> None:
    """A package outside the repository adds a probe and the provider of its new input kind through entry points
    only; a hypothesis using it runs on the shipped arc-state backend by configuration alone, with the model's
    numbers (recomputed here from the checkpoint's pert_encoder)."""
    source = workdir / f"hypocheck-norms-{installed.mode}"
    (source / "hypocheck_norms").mkdir(parents=True)
    (source / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (source / "hypocheck_norms" / "__init__.py").write_text("")
    (source / "hypocheck_norms" / "kinds.py").write_text(PLUGIN_KIND)
    (source / "hypocheck_norms" / "probe.py").write_text(PLUGIN_PROBE)
    (source / "hypocheck_norms" / "provider.py").write_text(PLUGIN_PROVIDER)
    env = user_env(installed.venv)
    run([installed.python, "-m", "pip", "install", "--no-deps", source],
        what=f"[{installed.mode}] pip install a third-party probe package", cwd=workdir, env=env, timeout=300)
    project = workdir / f"project-{installed.mode}-plugin"
    make_user_project(project, SUITE_YAML)
    (project / "hypotheses" / "claim.yaml").write_text(PLUGIN_CLAIM)
    proc = run([installed.python, "-m", "pytest", "-p", "no:cacheprovider"],
               what=f"[{installed.mode}] pytest with the third-party probe (1 case)", cwd=project, env=env,
               timeout=600, check=False)
    assert proc.returncode == 0, f"the third-party probe's run: exit status {proc.returncode}\n{proc.stdout[-6000:]}"
    (case,) = json.loads((project / "reports" / "summary.json").read_text())["cases"]
    assert case["id"] == PLUGIN_CASE_ID and case["verdict"] == "pass", case
    assert "norms from the hypocheck-norms provider" in case["notes"], case["notes"]
    expected = json.loads(run([installed.python, "-c", RECOMPUTE_NORMS, project / "suite.yaml"],
                              what=f"[{installed.mode}] recompute the third-party probe's numbers", cwd=project,
                              env=env, timeout=300).stdout.strip().splitlines()[-1])
    assert case["metrics"]["n_members"] == expected["n"] > 0, (case["metrics"], expected)
    assert abs(case["metrics"]["norm_ratio"] - expected["ratio"]) < 1e-9, (case["metrics"], expected)


def check_installed(installed: Installed, workdir: Path) -> None:
    check_imports_only_from_the_venv(installed)
    check_console_scripts(installed)
    check_user_run(installed, make_user_project(workdir / f"project-{installed.mode}", SUITE_YAML))
    check_broken_suite_config(installed, workdir)
    check_third_party_probe_package(installed, workdir)


def test_wheel_installs_and_runs_outside_the_repository(workdir: Path, built: Built) -> None:
    """The steps in one test, so that an xdist run (``make test``: -n N) builds one wheel and one venv."""
    check_wheel_contents(built)
    check_installed(install(workdir, built, full=False), workdir)


@pytest.mark.skipif(not FULL, reason="installs the wheel's dependencies (several GB) from the package index: "
                                     "set HYPOCHECK_WHEEL_FULL=1")
def test_wheel_installs_with_its_dependencies_from_the_package_index(workdir: Path, built: Built) -> None:
    installed = install(workdir, built, full=True)
    run([installed.python, "-m", "pip", "check"], what="[full] pip check", cwd=installed.venv,
        env=user_env(installed.venv), timeout=300)
    check_installed(installed, workdir)
