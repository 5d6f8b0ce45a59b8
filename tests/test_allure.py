"""Allure reporting: per-case titles, parameters, labels, descriptions and attachments; categories and environment.

Unit tests of the plot registry and of the properties writer, and an end-to-end pytester run (tiny real
arc-state model) whose ``--alluredir`` output is read back as Allure's JSON result files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hypocheck import plots
from hypocheck.allure_report import CATEGORIES, environment_properties, family_of
from hypocheck.registry import ProbeResult
from tests.test_plugin_e2e import BROKEN, CLAIM, REPO_ROOT

PNG = b"\x89PNG\r\n\x1a\n"

# A probe that returns what other probes will: tables and the named arrays plots.py knows.
EXTRA_PROBE = '''

import pandas as pd
from hypocheck.registry import ProbeResult, probe


@probe("array_showcase", metrics=("score", "p"), effect="score", p="p", axes=("model", "gene_set"))
def array_showcase(*, embeddings, members, params, rng, **_):
    """Per-member scores, with every array kind plots.py draws."""
    x = embeddings[members, 0]
    counts = np.array([10, 20, 40, 80])
    return ProbeResult(
        metrics={"score": float(x.mean()), "p": 0.5},
        cis={"score": (float(x.min()), float(x.max()))},
        arrays={"spearman": rng.uniform(-1, 1, 50), "jacobian": x, "delta_y": 2 * x + 0.1,
                "cell_counts": counts, "convergence": 1 / np.sqrt(counts)[:, None] + rng.normal(0, 0.01, (4, 3))},
        tables={"members": pd.DataFrame({"member": members, "value": x})},
    )
'''

SHOWCASE = """\
id: showcase
claim: Every array kind gets its plot
source: {notebook: NB99}
probe: array_showcase
cases: {model: [tiny], gene_set: [alpha]}
expect: [score > -100]
tags: [minor]
"""


# ------------------------------------------------------------------------------------------------ unit tests
def test_plot_registry_draws_every_known_array_kind() -> None:
    rng = np.random.default_rng(0)
    result = ProbeResult(
        metrics={"within_mean_cosine": 0.4, "z": 3.0, "p": 0.01},
        null=rng.normal(0.1, 0.05, 500),
        arrays={"similarity": np.corrcoef(rng.normal(size=(12, 6))), "spearman": rng.uniform(-1, 1, 40),
                "jacobian": rng.normal(size=30), "delta_y": rng.normal(size=30),
                "cell_counts": np.array([8, 16, 32]), "convergence": np.array([0.3, 0.2, 0.15])},
    )
    info = plots.PlotInfo(title="t", metrics=dict(result.metrics), members=np.array([3, 5, 7]), p_metric="p")
    drawn = dict(plots.render_all(result, info))
    assert set(drawn) == {"null distribution", "similarity heatmap", "per-gene knockout Spearman",
                          "Jacobian vs ΔY", "cell-count convergence"}
    assert all(isinstance(png, bytes) and png.startswith(PNG) for png in drawn.values())


def test_observed_value_and_set_order() -> None:
    null = np.linspace(0, 1, 101)
    declared = plots.PlotInfo(observed_metric="within_mean_cosine")  # the probe's metric of kind "observed"
    assert plots.observed_value(ProbeResult(metrics={"within_mean_cosine": 0.7}, null=null), declared) == 0.7
    # a metric's name says nothing: without a declared observed metric, the null is drawn alone
    assert plots.observed_value(ProbeResult(metrics={"within_mean_cosine": 0.7, "z": 2.0}, null=null),
                                plots.PlotInfo()) is None
    assert plots.observed_value(ProbeResult(metrics={}, arrays={"observed": np.array(0.25)}, null=null),
                                plots.PlotInfo()) == 0.25
    order, cuts = plots.set_order(6, np.array([4, 1]), None)
    assert order.tolist() == [1, 4, 0, 2, 3, 5] and cuts == [2]
    order, cuts = plots.set_order(4, None, ("b", "", "a", "b"))
    assert order.tolist() == [2, 0, 3, 1] and cuts == [1, 3]


def test_a_broken_plot_is_reported_not_raised() -> None:
    @plots.plot_for("boom_array", name="boom")
    def boom(result: ProbeResult, info: plots.PlotInfo) -> None:
        raise ValueError("bad data")

    try:
        drawn = dict(plots.render_all(ProbeResult(metrics={}, arrays={"boom_array": np.ones(3)}), plots.PlotInfo()))
        assert drawn == {"boom": "plot 'boom' failed: ValueError: bad data"}
    finally:
        plots._PLOTS.pop("boom")


def test_environment_properties_flatten_and_escape() -> None:
    text = environment_properties({"models": {"fewshot": {"fingerprint": "ab12", "describe": "a=b: c"}},
                                   "packages": {"torch": "2.13"}, "note key": "línea\nnext", "gpus": [0, 1]})
    assert text.splitlines() == [
        "gpus=[0, 1]", "models.fewshot.describe=a=b: c", "models.fewshot.fingerprint=ab12",
        "note\\ key=l\\u00ednea\\nnext", "packages.torch=2.13",
    ]


def test_family_is_the_folder_below_hypotheses() -> None:
    assert family_of("/x/hypotheses/paper/claim1.yaml") == "paper"
    assert family_of("hypotheses/demo/sub/c.yaml") == "demo/sub"
    assert family_of("/x/hypotheses/c.yaml") == "hypotheses"


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makeconftest((Path(__file__).parent / "e2e_conftest.py").read_text() + EXTRA_PROBE)
    (pytester.path / "hypotheses" / "paper").mkdir(parents=True)
    (pytester.path / "hypotheses" / "paper" / "claim1.yaml").write_text(CLAIM)
    (pytester.path / "hypotheses" / "paper" / "broken.yaml").write_text(BROKEN)
    (pytester.path / "hypotheses" / "demo").mkdir()
    (pytester.path / "hypotheses" / "demo" / "showcase.yaml").write_text(SHOWCASE)
    return pytester


def _results(alluredir: Path) -> dict[str, dict]:
    out = {}
    for path in alluredir.glob("*-result.json"):
        result = json.loads(path.read_text())
        out[result["name"]] = result
    return out


def _labels(result: dict) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for label in result["labels"]:
        labels.setdefault(label["name"], []).append(label["value"])
    return labels


def _attachment(alluredir: Path, result: dict, name: str) -> bytes:
    source = next(a["source"] for a in result["attachments"] if a["name"] == name)
    return (alluredir / source).read_bytes()


def _category(result: dict) -> str | None:
    """The first category whose status and message regex match, as Allure 3 assigns them."""
    message = (result.get("statusDetails") or {}).get("message") or ""
    for category in CATEGORIES:
        if result["status"] in category["matchedStatuses"] and re.search(category.get("messageRegex", ""), message):
            return category["name"]
    return None


def test_every_case_reports_to_allure(suite: pytest.Pytester) -> None:
    alluredir = suite.path / "allure-results"
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "-n", "2",
                                        f"--alluredir={alluredir}", "--clean-alluredir")
    result.assert_outcomes(passed=2, failed=1, skipped=1, errors=1)
    results = _results(alluredir)
    claim = "Knockdowns of one pathway cluster in pert_encoder space"
    alpha, beta, tiny = (results[f"{claim} [tiny · {s}]"] for s in ("alpha", "beta", "tiny"))
    showcase = results["Every array kind gets its plot [tiny · alpha]"]
    broken = results["hypothesis file does not load: broken.yaml"]

    # statuses and categories: fail, inconclusive and error are told apart
    assert [r["status"] for r in (alpha, beta, tiny, broken, showcase)] == [
        "passed", "failed", "skipped", "broken", "passed"]
    assert [_category(r) for r in (beta, tiny, broken)] == ["Claim failed", "Inconclusive", "Error"]

    # parameters are the case axes (history follows them); labels name family, probe, source, severity
    assert [(p["name"], p["value"]) for p in alpha["parameters"]] == [("model", "'tiny'"), ("gene_set", "'alpha'")]
    assert alpha["historyId"] != beta["historyId"]
    labels = _labels(alpha)
    assert labels["family"] == ["paper"] and labels["parentSuite"] == ["paper"]
    assert labels["probe"] == ["pert_embedding_clustering"] and labels["source_claim"] == ["claim 1"]
    assert labels["notebook"] == ["NB02"] and labels["severity"] == ["critical"]
    assert _labels(showcase)["family"] == ["demo"] and _labels(showcase)["severity"] == ["minor"]

    # description: claim, verdict, effect with CI, reported beside measured
    description = alpha["descriptionHtml"]
    for text in (claim, "PASS", "delta_cosine", "95% CI", "Reported by the paper vs measured", "0.581",
                 "within_mean_cosine", "p (raw)", "p (corrected within the claim)", "null distribution"):
        assert text in description

    # attachments: metrics JSON, plots PNG (null with the observed value, similarity heatmap), tables CSV
    metrics = json.loads(_attachment(alluredir, alpha, "metrics"))
    assert metrics["verdict"] == "pass" and metrics["metrics"]["z"] > 2 and "delta_cosine" in metrics["cis"]
    for name in ("null distribution", "similarity heatmap"):
        assert _attachment(alluredir, alpha, name).startswith(PNG)
    assert "metrics" in {a["name"] for a in tiny["attachments"]}  # inconclusive: still its metrics
    shown = {a["name"]: a["type"] for a in showcase["attachments"]}
    assert shown == {"metrics": "application/json", "members.csv": "text/csv",
                     "per-gene knockout Spearman": "image/png", "Jacobian vs ΔY": "image/png",
                     "cell-count convergence": "image/png"}
    table = _attachment(alluredir, showcase, "members.csv").decode()
    assert table.splitlines()[0] == "member,value" and len(table.splitlines()) == 11

    # run metadata, written once by the controller
    categories = json.loads((alluredir / "categories.json").read_text())
    assert [c["name"] for c in categories][:4] == [
        "Drift from baseline", "Verdict differs from the planted truth", "Claim failed", "Inconclusive"]
    # the claim is the parent: every case of a hypothesis is grouped under it, with the claim's verdict
    summary = json.loads((suite.path / "reports" / "summary.json").read_text())
    claims = {c["hypothesis"]: c for c in summary["claims"]}
    assert claims["pathway_clustering"]["verdict"] == "fail"
    assert _labels(alpha)["suite"] == [f"pathway_clustering — claim FAIL ({claims['pathway_clustering']['reason']})"]
    assert _labels(alpha)["claim_verdict"] == ["fail"]
    properties = (alluredir / "environment.properties").read_text()
    assert "models.tiny=planted-seed-1" in properties and "device=cpu" in properties
    assert re.search(r"^packages\.torch=\S+", properties, re.M) and "xdist_workers=2" in properties
    assert json.loads((suite.path / "reports" / "summary.json").read_text())["counts"]["pass"] == 2
