"""Regression baselines: save, compare, drift as test failures; a changed checkpoint flags exactly its cases.

The end-to-end tests run the plugin with pytester on two tiny real arc-state models ('tiny' and 'twin');
``PERTURB_MODEL=tiny`` overwrites part of tiny's pert_encoder (a changed checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from hypocheck.baseline import Baseline, DriftRule, baseline_path, document, fingerprints, save, within_tolerance
from hypocheck.records import CaseVerdict, NullSummary, RunRecord, error_verdict
from hypocheck.summary import build_run

REPO_ROOT = Path(__file__).resolve().parents[1]

CONFTEST = '''
import hashlib
import os

import numpy as np
import pytest
import torch

from hypocheck.backend import StaticBackend
from hypocheck.fixtures.st_rundir import STArchitecture, build_st_model

SETS = {"alpha": list(range(10)), "beta": list(range(10, 20)), "gamma": list(range(20, 30))}


def planted(seed):
    """A tiny ST model whose pert_encoder puts alpha's knockdowns along one shared direction."""
    arch = STArchitecture(n_genes=24, n_perts=41, hidden=16, layers=1, heads=2, intermediate=32, cell_set_len=4)
    model = build_st_model(arch, seed=0)
    weight = model.pert_encoder[0].weight
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=g))
        shared = 3 * torch.randn(weight.shape[0], generator=g)
        for k in SETS["alpha"]:
            weight[:, k] += shared
    return model.eval()


class Context:
    def __init__(self):
        self.models = {"tiny": planted(1), "twin": planted(2)}
        changed = os.environ.get("PERTURB_MODEL")
        if changed:  # a new checkpoint: alpha's shared direction is gone from its pert_encoder
            weight = self.models[changed].pert_encoder[0].weight
            with torch.no_grad():
                weight[:, :10] = torch.randn(weight.shape[0], 10, generator=torch.Generator().manual_seed(99))
        noisy = os.environ.get("NOISE_MODEL")
        if noisy:  # a retrained-looking checkpoint: 1 % noise on every pert_encoder weight
            weight = self.models[noisy].pert_encoder[0].weight
            with torch.no_grad():
                noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(7))
                weight.add_(0.01 * weight.abs().mean() * noise)

    def fingerprint(self, name):
        digest = hashlib.sha256()
        for key, value in sorted(self.models[name].state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().numpy().tobytes())
        return digest.hexdigest()

    def prepare(self, case):
        model = self.models[case.axes["model"]]
        with torch.no_grad():
            embeddings = model.encode_perturbation(torch.eye(41)[:40]).numpy()
        magnitude = np.random.default_rng(2).uniform(1, 2, size=40)  # effect sizes, unrelated to the sets
        return {"embeddings": embeddings, "magnitude": magnitude, "members": np.array(SETS[case.axes["gene_set"]])}

    def environment(self):
        return {"device": "cpu", "data": {"path": "none", "fingerprint": "data-v1"},
                "models": {name: {"fingerprint": self.fingerprint(name)} for name in self.models}}


def pytest_hypocheck_backend(config):
    return StaticBackend({"model": ["tiny", "twin"], "gene_set": sorted(SETS)}, Context)
