"""Reference arms: the same case on the observed data and on other models of the suite, beside the model.

Known answers: the data arm's ΔY is recomputed from the h5ad by hand; an expectation naming an arm's metric
reads that arm's value; an arm whose inputs cannot exist is *not applicable* and leaves such an expectation
undecidable; bad references are located at their key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from hypocheck.cases import expand, with_suite_defaults
from hypocheck.decisions import judge, not_applicable
from hypocheck.errors import HypocheckError, NotApplicableError, UnknownNameError
from hypocheck.fixtures.config import SuiteConfig
from hypocheck.fixtures.context import SuiteContext
from hypocheck.models import ModelRef
from hypocheck.probes.clustering import CLUSTERING_METRICS
from hypocheck.records import ReferenceOutcome
from hypocheck.references import reference_case, run_references
from hypocheck.registry import ProbeResult
from hypocheck.schema import hypotheses_from_doc
from hypocheck.yamlsource import load_yaml
from tests.helpers_tiny import tiny_suite

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB = {"model": ["tiny", "base", "tiny~randomized", "tiny~data"], "cell_line": ["hepg2", "jurkat"],
         "gene_set": ["alpha"]}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> SuiteContext:
    suite = tiny_suite(tmp_path_factory.mktemp("refs"), cells=8, seed=3)
    suite.write_text(suite.read_text() + "gene_sets: {alpha: {members: [KD00, KD01, KD02]}}\n")
    return SuiteContext(SuiteConfig.load(suite))


def cases_of(tmp_path: Path, text: str, defaults: dict | None = None) -> list:
    path = tmp_path / "h.yaml"
    path.write_text(text)
    doc = load_yaml(path)
    return [c for hyp, base in hypotheses_from_doc(doc)
            for c in expand(with_suite_defaults(hyp, defaults or {}), doc, base, VOCAB)]


CLUSTERING = """\
id: refs
claim: the set clusters, beyond the baseline
probe: output_set_clustering
cases: {{model: [tiny], cell_line: [hepg2], gene_set: [alpha]}}
references: {references}
expect:
  - {expect}
