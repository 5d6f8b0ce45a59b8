"""The architecture holds: imports flow one way, the runtime never imports the repository's tools, and
start-up imports no heavy library.

- The engine (hypocheck/, the command-line tool aside) imports neither the probes nor the backend: it
  finds them through entry points (so neither do the reporters, which live in the engine). Probes import
  the engine, never the backend; the backend imports the probes' input kinds (probes/kinds.py) and no probe.
- No import cycle among the installed modules, and no module over 500 lines.
- The demo generator (tools/demo) and the calibration scripts (tools/calibration) are tools: nothing
  the installed distribution runs imports them.
- Loading the plugin and collecting the shipped suite import no torch, arc-state, matplotlib or Ray.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = sorted(p for p in (ROOT / "hypocheck").rglob("*.py") if p.name != "cli.py")
PROBES = sorted((ROOT / "probes").rglob("*.py"))
BACKEND = sorted((ROOT / "fixtures").rglob("*.py"))
NAMESPACE = {"hypocheck": "hypocheck", "probes": "hypocheck.probes", "fixtures": "hypocheck.fixtures"}


def module_name(path: Path) -> str:
    """The installed name of a runtime module (``fixtures/store.py`` → ``hypocheck.fixtures.store``)."""
    folder, *inner = path.relative_to(ROOT).with_suffix("").parts
    return ".".join([NAMESPACE[folder], *(p for p in inner if p != "__init__")])


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Ids of the import nodes inside ``if TYPE_CHECKING:`` blocks (names for annotations, never imported)."""
    nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return nodes


def imported(path: Path, *, at_run_time: bool = False) -> set[str]:
    """Absolute module names ``path`` imports (relative imports resolved against its package); ``at_run_time``:
    without the imports for annotations only."""
    folder, *inner = path.parent.relative_to(ROOT).parts
    package = ".".join([NAMESPACE[folder], *inner])
    names: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree) if at_run_time else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(x for x in (base, node.module or "") if x)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: p.name)
def test_the_engine_imports_neither_probes_nor_backend(path: Path) -> None:
    bad = sorted(n for n in imported(path) if n.startswith(("hypocheck.probes", "hypocheck.fixtures")))
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", PROBES, ids=lambda p: p.name)
def test_probes_import_the_engine_not_the_backend(path: Path) -> None:
    bad = sorted(n for n in imported(path) if n.startswith("hypocheck.fixtures") or n.split(".")[0] == "torch")
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", BACKEND, ids=lambda p: p.name)
def test_the_backend_imports_no_probe_module(path: Path) -> None:
    """The backend meets the probes at the input kinds (``hypocheck.probes.kinds``) and nowhere else."""
    bad = sorted(n for n in imported(path) if n.startswith("hypocheck.probes")
                 and not n.startswith("hypocheck.probes.kinds"))
    assert not bad, f"{path.name} imports {bad}"


def test_the_input_kinds_hold_no_probe() -> None:
    """``probes/kinds.py`` is the contract between probes and backends: records and options, no probe."""
    path = ROOT / "probes" / "kinds.py"
    assert "@probe" not in path.read_text(encoding="utf-8")
    assert sorted(n for n in imported(path) if n.startswith("hypocheck.")) == ["hypocheck.inputs",
                                                                              "hypocheck.inputs.InputRecord"]


def test_no_import_cycle() -> None:
    """No runtime module reaches itself through the imports that run (imports inside functions included)."""
    graph = {module_name(p): imported(p, at_run_time=True) for p in ENGINE + PROBES + BACKEND}
    graph = {m: {n for n in names if n in graph and n != m} for m, names in graph.items()}
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str], done: set[str]) -> None:
        if module in trail:
            cycles.append([*trail[trail.index(module):], module])
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*trail, module], done)
        done.add(module)

    finished: set[str] = set()
    for module in sorted(graph):
        visit(module, [], finished)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles[:5])


MAX_MODULE_LINES = 500


@pytest.mark.parametrize("path", ENGINE + PROBES + BACKEND + [ROOT / "hypocheck" / "cli.py"],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_module_is_over_500_lines(path: Path) -> None:
    """A module fits on a few screens: past that it holds more than one idea and splits along it."""
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


@pytest.mark.parametrize("path", ENGINE + PROBES + BACKEND, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_runtime_never_imports_the_tools(path: Path) -> None:
    bad = sorted(n for n in imported(path)
                 if n.split(".")[0] in {"tools", "tests", "bench"})
    assert not bad, f"{path.name} imports {bad}"


def test_start_up_imports_no_heavy_library() -> None:
    code = ("import sys, subprocess, pytest\n"
            "pytest.main(['--co', '-q', 'hypotheses', '-p', 'no:cacheprovider'])\n"
            "heavy = ('torch', 'state', 'matplotlib', 'anndata', 'sklearn', 'ray')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            check=False)
    assert "76 tests collected" in result.stdout or "tests collected" in result.stdout, result.stdout[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-2000:]


def test_a_run_without_a_ray_executor_imports_no_ray() -> None:
    """Ray is imported by the Ray executor's first map, never by the engine, the backend or a local run."""
    code = ("import sys\n"
            "from hypocheck.executor import make_executor\n"
            "from hypocheck.fixtures import artifacts, backend, config, context, remote\n"
            "from hypocheck.fixtures.config import ExecutorConfig\n"
            "assert make_executor(ExecutorConfig().spec()).map(abs, [-1, 2]) == [1, 2]\n"
            "make_executor({'ray': {'address': 'auto'}})  # configured, not yet used\n"
            "print('ray' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.stdout.strip().splitlines()[-1:] == ["False"], result.stdout[-2000:] + result.stderr[-2000:]


def test_user_facing_text_cites_no_internal_document() -> None:
    """Users do not have the project's internal specification: nothing they read may cite it."""
    from hypocheck.schema import json_schema

    texts = {"hypothesis schema": json.dumps(json_schema(), ensure_ascii=False)}
    for pattern in ("README.md", "docs/*.md", "hypotheses/**/*.yaml", "suite.yaml", "fixtures/suite.example.yaml"):
        texts |= {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in ROOT.glob(pattern)}
    assert [name for name, text in texts.items() if "SPEC" in text] == []
