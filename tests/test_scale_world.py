"""The real-size world generator (tools/demo/scale.py), run at a tiny scale through the same code path.

Checks that it writes loadable arc-state run dirs, an h5ad and a suite config that the suite's session-start
config check accepts, with the requested sizes and four named lines, and that the suite recovers a planted
truth: the pert_encoder clustering claim (hypotheses/paper, claim 1) passes for the planted programs while a
program planted with no effect (proteasome) does not cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tools.demo.scale import SCALE_LINES, SCALE_TEMPLATES, ScaleTrainConfig, build_scale
from tools.demo.world import WorldSpec, input_genes, knockdowns

ROOT = Path(__file__).resolve().parents[1]
N_GENES, N_KDS = 300, 320
TINY_SPEC = WorldSpec(lines=SCALE_LINES, templates=SCALE_TEMPLATES, n_control=48, n_per_kd=2, n_genes=N_GENES,
                      n_knockdowns=N_KDS)
TINY_CFG = ScaleTrainConfig(steps=12, sentences_per_step=4, warmup=2, hidden=16, layers=2, heads=2, head_dim=8,
                            intermediate=32, cell_set_len=8, eval_max_pairs=8)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("scale")
    return out, build_scale(out, TINY_SPEC, TINY_CFG, sentence_cells=16)


def test_spec_validates_and_keeps_demo_sizes() -> None:
    assert WorldSpec().is_demo and not TINY_SPEC.is_demo
    assert len(input_genes(TINY_SPEC)) == N_GENES and len(knockdowns(TINY_SPEC)) == N_KDS
    assert input_genes() == input_genes(WorldSpec()) and len(input_genes()) < N_GENES
    with pytest.raises(ValueError, match="need a template"):
        WorldSpec(lines=("hepg2", "k562"))
    with pytest.raises(ValueError, match="at least the catalogue"):
        WorldSpec(n_genes=10)


def test_world_has_requested_sizes_and_lines(tiny_world: tuple[Path, dict[str, Any]]) -> None:
    import anndata as ad

    out, info = tiny_world
    adata = ad.read_h5ad(out / "world" / "demo.h5ad")
    truth = json.loads((out / "world" / "truth.json").read_text())
    assert adata.n_vars == N_GENES and truth["lines"] == list(SCALE_LINES)
    assert set(adata.obs["cell_line"].astype(str)) == set(SCALE_LINES)
    assert adata.obs["gene"].nunique() == N_KDS + 1  # knockdowns + non-targeting
    # k562 copies jurkat's planted program effects (integrator is jurkat-only), rpe1 hepg2's (er_golgi)
    assert truth["programs"]["integrator"]["active"] == {"k562": True, "rpe1": False, "jurkat": True, "hepg2": False}
    assert truth["programs"]["er_golgi"]["active"]["rpe1"] and not truth["programs"]["er_golgi"]["active"]["k562"]
    assert not (out / "sae").exists() and info["timing"]["total_seconds"] > 0
    for model in ("fewshot", "zeroshot"):
        assert info["models"][model]["visibility_check"]["all_pass"], info["models"][model]["visibility_check"]


def test_run_dirs_load_and_pass_the_config_check(tiny_world: tuple[Path, dict[str, Any]]) -> None:
    from hypocheck.fixtures.backend import validate_suite
    from hypocheck.fixtures.config import SuiteConfig
    from hypocheck.fixtures.suite import LoadedSuite

    out, _ = tiny_world
    config = SuiteConfig.load(out / "suite.yaml")
    validate_suite(config)  # raises ConfigError on anything it cannot read
    suite = LoadedSuite(config)
    adapter = suite.model("fewshot")  # arc-state's loader, checked against the package's own forward
    assert len(adapter.gene_names) == N_GENES and len(suite.knockdowns("fewshot")) == N_KDS


def test_suite_recovers_planted_pert_encoder_clustering(tiny_world: tuple[Path, dict[str, Any]]) -> None:
    from hypocheck.cache import ArtifactCache
    from hypocheck.fixtures.config import SuiteConfig
    from hypocheck.fixtures.context import SuiteContext
    from hypocheck.verdict import judge
    from tools.bench.suite_bench import claim_cases

    out, _ = tiny_world
    config_path = out / "suite.yaml"
    ctx = SuiteContext(SuiteConfig.load(config_path), ArtifactCache("", enabled=False))
    cases = claim_cases(ROOT / "hypotheses" / "paper" / "claim1_pert_encoder_clustering.yaml", config_path)
    verdicts = {c.axes["gene_set"]: judge(c, c.probe.run(ctx.prepare(c), params=c.params,
                                                           rng=np.random.default_rng(c.seed))) for c in cases}
    assert {k: v.verdict for k, v in verdicts.items()} == {"splicing": "pass", "ribosome": "pass",
                                                          "er_golgi": "pass"}
    # proteasome was planted with no effect: its knockdowns share no direction, so no clustering
    names, reps = ctx.artifacts.embeddings.pert_embeddings("fewshot")
    unit = reps / np.linalg.norm(reps, axis=1, keepdims=True)
    members = ctx.suite.members(names, "proteasome")
    within = unit[members] @ unit[members].T
    assert within[~np.eye(len(members), dtype=bool)].mean() < 0.2


def test_hypocheck_init_reads_the_run_dirs(tiny_world: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    from hypocheck.cli import main
    from hypocheck.fixtures.config import SuiteConfig

    out, _ = tiny_world
    written = tmp_path / "suite.yaml"
    rc = main(["init", "--run-dir", f"fewshot={out / 'runs' / 'fewshot'}", "--run-dir",
               f"zeroshot={out / 'runs' / 'zeroshot'}", "--data", str(out / "world" / "demo.h5ad"),
               "--out", str(written)])
    assert rc == 0
    config = SuiteConfig.load(written)
    assert set(config.cell_lines) == set(SCALE_LINES) and set(config.models) == {"fewshot", "zeroshot"}
