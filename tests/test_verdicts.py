"""One verdict per case, decided once, and the same everywhere.

A probe with hand-set outcomes (per gene set: p, effect, CI, smallest attainable p) runs through the real
plugin in a subprocess. Every output — the terminal, the pytest outcome, the Allure result file and
summary.json — must show the same verdict for each case: a case significant on its raw p but not after the
correction within its claim fails in all four; a test that cannot reach significance is inconclusive; a
significant effect below the minimum effect of interest fails and says so; a case whose worker is killed is
an error with the reason, not a missing case. Claim-level rules are unit-tested on records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hypocheck.decisions import claim_result
from hypocheck.verdict import CaseVerdict, error_verdict

CONFTEST = '''
import os

import numpy as np

from hypocheck.backend import StaticBackend
from hypocheck.registry import ProbeResult, probe

OUTCOMES = {  # gene set: (p, effect, CI, smallest attainable p)
    "raw_only": (0.02, 0.5, (0.3, 0.7), 0.0005),     # significant raw, not once corrected for 3 cases
    "strong": (0.001, 0.5, (0.3, 0.7), 0.0005),
    "absent": (0.5, 0.0, (-0.2, 0.2), 0.0005),
    "floor": (0.03, 0.5, (0.3, 0.7), 0.03),          # 1/35 rank-test floor: corrected, it cannot reach 0.05
    "negligible": (0.0001, 0.05, (0.01, 0.09), 0.0001),
    "crash": (0.01, 0.5, (0.3, 0.7), 0.0005),
}


@probe("fixed_outcome", metrics=("effect", "p"), effect="effect", p="p", axes=("model", "gene_set"),
       min_effect=0.1)
def fixed_outcome(*, outcome, params, rng):
    """A probe whose result is set by hand per gene set."""
    p, effect, ci, floor = OUTCOMES[outcome]
    if outcome == "crash" and os.environ.get("CRASH"):
        os.kill(os.getpid(), 9)
    return ProbeResult(metrics={"effect": effect, "p": p}, cis={"effect": ci}, attainable={"p": floor},
                       null=rng.normal(0, 0.1, 1999))


class Context:
    def prepare(self, case):
        return {"outcome": case.axes["gene_set"]}

    def environment(self):
        return {"device": "cpu", "models": {"m": "fixed"}}


def pytest_hypocheck_backend(config):
    return StaticBackend({"model": ["m"], "gene_set": sorted(OUTCOMES)}, Context)
'''

CORRECTED = """\
id: corrected
claim: three sets, each significant
probe: fixed_outcome
cases: {model: [m], gene_set: [raw_only, strong, absent]}
expect: [p < 0.05]
"""

FLOORS = """\
hypotheses:
  - id: unreachable
    claim: a test that cannot reach significance
    probe: fixed_outcome
    cases: {model: [m], gene_set: [floor, strong]}
    expect: [significant]
  - id: negligible
    claim: an effect too small to matter
    probe: fixed_outcome
    cases: {model: [m], gene_set: [negligible]}
    expect: [significant]
  - id: any_of
    claim: at least one of two
    probe: fixed_outcome
    cases: {model: [m], gene_set: [strong, absent]}
    expect: [significant]
    holds_if: any
