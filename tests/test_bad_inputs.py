"""The bad-input corpus (tests/bad_inputs/corpus.yaml): every entry is refused through the suite's real entry point
with the project's own error, naming the file, the line or key, and what is valid.

Hypothesis files run together in one pytest run of the plugin (with a valid claim beside them); suite configs,
data files, run dirs and checkpoints go through ``SuiteConfig.load`` / ``SuiteContext`` (which loads models with
``STAdapter.from_run_dir``). Inputs that cannot be stored as text are built from the entry's ``recipe``.
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from hypocheck.errors import HypocheckError
from hypocheck.fixtures.config import SuiteConfig
from hypocheck.fixtures.context import SuiteContext
from hypocheck.fixtures.safe_load import UntrustedPickleError
from tests.helpers_tiny import GENE_NAMES, N_GENES, single_thread, tiny_adata, tiny_h5ad, tiny_run_dir
from tests.test_adapters import _copy_run, _Evil, _rewrite_var_dims

CORPUS_DIR = Path(__file__).resolve().parent / "bad_inputs"
REPO_ROOT = CORPUS_DIR.parents[1]
ENTRIES: list[dict[str, Any]] = yaml.safe_load((CORPUS_DIR / "corpus.yaml").read_text(encoding="utf-8"))["entries"]
HYPOTHESIS_ENTRIES = [e for e in ENTRIES if e["kind"] == "hypothesis"]
OTHER_ENTRIES = [e for e in ENTRIES if e["kind"] != "hypothesis"]
CONTROL_CELLS = 8

# the tiny planted model of the plugin's end-to-end tests, with cell lines added to its vocabulary
CONFTEST = """\
from hypocheck.backend import StaticBackend
from tests.e2e_conftest import SETS, TinyContext


def pytest_hypocheck_backend(config):
    axes = {"model": ["tiny"], "gene_set": sorted(SETS), "cell_line": ["hepg2", "jurkat"]}
    return StaticBackend(axes, TinyContext)
