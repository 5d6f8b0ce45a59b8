"""The `hypocheck` command line, run in a subprocess: `init` on copies of the demo world and on tiny .h5ad files,
`probes` in every format, help and usage errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from hypocheck.cases import expand
from hypocheck.fixtures.config import SuiteConfig
from hypocheck.registry import registered_probes
from hypocheck.schema import hypotheses_from_doc
from hypocheck.yamlsource import load_yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "tools" / "demo"


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m hypocheck.cli ARGS`` in ``cwd``."""
    return subprocess.run([sys.executable, "-m", "hypocheck.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """A copy of the demo world's run dirs and data: runs/{fewshot,zeroshot}, world/demo.h5ad."""
    for name in ("fewshot", "zeroshot"):
        shutil.copytree(DEMO / "runs" / name, tmp_path / "runs" / name)
    (tmp_path / "world").mkdir()
    shutil.copy(DEMO / "world" / "demo.h5ad", tmp_path / "world" / "demo.h5ad")
    return tmp_path


def tiny_h5ad(path: Path, controls: Sequence[str], obs_extra: dict[str, list[int]], obsm: dict[str, int]) -> Path:
    """An .h5ad of 40 cells: obs gene (``controls`` then knockdowns), cell_line (hepg2 has the controls, k562
    none), ``obs_extra`` columns and zero obsm matrices of the given widths."""
    import anndata
    import pandas as pd

    genes = [controls[i % len(controls)] for i in range(10)] + [f"RPL{i % 6}" for i in range(30)]
    obs = pd.DataFrame({"gene": genes, "cell_line": ["hepg2"] * 20 + ["k562"] * 20, **obs_extra},
                       index=[f"c{i}" for i in range(40)])
    adata = anndata.AnnData(obs=obs, obsm={k: np.zeros((40, w), np.float32) for k, w in obsm.items()})
    adata.write_h5ad(path)
    return path


RUN_DIRS = ("--run-dir", "fewshot=runs/fewshot", "--run-dir", "zeroshot=runs/zeroshot")


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_init_discovers_the_demo_keys_and_writes_a_valid_config(world: Path) -> None:
    result = cli("init", *RUN_DIRS, "--data", "world/demo.h5ad", cwd=world)
    assert result.returncode == 0, result.stderr
    for line in ("gene_key = gene", "cell_line_key = cell_line", "batch_key = batch", "expr_key = X_hvg",
                 "control_label = non-targeting", "cell_lines = hepg2, jurkat", "wrote suite.yaml"):
        assert line in result.stdout, result.stdout
    config = SuiteConfig.load(world / "suite.yaml")
    data = config.data
    assert (data.gene_key, data.cell_line_key, data.batch_key, data.expr_key, data.control_label) == (
        "gene", "cell_line", "batch", "X_hvg", "non-targeting")
    assert config.cell_lines == ["hepg2", "jurkat"] and config.control_sentence.cell_set_len == "checkpoint"
    assert config.models["zeroshot"].run_dir == (world / "runs" / "zeroshot").resolve()
    assert config.models["fewshot"].checkpoint == "final"
    text = (world / "suite.yaml").read_text()
    assert "run_dir: runs/fewshot" in text and "path: world/demo.h5ad" in text  # relative: under the config

    example = world / "hypotheses" / "example.yaml"
    doc = load_yaml(example)
    vocabulary = {"model": list(config.models), "gene_set": list(config.gene_set_definitions())}
    [(hypothesis, base)] = hypotheses_from_doc(doc)
    assert hypothesis.probe == "pert_embedding_clustering" and hypothesis.cases["model"] == ["fewshot", "zeroshot"]
    assert len(expand(hypothesis, doc, base, vocabulary)) == 2 * len(hypothesis.cases["gene_set"])
    # the example names the gene sets that fit, with the counts said; no doubled bracket in the checkpoint line
    counts = next(line for line in result.stdout.splitlines() if line.startswith("gene sets ("))
    assert "mitoribosome" in counts and f"at least 5: {', '.join(hypothesis.cases['gene_set'])}" in counts
    assert "))" not in result.stdout, result.stdout


def test_init_writes_no_example_that_could_not_run(world: Path) -> None:
    """Data whose knockdowns fill no gene set: init says so and writes no example hypothesis that would only
    come out inconclusive."""
    import anndata

    adata = anndata.read_h5ad(world / "world" / "demo.h5ad")
    genes = adata.obs["gene"].astype(str)
    adata.obs["gene"] = [g if g == "non-targeting" else f"X{abs(hash(g)) % 10_000}" for g in genes]
    adata.write_h5ad(world / "world" / "other.h5ad")
    result = cli("init", *RUN_DIRS, "--data", "world/other.h5ad", cwd=world)
    assert result.returncode == 0, result.stderr
    assert "no example hypothesis written: no gene set has 5 members" in result.stdout, result.stdout
    assert "the example uses those with at least 5: none" in result.stdout
    assert "hypocheck init --gene-sets pathways.gmt, or gene_sets: {from: pathways.gmt}" in result.stdout
    assert not (world / "hypotheses" / "example.yaml").exists() and (world / "suite.yaml").is_file()


def test_init_reads_a_gene_set_file_and_the_example_takes_its_largest_fitting_sets(world: Path) -> None:
    """``--gene-sets FILE`` goes under gene_sets: {from: …}; of the many sets that fit, the example takes the 6
    with the most knockdowns of the models and the data; a set of unknown genes does not fit."""
    import anndata

    obs = anndata.read_h5ad(world / "world" / "demo.h5ad", backed="r").obs
    knockdowns = sorted(set(obs["gene"].astype(str)) - {"non-targeting"})
    lines = [f"S{i:02d}\tfiller\t" + "\t".join(knockdowns[5 * i: 5 * i + 5 + i % 4]) for i in range(14)]
    lines.append("UNKNOWN\ttypos\t" + "\t".join(f"NOPE{i}" for i in range(8)))
    (world / "pathways.gmt").write_text("\n".join(lines) + "\n")
    result = cli("init", *RUN_DIRS, "--data", "world/demo.h5ad", "--gene-sets", "pathways.gmt", cwd=world)
    assert result.returncode == 0, result.stderr
    assert "gene set file pathways.gmt: 15 sets" in result.stdout
    config = SuiteConfig.load(world / "suite.yaml")
    assert config.gene_set_definitions()["S03"].source == "pathways.gmt:4"
    counts = next(line for line in result.stdout.splitlines() if line.startswith("gene sets ("))
    # the file's sets, largest first: 14 of its 15 fit (UNKNOWN names no knockdown)
    assert counts.startswith("gene sets (knockdowns that the models and the data both have): 14 of 15 sets have "
                             "at least 5: S03 8, S07 8, S11 8, S02 7"), counts
    assert "UNKNOWN" not in counts and "the example uses the 6 largest, " in counts, counts
    doc = load_yaml(world / "hypotheses" / "example.yaml")
    [(hypothesis, base)] = hypotheses_from_doc(doc)
    chosen = hypothesis.cases["gene_set"]
    assert chosen == ["S02", "S03", "S06", "S07", "S10", "S11"]  # 8 or 7 members each, in file order
    vocabulary = {"model": list(config.models), "gene_set": list(config.gene_set_definitions())}
    assert len(expand(hypothesis, doc, base, vocabulary)) == 2 * 6


def test_init_refuses_a_bad_gene_set_file_and_writes_nothing(world: Path) -> None:
    (world / "bad.gmt").write_text("S1 filler KD01 KD02\n")
    result = cli("init", *RUN_DIRS, "--data", "world/demo.h5ad", "--gene-sets", "bad.gmt", cwd=world)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "bad.gmt:1: malformed GMT line" in result.stderr and "valid: GMT" in result.stderr, result.stderr
    assert not (world / "suite.yaml").exists() and not (world / "hypotheses").exists()


def test_init_reads_without_torch(world: Path) -> None:
    code = ("import sys; from hypocheck.cli import main; "
            "rc = main(['init', '--run-dir', 'fewshot=runs/fewshot', '--data', 'world/demo.h5ad']); "
            "print('torch' in sys.modules, rc)")
    result = subprocess.run([sys.executable, "-c", code], cwd=world, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "False 0", result.stdout + result.stderr


def test_init_picks_gem_group_when_there_is_no_batch_column(world: Path) -> None:
    tiny_h5ad(world / "heldout.h5ad", ["non-targeting"], {"gem_group": [1, 2] * 20}, {"X_hvg": 256})
    result = cli("init", *RUN_DIRS, "--data", "heldout.h5ad", cwd=world)
    assert result.returncode == 0, result.stderr
    assert "batch_col 'batch', which this file lacks" in result.stdout  # the run dirs' config named another
    assert "k562 (no control cells)" in result.stdout
    config = SuiteConfig.load(world / "suite.yaml")
    assert config.data.batch_key == "gem_group" and config.cell_lines == ["hepg2"]


def test_init_without_batch_column_or_X_hvg_matches_the_models_width(world: Path) -> None:
    tiny_h5ad(world / "plain.h5ad", ["non-targeting"], {}, {"X_pca": 50, "X_expr": 256})
    result = cli("init", "--run-dir", "runs/fewshot", "--data", "plain.h5ad", "--out", "cfg/suite.yaml", cwd=world)
    assert result.returncode == 0, result.stderr
    config = SuiteConfig.load(world / "cfg" / "suite.yaml")
    assert config.data.batch_key is None and config.data.expr_key == "X_expr"
    assert list(config.models) == ["fewshot"]  # named after the folder
    assert str((world / "runs").resolve()) in (world / "cfg" / "suite.yaml").read_text()  # not under cfg/: absolute
    # its knockdowns (RPL0…RPL5) are no knockdowns of the demo model: no example that could only be inconclusive
    assert "ribosome 0" in result.stdout and not (world / "cfg" / "hypotheses" / "example.yaml").exists()


def test_init_refuses_to_overwrite(world: Path) -> None:
    (world / "suite.yaml").write_text("# mine\n")
    result = cli("init", *RUN_DIRS, "--data", "world/demo.h5ad", cwd=world)
    one_line_error(result, "suite.yaml: the suite config exists", "--force")
    assert (world / "suite.yaml").read_text() == "# mine\n"
    (world / "hypotheses").mkdir()
    (world / "hypotheses" / "example.yaml").write_text("# my example\n")
    result = cli("init", *RUN_DIRS, "--data", "world/demo.h5ad", "--force", cwd=world)
    assert result.returncode == 0, result.stderr
    assert "kept hypotheses/example.yaml" in result.stdout
    assert (world / "hypotheses" / "example.yaml").read_text() == "# my example\n"
    SuiteConfig.load(world / "suite.yaml")


def test_init_stops_on_an_ambiguous_control_label(world: Path) -> None:
    tiny_h5ad(world / "two.h5ad", ["control", "ctrl"], {"batch": [1, 2] * 20}, {"X_hvg": 256})
    result = cli("init", *RUN_DIRS, "--data", "two.h5ad", cwd=world)
    one_line_error(result, "control", "ctrl", "--control-label")
    assert not (world / "suite.yaml").exists()
    result = cli("init", *RUN_DIRS, "--data", "two.h5ad", "--control-label", "ctrl", cwd=world)
    assert result.returncode == 0, result.stderr
    assert SuiteConfig.load(world / "suite.yaml").data.control_label == "ctrl"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--run-dir", "m=nowhere", "--data", "world/demo.h5ad"], ["run directory not found"]),
        (["--run-dir", "m=world", "--data", "world/demo.h5ad"], ["not an arc-state run dir", "config.yaml"]),
        (["--run-dir", "m=runs/fewshot", "--data", "missing.h5ad"], ["data file not found", "--data"]),
        (["--run-dir", "m=runs/fewshot", "--data", "world/demo.h5ad", "--gene-key", "genes"],
         ["--gene-key 'genes'", "did you mean 'gene'"]),
        (["--run-dir", "m=runs/fewshot", "--data", "world/demo.h5ad", "--cell-lines", "hepg2,k562"],
         ["--cell-lines 'k562'"]),
        (["--run-dir", "m=runs/fewshot", "--run-dir", "m=runs/zeroshot", "--data", "world/demo.h5ad"],
         ["given twice"]),
        (["--data", "world/demo.h5ad"], ["--run-dir", "--help"]),
    ],
)
def test_init_errors_are_one_line_with_status_2(world: Path, args: list[str], fragments: list[str]) -> None:
    one_line_error(cli("init", *args, cwd=world), *fragments)
    assert not (world / "suite.yaml").exists()


def test_probes_lists_every_probe(tmp_path: Path) -> None:
    result = cli("probes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = {line for line in result.stdout.splitlines() if line and not line.startswith(" ")}
    assert set(registered_probes()) <= listed
    assert "null_sets" in result.stdout and "p_matched" in result.stdout


def test_probes_json_is_complete(tmp_path: Path) -> None:
    result = cli("probes", "--json", cwd=tmp_path)
    probes = {p["name"]: p for p in json.loads(result.stdout)["probes"]}
    assert set(probes) == set(registered_probes())
    embedding = probes["pert_embedding_clustering"]
    assert embedding["axes"] == ["model", "gene_set"] and embedding["effect"] == "delta_cosine"
    assert {"name": "null_sets", "type": "int (≥ 100)", "required": False, "default": 1000}.items() <= next(
        f for f in embedding["params"] if f["name"] == "null_sets").items()
    assert "embeddings" in embedding["input_arrays"] and [i["name"] for i in embedding["inputs"]] == ["null_excludes"]


def test_probes_markdown_is_docs_probes_md(tmp_path: Path) -> None:
    result = cli("probes", "--markdown", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "docs" / "probes.md").read_text(encoding="utf-8"), (
        "docs/probes.md is stale: run `make schema`")
    assert "SPEC" not in result.stdout


def test_probes_does_not_import_torch(tmp_path: Path) -> None:
    code = "import sys; from hypocheck.cli import main; main(['probes', '--markdown']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr


@pytest.mark.parametrize(("args", "fragment"), [
    ([], "hypocheck init --run-dir"), (["init"], "--control-label"), (["probes"], "--markdown"),
])
def test_help_of_each_command(tmp_path: Path, args: list[str], fragment: str) -> None:
    script = Path(sys.executable).parent / "hypocheck"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "hypocheck.cli"]
    result = subprocess.run([*command, *args, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and fragment in result.stdout, result.stdout + result.stderr
    assert "SPEC" not in result.stdout


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    one_line_error(cli(cwd=tmp_path), "COMMAND", "--help")
    one_line_error(cli("probes", "--json", "--markdown", cwd=tmp_path), "not allowed with")