"""


# --------------------------------------------------------------- the data arm's inputs
def test_observed_delta_y_is_each_knockdowns_cells_minus_the_controls(ctx: SuiteContext) -> None:
    names, delta, counts = ctx.artifacts.outputs.observed_delta_y("tiny~data", "hepg2")
    config = ctx.suite.config
    adata = ad.read_h5ad(config.data.path)
    genes = ctx.suite.model("tiny").gene_names
    x = adata.obsm["X_hvg"][:, [list(adata.var_names).index(g) for g in genes]].astype(np.float64)
    line = (adata.obs["cell_line"] == "hepg2").to_numpy()
    control = x[line & (adata.obs["gene"] == "non-targeting").to_numpy()].mean(axis=0)
    assert names == ["KD00", "KD01", "KD02"]  # the model's knockdowns that hepg2 has, in model order
    for row, kd in enumerate(names):
        cells = line & (adata.obs["gene"] == kd).to_numpy()
        np.testing.assert_allclose(delta[row], x[cells].mean(axis=0) - control, rtol=0, atol=1e-12)
        assert counts[row] == cells.sum() == 12


def test_data_arm_of_an_output_case_measures_the_observed_delta_y(ctx: SuiteContext, tmp_path: Path) -> None:
    (case,) = cases_of(tmp_path, CLUSTERING.format(references="[data]", expect="z_matched > 2"))
    twin = reference_case(case, "data")
    assert twin.model == ModelRef("tiny", "data") and twin.expected is None
    record = ctx.prepare(twin)
    _, delta, _ = ctx.artifacts.outputs.observed_delta_y("tiny", "hepg2")
    np.testing.assert_array_equal(record.features, delta)
    np.testing.assert_allclose(record.magnitude, np.linalg.norm(delta, axis=1))
    assert record.measured["features"].startswith("observed ΔY")


def test_the_data_arm_has_no_model_so_model_inputs_are_not_applicable(ctx: SuiteContext) -> None:
    with pytest.raises(NotApplicableError, match="is no model"):
        ctx.suite.model("tiny~data")
    with pytest.raises(NotApplicableError):
        ctx.artifacts.embeddings.pert_embeddings("tiny~data")
    assert ctx.suite.knockdowns("tiny~data") == ctx.suite.knockdowns("tiny")


def test_references_run_each_arm_and_say_which_cannot(ctx: SuiteContext, tmp_path: Path) -> None:
    text = CLUSTERING.format(references="[data]", expect="z_matched > 2").replace(
        "output_set_clustering", "pert_embedding_clustering").replace("cell_line: [hepg2], ", "")
    (case,) = cases_of(tmp_path, text.replace("z_matched", "z"))
    outcomes = run_references(case, ctx)
    assert outcomes["data"].verdict == "not applicable" and "is no model" in outcomes["data"].reason


# --------------------------------------------------------------- expectations that name an arm
def _result(delta: float) -> ProbeResult:
    metrics = dict.fromkeys(CLUSTERING_METRICS, 1.0)
    metrics.update(delta_cosine=delta, p_matched=0.001)
    return ProbeResult(metrics=metrics, cis={"delta_cosine": (delta - 0.01, delta + 0.01)})


@pytest.mark.parametrize(("model", "base", "holds"), [(0.40, 0.30, True), (0.40, 0.36, False), (0.40, 0.45, False)])
def test_an_expectation_reads_the_arm_and_the_minimum_effect(tmp_path: Path, model: float, base: float,
                                                              holds: bool) -> None:
    (case,) = cases_of(tmp_path, CLUSTERING.format(
        references="[data, base]", expect="delta_cosine > references.base.delta_cosine + min_effect"))
    refs = {"base": ReferenceOutcome("pass", base, (base, base), 0.01, {"delta_cosine": base}),
            "data": ReferenceOutcome("pass", 0.7, (0.6, 0.8), 0.001, {"delta_cosine": 0.7})}
    verdict = judge(case, _result(model), refs)
    assert verdict.checks[0].holds is holds and verdict.verdict == ("pass" if holds else "fail")
    assert f"references.base.delta_cosine = {base:.4g}" in verdict.checks[0].detail
    assert "min_effect = 0.05" in verdict.checks[0].detail
    assert verdict.references["data"].effect == 0.7
    back = type(verdict).from_json(json.loads(json.dumps(verdict.to_json())))
    assert back.references == verdict.references


def test_a_not_applicable_arm_leaves_its_expectation_undecidable(tmp_path: Path) -> None:
    (case,) = cases_of(tmp_path, CLUSTERING.format(
        references="[base]", expect="delta_cosine > references.base.delta_cosine"))
    verdict = judge(case, _result(0.4), {"base": not_applicable("no backbone layer")})
    assert verdict.verdict == "inconclusive" and verdict.checks[0].holds is None
    assert math.isnan(float("nan"))


def test_a_reference_arm_is_judged_without_expectations_that_name_arms(tmp_path: Path) -> None:
    (case,) = cases_of(tmp_path, CLUSTERING.format(
        references="[base]", expect="delta_cosine > references.base.delta_cosine").replace(
        "expect:\n", "expect:\n  - z_matched > 2\n"))
    twin = reference_case(case, "base")
    assert [e.source for e in twin.expectations] == ["z_matched > 2"]
    assert twin.model == ModelRef("base") and case.references == ("base",)


# --------------------------------------------------------------- configuration
@pytest.mark.parametrize(("references", "expect", "message", "where"), [
    ("[dat]", "z > 2", "unknown reference arm", "(at references[0])"),
    ("[tiny~randomized]", "z > 2", "unknown reference arm", "(at references[0])"),
    ("[data, data]", "z > 2", "repeat an arm", "(at references)"),
    ("[data]", "z > references.base.z", "unknown reference arm (list it", "(at expect[0])"),
    ("[data]", "z > references.data.zz", "unknown metric", "(at expect[0])"),
])
def test_bad_references_are_located(tmp_path: Path, references: str, expect: str, message: str, where: str) -> None:
    with pytest.raises(HypocheckError) as info:
        cases_of(tmp_path, CLUSTERING.format(references=references, expect=expect))
    assert message in str(info.value) and where in str(info.value), str(info.value)


def test_references_need_a_model_axis(tmp_path: Path) -> None:
    text = CLUSTERING.format(references="[data]", expect="z > 2").replace("model: [tiny], ", "")
    with pytest.raises(HypocheckError, match="references need a 'model' axis"):
        cases_of(tmp_path, text.replace("output_set_clustering", "knockout_transfer"))


def test_suite_defaults_apply_where_a_hypothesis_sets_none(tmp_path: Path) -> None:
    text = CLUSTERING.format(references="null", expect="z > 2")
    defaults = {"references": ["data"], "stability": {"seeds": 3}}
    (case,) = cases_of(tmp_path, text, defaults)
    assert case.references == ("data",) and case.stability_samples == 3
    (own,) = cases_of(tmp_path, CLUSTERING.format(references="[]", expect="z > 2"), defaults)
    assert own.references == () and own.stability_samples == 3
    (listed,) = cases_of(tmp_path, CLUSTERING.format(references="[tiny, base]", expect="z > 2"))
    assert listed.references == ("base",)  # the case's own model is not its own reference


def test_suite_config_refuses_an_unknown_reference(tmp_path: Path) -> None:
    suite = tiny_suite(tmp_path, cells=8, seed=3)
    suite.write_text(suite.read_text() + "references: [data, perturb_mean]\n")
    with pytest.raises(HypocheckError, match="'perturb_mean' is neither 'data', 'baselines' nor a model") as info:
        SuiteConfig.load(suite)
    assert "(at references[1])" in str(info.value) and "valid:" in str(info.value)
    suite.write_text(suite.read_text().replace("references: [data, perturb_mean]", "baselines: [tiny, mean]"))
    with pytest.raises(HypocheckError, match="baseline 'mean' is no model of this suite") as info:
        SuiteConfig.load(suite)
    assert "(at baselines[1])" in str(info.value)
    with pytest.raises(UnknownNameError):
        ModelRef.parse("tiny~observed")


def test_baselines_names_the_suites_baseline_models_and_none_where_it_names_none(tmp_path: Path) -> None:
    text = CLUSTERING.format(references="[data, baselines]", expect="z_matched > 2")
    (case,) = cases_of(tmp_path, text, {"baselines": ["base"]})
    assert case.references == ("data", "base")
    (case,) = cases_of(tmp_path, text, {"baselines": []})
    assert case.references == ("data",)
    (case,) = cases_of(tmp_path, text)  # a backend with no suite config: no baselines
    assert case.references == ("data",)
    (case,) = cases_of(tmp_path, CLUSTERING.format(references="[baselines, base]", expect="z_matched > 2"),
                       {"baselines": ["base"]})
    assert case.references == ("base",)  # each arm once