"""


def _error_classes() -> dict[str, type[HypocheckError]]:
    found: dict[str, type[HypocheckError]] = {}
    todo: list[type[HypocheckError]] = [HypocheckError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo += cls.__subclasses__()
    assert UntrustedPickleError.__name__ in found
    return found


ERRORS = _error_classes()


# ---------------------------------------------------------------------------------------------- the corpus
def test_corpus_is_large_complete_and_well_formed() -> None:
    assert len(ENTRIES) >= 30
    names = [e["name"] for e in ENTRIES]
    assert len(set(names)) == len(names), [n for n, c in Counter(names).items() if c > 1]
    kinds = Counter(e["kind"] for e in ENTRIES)
    assert set(kinds) == {"hypothesis", "suite", "data", "run_dir", "checkpoint"}, kinds
    for entry in ENTRIES:
        assert entry.get("file") and entry.get("expect"), entry["name"]
        assert entry["error"] in ERRORS, f"{entry['name']}: {entry['error']} is not a HypocheckError"
        assert (entry["kind"] == "hypothesis") == ("action" not in entry), entry["name"]
        if "recipe" not in entry and not entry["file"].startswith("run/") and entry.get("config") is None:
            assert (CORPUS_DIR / entry["file"]).is_file(), entry["name"]
    stored = {p.relative_to(CORPUS_DIR).as_posix() for p in CORPUS_DIR.rglob("*") if p.is_file()} - {"corpus.yaml"}
    listed = {e["file"] for e in ENTRIES} | {c for e in ENTRIES for c in e.get("companions", [])}
    assert stored <= listed, f"files in tests/bad_inputs that no entry names: {sorted(stored - listed)}"


# ----------------------------------------------------------------------------------------- hypothesis files
def _write_hypothesis(entry: dict[str, Any], folder: Path) -> Path:
    """The entry's file in ``folder``: copied, or built from its recipe."""
    target = folder / Path(entry["file"]).name
    recipe = entry.get("recipe")
    if recipe is None:
        shutil.copyfile(CORPUS_DIR / entry["file"], target)
    elif "pad_to_bytes" in recipe:
        head = recipe["text"].encode()
        filler = (b"# " + b"x" * 76 + b"\n") * (recipe["pad_to_bytes"] // 79 + 1)
        target.write_bytes((head + filler)[: recipe["pad_to_bytes"] - 1] + b"\n")
    elif "latin1" in recipe:
        target.write_bytes(recipe["latin1"].encode("latin-1"))
    else:
        raise AssertionError(f"{entry['name']}: unknown recipe {recipe}")
    for companion in entry.get("companions", []):
        shutil.copyfile(CORPUS_DIR / companion, folder / Path(companion).name)
    return target


def test_every_bad_hypothesis_file_becomes_one_error_load_item(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makeconftest(CONFTEST)
    folder = pytester.path / "hypotheses"
    folder.mkdir()
    files = {e["name"]: _write_hypothesis(e, folder) for e in HYPOTHESIS_ENTRIES}
    assert len(set(files.values())) == len(files)

    result = pytester.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "-n", "0", "-rf")
    out = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in out, out[-5000:]
    assert not (pytester.path / "pwned").exists()  # the python tag never ran
    result.assert_outcomes(passed=1, errors=len(HYPOTHESIS_ENTRIES))  # a file that does not load: an error

    summary = json.loads((pytester.path / "reports" / "summary.json").read_text())
    records = {c["id"]: c for c in summary["cases"]}
    assert records.pop("duplicate_id_first::twin_claim[tiny-alpha]")["verdict"] == "pass"
    assert set(records) == {f"hypotheses/{p.name}::<load>" for p in files.values()}, sorted(records)
    problems = []
    for entry in HYPOTHESIS_ENTRIES:
        record = records[f"hypotheses/{files[entry['name']].name}::<load>"]
        reason = record["reason"]
        wanted = [f.replace("{dir}", str(folder)) for f in entry["expect"]]
        missing = [f for f in wanted if f not in reason]
        if record["verdict"] != "error" or missing:
            problems.append(f"{entry['name']}: missing {missing} in:\n{reason}")
        if str(files[entry["name"]]) not in reason:
            problems.append(f"{entry['name']}: the message does not name {files[entry['name']]}:\n{reason}")
    assert not problems, "\n\n".join(problems)


# ------------------------------------------------------------------------ suite configs, data, run dirs
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny arc-state run dir and one matching .h5ad, shared (read-only) by every entry."""
    root = tmp_path_factory.mktemp("world")
    with single_thread():
        run = tiny_run_dir(root / "run")
    return {"run": run, "h5ad": tiny_h5ad(root / "tiny.h5ad")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _build_run(entry: dict[str, Any], world: dict[str, Path], folder: Path) -> Path:
    """A copy of the tiny run dir damaged as the recipe says (the shared one when there is no recipe)."""
    recipe = entry.get("recipe")
    if entry["kind"] not in ("run_dir", "checkpoint") or not recipe:
        return world["run"]
    run = _copy_run(world["run"], folder / "run")
    if "delete" in recipe:
        (run / recipe["delete"]).unlink()
    elif "rename" in recipe:
        old, new = recipe["rename"]
        (run / old).rename(run / new)
    elif "var_dims" in recipe:
        _rewrite_var_dims(run, **recipe["var_dims"])
    elif "evil_pickle" in recipe:
        target, evil = run / recipe["evil_pickle"], _Evil(folder / "pwned")
        if target.suffix == ".pkl":
            target.write_bytes(pickle.dumps({"gene_names": GENE_NAMES, "x": evil}))
        else:
            torch.save({"state_dict": {}, "payload": evil}, target)
    else:
        (kind, name), = recipe.items()
        target = run / name
        data = target.read_bytes()
        damaged = {"truncate": data[: len(data) // 2], "garbage": np.random.default_rng(0).bytes(2048), "empty": b""}
        target.write_bytes(damaged[kind])
    return run


def _build_h5ad(entry: dict[str, Any], world: dict[str, Path], folder: Path) -> Path:
    """The entry's .h5ad: stored, built from its recipe, or a copy of the good one under the entry's name."""
    if entry["kind"] != "data":
        return world["h5ad"]
    target = folder / Path(entry["file"]).name
    recipe = entry.get("recipe") or {}
    if (CORPUS_DIR / entry["file"]).is_file():
        shutil.copyfile(CORPUS_DIR / entry["file"], target)
    elif not recipe:
        shutil.copyfile(world["h5ad"], target)
    elif "plain_hdf5" in recipe:
        import h5py

        with h5py.File(target, "w") as fh:
            fh["x"] = np.zeros(3)
    else:
        adata = tiny_adata(genes=[f"{recipe['rename_genes']}{i}" for i in range(N_GENES)] if "rename_genes" in recipe
                           else None)
        for row, column, value in recipe.get("non_finite", []):
            adata.obsm["X_hvg"][row, column] = float(value)
        if "drop_controls" in recipe:
            line = recipe["drop_controls"]
            adata = adata[~((adata.obs["cell_line"] == line) & (adata.obs["gene"] == "non-targeting")).to_numpy()]
        adata.copy().write_h5ad(target)
    return target


def _suite_file(entry: dict[str, Any], world: dict[str, Path], folder: Path) -> tuple[Path, Path]:
    """The suite config to load, and the path that stands for '{file}' in the expected fragments."""
    if entry["kind"] == "suite":
        config = folder / Path(entry["file"]).name
        shutil.copyfile(CORPUS_DIR / entry["file"], config)
        shutil.copytree(world["run"], folder / "run")
        shutil.copyfile(world["h5ad"], folder / "tiny.h5ad")
        return config, config
    run, h5ad = _build_run(entry, world, folder), _build_h5ad(entry, world, folder)
    base = {"models": {"tiny": {"run_dir": str(run)}}, "data": {"path": str(h5ad)}, "cell_lines": ["hepg2", "jurkat"],
            "control_sentence": {"cells": CONTROL_CELLS, "seed": 1}, "device": "cpu"}
    config = folder / "suite.yaml"
    config.write_text(yaml.safe_dump(_merge(base, entry.get("config") or {})))
    shown = h5ad if entry["kind"] == "data" else run / entry["file"].removeprefix("run/")
    return config, shown


def _run(action: str, config: Path) -> None:
    """What the suite does with a config: load it, then (per the action) its model, data or a control sentence."""
    cfg = SuiteConfig.load(config)
    context = SuiteContext(cfg)
    if action == "load_model":
        context.suite.model("tiny")
    elif action == "load_data":
        _ = context.suite.data
    elif action.startswith("control_sentence "):
        context.suite.control_sentence(action.split()[1], "tiny")
    else:
        assert action == "load_config", action


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("entry", OTHER_ENTRIES, ids=[e["name"] for e in OTHER_ENTRIES])
def test_bad_suite_data_and_model_inputs_raise_own_error(
    entry: dict[str, Any], world: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path.resolve()
    config, shown = _suite_file(entry, world, folder)
    with pytest.raises(HypocheckError) as info:
        _run(entry["action"], config)
    error = info.value
    assert isinstance(error, ERRORS[entry["error"]]), f"{type(error).__name__}: {error}"
    text = str(error)
    for fragment in entry["expect"]:
        assert fragment.replace("{file}", str(shown)) in text, f"{fragment!r} not in:\n{text}"
    assert not (folder / "pwned").exists(), "an untrusted pickle ran code"
