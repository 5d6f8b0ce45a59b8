"""The demo world's arc-state baselines (perturb_mean, context_mean, embed_sum), trained with ``state tx train``:
small, trained on the fewshot model's split, loaded through the suite config, and usable as reference arms.

Known answers: perturb_mean's ΔY of a knockdown is its training cells' offset from the controls (averaged over
the lines that trained it), recomputed from the h5ad; every arm of an output-level case is judged; the
mean baselines' pert-encoder cases are not applicable, embed_sum's run.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hypocheck.cases import expand
from hypocheck.evaluate import evaluate_case
from hypocheck.fixtures.arc_baselines import BaselineAdapter, model_kind
from hypocheck.fixtures.backend import SuiteBackend
from hypocheck.fixtures.config import SuiteConfig
from hypocheck.fixtures.context import SuiteContext
from hypocheck.schema import hypotheses_from_doc
from hypocheck.yamlsource import load_yaml
from tools.demo import DEMO_DIR
from tools.demo.baselines import BASELINES, KEPT

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = DEMO_DIR.parents[1]


@pytest.fixture(scope="module")
def ctx() -> SuiteContext:
    return SuiteContext(SuiteConfig.load(REPO / "suite.yaml"))


def test_shipped_baselines_are_small_named_in_the_suite_and_trained_on_fewshots_split() -> None:
    manifest = json.loads((DEMO_DIR / "MANIFEST.json").read_text())
    held = manifest["models"]["fewshot"]["heldout_knockdowns"]["jurkat"]
    total = 0
    config = SuiteConfig.load(REPO / "suite.yaml")
    for name in BASELINES:
        run = DEMO_DIR / "runs" / name
        assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == sorted(KEPT)
        total += sum((run / rel).stat().st_size for rel in KEPT)
        assert model_kind(run) == name and name in config.models
        split = tomllib.loads((run / "data_split.toml").read_text())
        assert sorted(split["fewshot"]["data.jurkat"]["test"]) == sorted(held)
    assert total < 5e6


def test_perturb_mean_delta_y_is_its_training_offset_close_to_the_datas(ctx: SuiteContext) -> None:
    """ΔY is the class's stored offset exactly; the offset comes from the cells arc-state's loader drew in training
    (sets of 8, not every cell), so it is close to, not equal to, the offset recomputed from all the cells."""
    import anndata as ad

    adata = ad.read_h5ad(DEMO_DIR / "world" / "demo.h5ad")
    manifest = json.loads((DEMO_DIR / "MANIFEST.json").read_text())
    held = set(manifest["models"]["fewshot"]["heldout_knockdowns"]["jurkat"])
    genes, lines = adata.obs["gene"].astype(str).to_numpy(), adata.obs["cell_line"].astype(str).to_numpy()
    x = np.asarray(adata.obsm["X_hvg"], dtype=np.float64)
    adapter = ctx.suite.model("perturb_mean")
    assert isinstance(adapter, BaselineAdapter)
    kds = ctx.suite.knockdowns("perturb_mean")
    delta = ctx.artifacts.outputs.delta_y("perturb_mean", "hepg2")
    cosines = []
    for row, kd in enumerate(kds):
        np.testing.assert_allclose(delta[row], adapter.model.pert_mean_offsets[kd].numpy(), atol=1e-5)
        trained = [line for line in ("hepg2", "jurkat") if not (line == "jurkat" and kd in held)]
        offset = np.mean([x[(genes == kd) & (lines == line)].mean(0)
                          - x[(genes == "non-targeting") & (lines == line)].mean(0) for line in trained], axis=0)
        cosines.append(delta[row] @ offset / (np.linalg.norm(delta[row]) * np.linalg.norm(offset)))
    assert np.median(cosines) > 0.9, np.median(cosines)


def _cases(tmp_path: Path, text: str, ctx: SuiteContext) -> list[Any]:
    path = tmp_path / "h.yaml"
    path.write_text(text)
    doc = load_yaml(path)
    vocab = SuiteBackend(ctx.suite.config).vocabulary()
    return [c for hyp, base in hypotheses_from_doc(doc) for c in expand(hyp, doc, base, vocab)]


REFERENCES = """\
id: refs
claim: mitoribosome knockdowns cluster in predicted ΔY, beside the data and arc-state's baselines
probe: output_set_clustering
cases: {model: [fewshot], cell_line: [hepg2], gene_set: [mitoribosome]}
params: {null_sets: 300, bootstrap: 100}
inputs: {features: delta_y}
references: [data, perturb_mean, context_mean, embed_sum]
expect: [z_matched > 2, significant]
"""

ON_BASELINES = """\
id: on_baselines
claim: the program clusters in each baseline
probe: {probe}
cases: {{model: [perturb_mean, context_mean, embed_sum], {line}gene_set: [mitoribosome]}}
params: {{null_sets: 200, bootstrap: 100}}
{inputs}expect: [significant]
"""


def test_an_output_case_judges_every_arm(ctx: SuiteContext, tmp_path: Path) -> None:
    (case,) = _cases(tmp_path, REFERENCES, ctx)
    verdict, _, _ = evaluate_case(case, ctx)
    arms = verdict.references
    assert set(arms) == {"data", "perturb_mean", "context_mean", "embed_sum"}
    assert all(arms[a].verdict in ("pass", "fail") for a in arms if a != "context_mean"), {
        a: arms[a].verdict for a in arms}
    # one change predicted for every knockdown: no set can stand out, neither present nor absent
    assert arms["context_mean"].verdict == "inconclusive" and "the same features" in arms["context_mean"].reason
    assert arms["perturb_mean"].verdict == "pass" and arms["data"].verdict == "pass"


def test_baselines_as_the_model_features_auto_is_delta_y_and_no_encoder_is_not_applicable(
    ctx: SuiteContext, tmp_path: Path
) -> None:
    output = ON_BASELINES.format(probe="output_set_clustering", line="cell_line: [jurkat], ",
                                 inputs="inputs: {features: auto}\n")
    for case in _cases(tmp_path, output, ctx):
        assert isinstance(ctx.suite.model(case.model), BaselineAdapter)
        record = ctx.prepare(case)
        assert record.measured["features"].startswith("ΔY"), record.measured
    encoder = ON_BASELINES.format(probe="pert_embedding_clustering", line="", inputs="")
    verdicts = {str(c.model): evaluate_case(c, ctx)[0] for c in _cases(tmp_path, encoder, ctx)}
    for name in ("perturb_mean", "context_mean"):
        assert verdicts[name].verdict == "inconclusive"
        assert verdicts[name].reason.startswith(f"not applicable: model '{name}' has no perturbation encoder")
    assert verdicts["embed_sum"].verdict in ("pass", "fail")
