"""End-to-end runs of the plugin with pytester, on a tiny real arc-state model (-n 0 / -n 2 / -n auto /
shuffled-order agreement: tests/test_determinism.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

CLAIM = """\
id: pathway_clustering
claim: Knockdowns of one pathway cluster in pert_encoder space
source: {claim: 1, notebook: NB02}
probe: pert_embedding_clustering
cases:
  model: [tiny]
  gene_set: [alpha, beta, tiny]
params: {null_sets: 400, bootstrap: 200, min_members: 3}
expect:
  - z > 2
  - within_mean_cosine > background_mean_cosine
reported: {alpha/within_mean_cosine: 0.581, background_mean_cosine: 0.267}
marks: [embedding]
"""

BROKEN = """\
id: broken_claim
claim: a claim with a typo
probe: pert_embedding_clustering
cases: {model: [tiny], gene_set: [alpha]}
expect:
  - z > 2
paramz: {null_sets: 100}
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    pytester.makeconftest((Path(__file__).parent / "e2e_conftest.py").read_text())
    (pytester.path / "hypotheses").mkdir()
    (pytester.path / "hypotheses" / "claim1.yaml").write_text(CLAIM)
    (pytester.path / "hypotheses" / "broken.yaml").write_text(BROKEN)
    return pytester


def load_summary(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "reports" / "summary.json").read_text())


def test_pass_fail_inconclusive_and_broken_file_in_one_run(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, skipped=1, errors=1)  # a file that does not load is an error
    out = result.stdout.str()
    assert "Traceback" not in out and "ERROR hypotheses/broken.yaml::<load>" in out
    assert "broken.yaml:7:1 (at paramz): unknown key 'paramz'" in out
    assert "did you mean 'params'?" in out
    summary = load_summary(suite)
    verdicts = {c["id"]: c["verdict"] for c in summary["cases"]}
    assert verdicts == {
        "claim1::pathway_clustering[tiny-alpha]": "pass",
        "claim1::pathway_clustering[tiny-beta]": "fail",
        "claim1::pathway_clustering[tiny-tiny]": "inconclusive",
        "hypotheses/broken.yaml::<load>": "error",
    }
    alpha = next(c for c in summary["cases"] if c["id"].endswith("[tiny-alpha]"))
    for key in ("id", "hypothesis", "claim", "verdict", "effect", "ci", "p", "p_adj", "reported", "metrics", "seed"):
        assert key in alpha
    assert alpha["reported"] == {"within_mean_cosine": 0.581, "background_mean_cosine": 0.267}
    assert alpha["ci"][0] > 0 and alpha["p"] < 0.01 and alpha["p_adj"] >= alpha["p"]
    assert set(alpha["metrics"]) >= {"within_mean_cosine", "background_mean_cosine", "z", "p"}
    assert "environment" in summary and summary["environment"]["models"] == {"tiny": "planted-seed-1"}
    assert (suite.path / "reports" / "summary.md").read_text().startswith("# Claim check summary")
    assert "hypocheck verdicts" in out and "FAIL" in out