'''

CLAIM = """\
id: pathway_clustering
claim: Knockdowns of one pathway cluster in pert_encoder space
source: {claim: 1, notebook: NB02}
probe: pert_embedding_clustering
cases:
  model: [tiny, twin]
  gene_set: [alpha, beta]
params: {null_sets: 300, bootstrap: 200, min_members: 3}
expect:
  - z > 2
expected: {default: pass, beta: fail}
"""


# ------------------------------------------------------------------------------------------------ unit tests
def test_tolerance_is_abs_plus_rel_times_baseline() -> None:
    assert within_tolerance(1.0 + 1e-6, 1.0, 1e-6, 1e-4)
    assert within_tolerance(100.0 + 0.0105, 100.0, 1e-6, 1e-4) is False
    assert within_tolerance(100.0 + 0.0095, 100.0, 1e-6, 1e-4)
    assert within_tolerance(None, None, 0, 0) and within_tolerance(math.nan, None, 0, 0)
    assert not within_tolerance(0.5, None, 1, 1) and not within_tolerance(None, 0.5, 1, 1)
    assert within_tolerance(math.inf, math.inf, 0, 0) and not within_tolerance(math.inf, 1e300, 1, 1)


def _record(case_id: str, verdict: str, ci: tuple[float, float] | None = None, **metrics: float | None) -> CaseVerdict:
    base = error_verdict(case_id, "", "", hypothesis="h", nodeid=f"hypotheses/x.yaml::{case_id}")
    return dataclasses.replace(base, verdict=verdict, metrics=metrics, fingerprints={"models/a": "f1"},
                               effect_metric="z", ci=ci or (None, None), null=NullSummary(0.0, 1.0, 1000.0),
                               metric_kinds={m: "p" if m == "p" else "descriptive" for m in metrics})


def _summary_of(*cases: CaseVerdict, environment: dict | None = None) -> RunRecord:
    return build_run(cases, environment or {})


def test_save_load_and_compare(tmp_path: Path) -> None:
    cases = [_record("x::h[b]", "fail", z=1.0, p=0.2), _record("x::h[a]", "pass", (2.5, 3.5), z=3.0, p=0.001, n=None)]
    path = baseline_path(tmp_path, "v1")
    save(path, document("v1", _summary_of(*cases, environment={"models": {"a": {"fingerprint": "f1"}},
                                                               "data": {"fingerprint": "d"}})))
    text = path.read_text()
    assert text.endswith("}\n") and text.index('"x::h[a]"') < text.index('"x::h[b]"')  # sorted, reviewable
    base = Baseline.load(path)
    assert base.fingerprints == {"models/a": "f1", "data": "d"} and base.claims == {"h": "fail"}
    fixed = DriftRule(abs_tol=1e-6, rel_tol=1e-4)
    assert base.compare(_record("x::h[a]", "pass", z=3.0 + 1e-9, p=0.001, n=None), fixed) == []
    drift = base.compare(_record("x::h[a]", "fail", z=2.5, p=0.001, q=1.0), fixed)
    assert [e.kind for e in drift] == ["verdict", "metric_gone", "metric_added", "metric"]
    assert drift[-1].name == "z" and drift[-1].delta == pytest.approx(-0.5)
    assert [e.to_json() for e in base.compare(_record("x::h[new]", "pass"), fixed)] == [{"kind": "added"}]
    assert base.changed_fingerprints(fingerprints({"models": {"a": "f2"}, "data": {"fingerprint": "d"}})) == {
        "models/a": {"baseline": "f1", "current": "f2"}}
    with pytest.raises(ValueError, match="no path separators"):
        baseline_path(tmp_path, "../evil")


def test_default_drift_is_measured_against_each_metrics_uncertainty(tmp_path: Path) -> None:
    """z has a CI of width 1: moving 0.3 is within half of it, moving 0.6 is not; p (1,000 null draws) may move
    by three Monte-Carlo SEs; a metric with no CI of its own is held to its case's effect CI."""
    path = baseline_path(tmp_path, "v1")
    base_case = _record("x::h[a]", "pass", (2.5, 3.5), z=3.0, z_ci_low=2.5, z_ci_high=3.5, p=0.01, w=0.4)
    save(path, document("v1", _summary_of(base_case)))
    base, rule = Baseline.load(path), DriftRule()
    assert base.compare(_record("x::h[a]", "pass", z=3.3, z_ci_low=2.8, z_ci_high=3.8, p=0.015, w=0.7), rule) == []
    moved = base.compare(_record("x::h[a]", "pass", z=3.6, z_ci_low=3.1, z_ci_high=4.1, p=0.05, w=1.2), rule)
    assert {e.name for e in moved} == {"z", "z_ci_low", "z_ci_high", "p", "w"}
    assert "0.5 × its CI width" in (next(e for e in moved if e.name == "z").rule or "")
    assert "Monte-Carlo" in (next(e for e in moved if e.name == "p").rule or "")
    verdicts_only = DriftRule(verdicts_only=True)
    assert base.compare(_record("x::h[a]", "pass", z=9.0), verdicts_only) == []
    assert base.compare(_record("x::h[a]", "fail", z=9.0), verdicts_only)[0].kind == "verdict"


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.delenv("PERTURB_MODEL", raising=False)
    pytester.makeconftest(CONFTEST)
    (pytester.path / "hypotheses").mkdir()
    (pytester.path / "hypotheses" / "claim1.yaml").write_text(CLAIM)
    return pytester


def _summary(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "reports" / "summary.json").read_text())


def _save_v1(suite: pytest.Pytester) -> Path:
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "--save-baseline", "v1",
                                        "--baseline-dir", "bl")
    result.assert_outcomes(passed=2, failed=2)  # beta does not cluster: its verdict is fail (as planted)
    path = suite.path / "bl" / "v1.json"
    assert f"baseline saved: {path}" in result.stdout.str()
    return path


def test_regression_workflow(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Save; same inputs → no drift; tiny's checkpoint changes → exactly tiny's cases drift, reported once at the
    end (each case keeps its verdict as its pytest outcome); cases come and go."""
    path = _save_v1(suite)
    doc = json.loads(path.read_text())
    assert sorted(doc["cases"]) == [f"claim1::pathway_clustering[{m}-{s}]" for m in ("tiny", "twin")
                                    for s in ("alpha", "beta")]
    tiny_alpha = doc["cases"]["claim1::pathway_clustering[tiny-alpha]"]
    assert tiny_alpha["verdict"] == "pass" and tiny_alpha["metrics"]["z"] > 2
    assert set(tiny_alpha["fingerprints"]) == {"models/tiny", "data"}
    assert set(doc["fingerprints"]) == {"models/tiny", "models/twin", "data"}
    assert doc["claims"] == {"pathway_clustering": "fail"} and doc["partial"] is None
    assert path.read_text() == json.dumps(doc, indent=2, sort_keys=True) + "\n"

    # same inputs, in parallel: no drift
    same = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "-n", "2", "--baseline", "v1",
                                      "--baseline-dir", "bl")
    same.assert_outcomes(passed=2, failed=2)
    assert "no drift" in same.stdout.str()
    drift = _summary(suite)["drift"]
    assert drift["cases"] == {} and drift["gone"] == [] and drift["checkpoints"] == {} and drift["claims"] == {}

    # tiny's checkpoint changes: tiny's cases drift, twin's do not
    monkeypatch.setenv("PERTURB_MODEL", "tiny")
    alluredir = suite.path / "allure"
    changed = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "--baseline", "v1",
                                         "--baseline-dir", "bl", f"--alluredir={alluredir}")
    changed.assert_outcomes(passed=1, failed=3)  # tiny-alpha now fails: its verdict, not the drift, decides
    assert changed.ret == 1
    summary = _summary(suite)
    drift = summary["drift"]
    assert sorted(drift["cases"]) == ["claim1::pathway_clustering[tiny-alpha]", "claim1::pathway_clustering[tiny-beta]"]
    assert list(drift["checkpoints"]) == ["models/tiny"]
    flips = [e for e in drift["cases"]["claim1::pathway_clustering[tiny-alpha]"] if e["kind"] == "verdict"]
    assert flips == [{"kind": "verdict", "baseline": "pass", "current": "fail"}]
    out = changed.stdout.str()
    assert out.count("DRIFT  claim1::pathway_clustering[tiny-alpha]: verdict pass → fail") == 1  # one line, once
    assert "fingerprint changed  models/tiny" in out and "DRIFT  claim1::pathway_clustering[twin" not in out
    assert "2 cases drifted (1 with a verdict change)" in out
    md = (suite.path / "reports" / "summary.md").read_text()
    assert "## Drift from baseline `v1`" in md and "`claim1::pathway_clustering[tiny-beta]`" in md
    # Allure keeps the verdict as the status: tiny-alpha failed (its verdict), twin-alpha passed
    results = {r["name"]: r for r in (json.loads(p.read_text()) for p in alluredir.glob("*-result.json"))}
    statuses = sorted(r["status"] for r in results.values())
    assert statuses == ["failed", "failed", "failed", "passed"]
    monkeypatch.delenv("PERTURB_MODEL")

    # a subset run: the baseline cases it did not select are not 'gone'
    subset = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "--baseline", "v1",
                                        "--baseline-dir", "bl", "-k", "alpha")
    subset.assert_outcomes(passed=2, deselected=2)
    assert subset.ret == 0
    drift = _summary(suite)["drift"]
    assert drift["gone"] == [] and len(drift["unchecked"]) == 2 and drift["cases"] == {}

    # beta replaced by gamma: beta's cases are gone, gamma's are new, alpha's unchanged
    (suite.path / "hypotheses" / "claim1.yaml").write_text(CLAIM.replace("[alpha, beta]", "[alpha, gamma]")
                                                           .replace("beta: fail", "gamma: fail"))
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "--baseline", "v1",
                                        "--baseline-dir", "bl")
    result.assert_outcomes(passed=2, failed=2)
    assert result.ret == 1
    drift = _summary(suite)["drift"]
    assert drift["gone"] == ["claim1::pathway_clustering[tiny-beta]", "claim1::pathway_clustering[twin-beta]"]
    assert drift["cases"] == {f"claim1::pathway_clustering[{m}-gamma]": [{"kind": "added"}] for m in ("tiny", "twin")}
    out = result.stdout.str()
    assert "GONE   claim1::pathway_clustering[tiny-beta]" in out and "new case: not in the baseline" in out


def test_one_percent_noise_is_not_drift_but_a_real_change_is(suite: pytest.Pytester,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """1 % noise on tiny's pert_encoder moves metrics by less than their uncertainty: no drift (a fixed
    1e-6 + 1e-4·|b| tolerance would flag it); removing the planted direction is flagged."""
    _save_v1(suite)
    monkeypatch.setenv("NOISE_MODEL", "tiny")
    noisy = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "--baseline", "v1",
                                       "--baseline-dir", "bl")
    assert "no drift" in noisy.stdout.str(), noisy.stdout.str()
    assert _summary(suite)["drift"]["cases"] == {} and list(_summary(suite)["drift"]["checkpoints"]) == ["models/tiny"]
    strict = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "--baseline", "v1",
                                        "--baseline-dir", "bl", "--drift-tolerance", "0")
    assert "DRIFT  claim1::pathway_clustering[tiny-alpha]" in strict.stdout.str()  # it did move, a little
    monkeypatch.delenv("NOISE_MODEL")
    monkeypatch.setenv("PERTURB_MODEL", "tiny")
    real = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "--baseline", "v1",
                                      "--baseline-dir", "bl")
    assert "DRIFT  claim1::pathway_clustering[tiny-alpha]" in real.stdout.str() and real.ret == 1


def test_a_baseline_saved_from_a_partial_run_says_so(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "--save-baseline", "part",
                                        "--baseline-dir", "bl", "-k", "alpha")
    assert "note: the run was narrowed (-k alpha); the baseline holds only its 2 cases" in result.stdout.str()
    assert json.loads((suite.path / "bl" / "part.json").read_text())["partial"] == "the run was narrowed (-k alpha)"


def test_unknown_baseline_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    (pytester.path / "bl").mkdir()
    (pytester.path / "bl" / "v1.json").write_text("{}")
    missing = pytester.runpytest_subprocess("--baseline", "nope", "--baseline-dir", "bl")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    assert "no baseline at" in missing.stderr.str() and "known: v1" in missing.stderr.str()