"""

CRASH = """\
id: crashing
claim: one case's worker dies
probe: fixed_outcome
cases: {model: [m], gene_set: [crash, strong, absent]}
expect: [significant]
"""

STATUS = {"pass": "passed", "fail": "failed", "inconclusive": "skipped", "error": "broken"}


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    (pytester.path / "hypotheses").mkdir()
    return pytester


def _summary(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "reports" / "summary.json").read_text())


def _allure(directory: Path) -> dict[str, str]:
    """Case id → Allure status, from the result files."""
    out = {}
    for path in directory.glob("*-result.json"):
        result = json.loads(path.read_text())
        params = {p["name"]: p["value"].strip("'") for p in result["parameters"]}
        hyp = next(lab["value"] for lab in result["labels"] if lab["name"] == "hypothesis")
        out[f"{hyp}[{params['model']}-{params['gene_set']}]"] = result["status"]
    return out


def test_every_output_shows_the_one_verdict(suite: pytest.Pytester) -> None:
    (suite.path / "hypotheses" / "corrected.yaml").write_text(CORRECTED)
    alluredir = suite.path / "allure"
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "-n", "2", "-rA",
                                        f"--alluredir={alluredir}")
    summary = _summary(suite)
    verdicts = {c["id"].split("::")[1]: c["verdict"] for c in summary["cases"]}
    assert verdicts == {"corrected[m-raw_only]": "fail", "corrected[m-strong]": "pass", "corrected[m-absent]": "fail"}
    raw_only = next(c for c in summary["cases"] if c["id"].endswith("raw_only]"))
    assert raw_only["p"] == pytest.approx(0.02) and raw_only["p_adj"] == pytest.approx(0.06)
    assert raw_only["family_size"] == 3 and raw_only["p_run_bh"] is not None
    out = result.stdout.str()
    # pytest's own outcome per case, its terminal line, Allure's status and the summary: the same verdict
    outcomes = {line.split("::")[-1].split(" ")[0]: line.split(" ")[0]
                for line in out.splitlines() if line.startswith(("PASSED ", "FAILED ")) and "::" in line}
    assert outcomes == {"corrected[m-raw_only]": "FAILED", "corrected[m-strong]": "PASSED",
                        "corrected[m-absent]": "FAILED"}
    for case_id, verdict in verdicts.items():
        assert any(line.startswith(f"{verdict.upper():<12} corrected::{case_id}") for line in out.splitlines()), case_id
    assert _allure(alluredir) == {k: STATUS[v] for k, v in verdicts.items()}
    assert "p_adj=0.06" in out and "p < 0.05" in out
    # the Allure header counts (statuses) equal the summary's counts
    statuses = list(_allure(alluredir).values())
    assert {k: statuses.count(STATUS[k]) for k in STATUS} == summary["counts"]
    assert summary["claims"] == [{"hypothesis": "corrected", "claim": "three sets, each significant",
                                  "verdict": "fail", "rule": "all", "counts": {"pass": 1, "fail": 2,
                                                                               "inconclusive": 0, "error": 0},
                                  "cases": sorted(f"corrected::{k}" for k in verdicts),
                                  "reason": "all cases must pass: 1 pass, 2 fail of 3"}]
    assert "FAIL         corrected  all cases must pass: 1 pass, 2 fail of 3" in out


def test_unreachable_significance_negligible_effects_and_claim_rules(suite: pytest.Pytester) -> None:
    (suite.path / "hypotheses" / "floors.yaml").write_text(FLOORS)
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider")
    cases = {c["id"].split("::")[1]: c for c in _summary(suite)["cases"]}
    floor = cases["unreachable[m-floor]"]
    assert floor["verdict"] == "inconclusive"
    assert "p cannot reach 0.05: its smallest attainable value is 0.03, 0.06 corrected for the claim's 2 cases" in \
        floor["reason"]
    assert floor["p_values"]["p"] == {"raw": 0.03, "adjusted": 0.06, "floor": 0.03}
    small = cases["negligible[m-negligible]"]
    assert small["verdict"] == "fail" and small["min_effect"] == 0.1
    assert small["reason"].startswith("significant but below the minimum effect: effect 0.05 95% CI [0.01, 0.09]")
    claims = {c["hypothesis"]: c["verdict"] for c in _summary(suite)["claims"]}
    assert claims == {"unreachable": "inconclusive", "negligible": "fail", "any_of": "pass"}
    result.assert_outcomes(passed=2, failed=2, skipped=1)


def test_a_killed_worker_leaves_an_error_not_a_gap(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    (suite.path / "hypotheses" / "crash.yaml").write_text(CRASH)
    monkeypatch.setenv("CRASH", "1")
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "-n", "2")
    summary = _summary(suite)
    cases = {c["id"].split("::")[1]: c for c in summary["cases"]}
    assert set(cases) == {"crashing[m-crash]", "crashing[m-strong]", "crashing[m-absent]"}
    crashed = cases["crashing[m-crash]"]
    assert crashed["verdict"] == "error" and "crashed" in crashed["reason"]
    assert summary["counts"]["error"] == 1 and result.ret != 0
    assert "ERROR        crash::crashing[m-crash]  could not run: never finished: worker" in result.stdout.str()


def _record(verdict: str, rule: str | int = "all") -> CaseVerdict:
    case = error_verdict("f::h[x]", "", "", hypothesis="h", claim="c", holds_if=rule)
    return CaseVerdict.from_json({**case.to_json(), "verdict": verdict})


@pytest.mark.parametrize(("verdicts", "rule", "expected"), [
    (["pass", "pass"], "all", "pass"),
    (["pass", "fail"], "all", "fail"),
    (["pass", "inconclusive"], "all", "inconclusive"),
    (["pass", "error"], "all", "error"),
    (["fail", "inconclusive", "fail"], "any", "inconclusive"),
    (["fail", "fail"], "any", "fail"),
    (["fail", "pass"], "any", "pass"),
    (["pass", "pass", "fail"], 2, "pass"),
    (["pass", "fail", "fail"], 2, "fail"),
    (["pass", "inconclusive", "fail"], 2, "inconclusive"),
])
def test_claim_rules(verdicts: list[str], rule: str | int, expected: str) -> None:
    assert claim_result([_record(v, rule) for v in verdicts]).verdict == expected