def test_failure_message_names_claim_values_and_yaml_line(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("hypotheses", "-k", "beta")
    result.assert_outcomes(failed=1, deselected=3, passed=0)
    out = result.stdout.str()
    assert "claim: Knockdowns of one pathway cluster in pert_encoder space" in out
    assert "✗ z > 2: z = " in out
    assert "reported background_mean_cosine = 0.267, measured" in out
    assert "claim1.yaml:1:1" in out


def test_marks_and_ids_select_cases(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("hypotheses", "-m", "embedding", "--collect-only", "-q")
    out = result.stdout.str()
    assert "hypotheses/claim1.yaml::pathway_clustering[tiny-alpha]" in out
    assert "broken.yaml" not in out.split("deselected")[0].split("\n")[0]


def test_inconclusive_can_be_made_to_fail(suite: pytest.Pytester) -> None:
    """The case stays what it is (skipped: inconclusive) everywhere; only the run's exit status fails."""
    result = suite.runpytest_subprocess("hypotheses", "-k", "tiny-tiny", "--inconclusive-fails", "-rs")
    result.assert_outcomes(skipped=1, deselected=3)
    assert result.ret == 1 and "2 set members found" in result.stdout.str()
    assert load_summary(suite)["counts"]["inconclusive"] == 1
    plain = suite.runpytest_subprocess("hypotheses", "-k", "tiny-tiny")
    assert plain.ret == 0  # without the option, an inconclusive case (and claim) is not a failure



# A context whose inputs raise: a data error for 'tiny' (the project's own error), a raw ValueError for 'beta'.
RAISING = '''

from hypocheck.errors import DataError, Location


class RaisingContext(TinyContext):
    def prepare(self, case):
        if case.axes["gene_set"] == "tiny":
            raise DataError("cell line 'hepg2' has no cells of knockdown K20", Location("data/tiny.h5ad"),
                            "valid: K0 … K19")
        if case.axes["gene_set"] == "beta":
            raise ValueError("torch.cat(): expected a non-empty list of Tensors")
        return super().prepare(case)


def pytest_hypocheck_backend(config):
    return StaticBackend(VOCABULARY, RaisingContext)
'''


@pytest.mark.parametrize("workers", ["2"])  # reports travel from a worker, as in CI runs
def test_an_error_verdict_is_pytests_error_in_every_output(
    suite: pytest.Pytester, workers: str
) -> None:
    """A case whose inputs raise is an error everywhere: pytest's outcome (E, 'errors' in its counts), JUnit's
    <error>, summary.json, Allure's 'broken' and the exit status; a passing case beside it stays passed."""
    suite.makeconftest((Path(__file__).parent / "e2e_conftest.py").read_text() + RAISING)
    (suite.path / "hypotheses" / "broken.yaml").unlink()
    junit, alluredir = suite.path / "junit.xml", suite.path / "allure-results"
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "-n", workers, "-rA",
                                        f"--junitxml={junit}", f"--alluredir={alluredir}")
    result.assert_outcomes(passed=1, errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "ERROR hypotheses/claim1.yaml::pathway_clustering[tiny-tiny]" in out
    assert "ERROR hypotheses/claim1.yaml::pathway_clustering[tiny-beta]" in out
    assert "FAILED" not in out
    # the project's error reads as its message; a raw exception keeps its traceback for whoever debugs it
    assert "claim1::pathway_clustering[tiny-tiny]: data/tiny.h5ad: cell line 'hepg2' has no cells" in out
    assert "ValueError: torch.cat(): expected a non-empty list of Tensors" in out

    import xml.etree.ElementTree as ET

    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert {name: [child.tag for child in case if child.tag in ("error", "failure", "skipped")]
            for name, case in cases.items()} == {
        "pathway_clustering[tiny-alpha]": [], "pathway_clustering[tiny-beta]": ["error"],
        "pathway_clustering[tiny-tiny]": ["error"]}
    suite_counts = next(ET.parse(junit).getroot().iter("testsuite")).attrib
    assert (suite_counts["errors"], suite_counts["failures"]) == ("2", "0")

    summary = load_summary(suite)
    verdicts = {c["id"]: (c["verdict"], c["reason"]) for c in summary["cases"]}
    assert verdicts["claim1::pathway_clustering[tiny-alpha]"][0] == "pass"
    assert verdicts["claim1::pathway_clustering[tiny-tiny]"] == (
        "error", "data/tiny.h5ad: cell line 'hepg2' has no cells of knockdown K20\n  hint: valid: K0 … K19")
    assert verdicts["claim1::pathway_clustering[tiny-beta]"] == (
        "error", "ValueError: torch.cat(): expected a non-empty list of Tensors")
    assert summary["counts"]["error"] == 2

    allure = {}
    for path in alluredir.glob("*-result.json"):
        record = json.loads(path.read_text())
        allure[record["name"]] = record
    claim = "Knockdowns of one pathway cluster in pert_encoder space"
    statuses = {s: allure[f"{claim} [tiny · {s}]"]["status"] for s in ("alpha", "beta", "tiny")}
    assert statuses == {"alpha": "passed", "beta": "broken", "tiny": "broken"}
    # an errored case keeps its parameters, so that its history follows the same case as a run where it passed
    assert [(p["name"], p["value"]) for p in allure[f"{claim} [tiny · tiny]"]["parameters"]] == [
        ("model", "'tiny'"), ("gene_set", "'tiny'")]


def test_loadgroup_keeps_a_group_on_one_worker(suite: pytest.Pytester) -> None:
    """Under ``-n 2 --dist loadgroup`` the cases of one group (a backend without a schedule hint: one model) run
    on one worker, whatever pytest's node ids allow xdist to rewrite; the verdicts keep their case ids."""
    (suite.path / "hypotheses" / "broken.yaml").unlink()
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup",
                                        "-v")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    ran = [line.split()[0] for line in result.stdout.lines
           if line.startswith("[gw") and "claim1.yaml::pathway_clustering[" in line]
    assert len(ran) >= 3 and len(set(ran)) == 1, result.stdout.str()
    assert "pathway_clustering[tiny-alpha]@tiny" in result.stdout.str()
    assert sorted(c["id"] for c in load_summary(suite)["cases"]) == [
        f"claim1::pathway_clustering[tiny-{s}]" for s in ("alpha", "beta", "tiny")]
