"""Verdict stability over control samples, and reference arms, through the whole plugin (one verdict per case in
every output), and the suite backend's resampled contexts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hypocheck.decisions import stability_of, with_stability
from hypocheck.fixtures.config import SuiteConfig
from hypocheck.fixtures.context import SuiteContext
from hypocheck.records import error_verdict
from tests.helpers_tiny import tiny_suite

REPO_ROOT = Path(__file__).resolve().parents[1]

CONFTEST = '''
import numpy as np
from hypocheck.backend import StaticBackend
from hypocheck.errors import NotApplicableError

SETS = {"alpha": list(range(8)), "beta": list(range(8, 16))}


class Context:
    """Embeddings with a shared direction in 'alpha' (strength by sample: 3, 0, 3, ...) and in 'beta' (always);
    the 'base' model has none; the data arm has no embeddings."""

    def __init__(self, sample=0):
        self.sample = sample

    def prepare(self, case):
        model = str(case.axes["model"])
        if model.endswith("~data"):
            raise NotApplicableError("the observed data have no pert_encoder")
        rng = np.random.default_rng(1)
        emb = rng.normal(size=(40, 16))
        if model == "tiny":
            emb[SETS["beta"]] += 3 * rng.normal(size=16)
            emb[SETS["alpha"]] += (0.0 if self.sample % 2 else 3.0) * rng.normal(size=16)
        # magnitudes spread over the ranking, so that each set has knockdowns of its own ‖ΔY‖ outside it
        return {"embeddings": emb, "magnitude": 1 + (np.arange(40) * 7 % 40) / 40,
                "members": np.array(SETS[case.axes["gene_set"]])}

    def resampled(self, sample):
        return Context(sample), f"sample {sample}"

    def environment(self):
        return {"device": "cpu"}


class Backend(StaticBackend):
    def hypothesis_defaults(self):
        return {"references": ["data", "base"], "stability": {"seeds": 3}}


def pytest_hypocheck_backend(config):
    return Backend({"model": ["tiny", "base", "tiny~data"], "gene_set": ["alpha", "beta"]}, Context)
'''

CLAIM = """\
id: clustering
claim: the sets cluster in pert_encoder space, beyond the baseline
probe: pert_embedding_clustering
cases: {model: [tiny], gene_set: [alpha, beta]}
params: {null_sets: 400, bootstrap: 200, min_members: 3}
expect:
  - z > 2
  - delta_cosine_uniform > references.base.delta_cosine_uniform + 0.05
"""


def test_fragile_verdicts_and_reference_arms_show_in_every_output(pytester: pytest.Pytester,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makeconftest(CONFTEST)
    (pytester.path / "hypotheses").mkdir()
    (pytester.path / "hypotheses" / "c.yaml").write_text(CLAIM)
    result = pytester.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "--alluredir", "allure")
    result.assert_outcomes(passed=2)
    summary = json.loads((pytester.path / "reports" / "summary.json").read_text())
    cases = {c["id"].split("[")[1].rstrip("]"): c for c in summary["cases"]}
    alpha, beta = cases["tiny-alpha"], cases["tiny-beta"]
    assert alpha["stability"]["verdicts"] == ["pass", "fail", "pass"] and alpha["stability"]["agree"] == 2
    assert alpha["stability"]["fragile"] is True and alpha["stability"]["samples"][1] == "sample 1"
    assert beta["stability"] == {**beta["stability"], "agree": 3, "fragile": False}
    for case in (alpha, beta):
        assert case["references"]["data"]["verdict"] == "not applicable"
        assert "no pert_encoder" in case["references"]["data"]["reason"]
        assert case["references"]["base"]["verdict"] == "fail"
        assert case["references"]["base"]["effect"] < case["effect"]
    out = result.stdout.str()
    assert "FRAGILE: 2 of 3 control samples give pass (fail 1)" in out
    assert "stable: 3 of 3 control samples agree" in out
    assert "data n/a (the observed data have no pert_encoder)" in out and "base " in out
    markdown = (pytester.path / "reports" / "summary.md").read_text()
    assert "FRAGILE: 2 of 3" in markdown and "data n/a" in markdown
    allure_results = [json.loads(p.read_text()) for p in (pytester.path / "allure").glob("*-result.json")]
    by_name = {r["name"]: r for r in allure_results}
    fragile = next(r for n, r in by_name.items() if "alpha" in n)
    assert {"name": "tag", "value": "fragile"} in fragile["labels"] and fragile["status"] == "passed"
    assert "FRAGILE: 2 of 3" in fragile["descriptionHtml"] and "reference arm: base" in fragile["descriptionHtml"]
    assert any(a["name"] == "beside the data and baselines" for a in fragile.get("attachments", []))


def test_stability_counts_the_samples_that_give_the_cases_verdict() -> None:
    base = error_verdict("f::h[x]", "", "f.yaml:1")
    verdicts = [base.__class__(**{**base.__dict__, "verdict": v, "effect": e})
                for v, e in (("pass", 0.4), ("pass", 0.3), ("inconclusive", 0.1), ("pass", 0.5))]
    stability = stability_of(["s0", "s1", "s2", "s3"], verdicts)
    assert (stability.agree, stability.fragile) == (3, True)
    assert stability.text == "FRAGILE: 3 of 4 control samples give pass (inconclusive 1)"
    judged = with_stability(verdicts[0], stability)
    assert judged.stability == stability and judged.verdict == "pass" and judged.notes == ()
    steady = stability_of(["s0", "s1"], verdicts[:2])
    assert not steady.fragile and with_stability(verdicts[0], steady).notes == verdicts[0].notes


@pytest.mark.usefixtures("one_torch_thread")
def test_a_resampled_suite_draws_other_control_cells_with_the_same_models(tmp_path: Path) -> None:
    ctx = SuiteContext(SuiteConfig.load(tiny_suite(tmp_path, cells=8, seed=3)))
    same, label = ctx.resampled(0)
    assert same is ctx and label == "control_sentence.seed=3"
    other, label = ctx.resampled(2)
    assert label == "control_sentence.seed=5" and ctx.resampled(2)[0] is other
    assert other.suite.model("tiny") is ctx.suite.model("tiny")
    x0, _ = ctx.suite.control_sentence("hepg2", "tiny")
    x2, _ = other.suite.control_sentence("hepg2", "tiny")
    assert not torch.equal(x0, x2)
    fresh = SuiteContext(SuiteConfig.load(tiny_suite(tmp_path / "again", cells=8, seed=5)))
    assert torch.equal(fresh.suite.control_sentence("hepg2", "tiny")[0], x2)
    np.testing.assert_array_equal(other.artifacts.outputs.delta_y("tiny", "hepg2"),
                                  fresh.artifacts.outputs.delta_y("tiny", "hepg2"))
    assert not np.array_equal(ctx.artifacts.outputs.delta_y("tiny", "hepg2"),
                              other.artifacts.outputs.delta_y("tiny", "hepg2"))
