"""Runs never lose results: each run keeps its own summary under reports/runs/<id>/, and reports/summary.json
says whether the latest run was complete, interrupted (Ctrl-C) or narrowed, and where the last complete one is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_plugin_e2e import CLAIM, REPO_ROOT

INTERRUPT = '''

def pytest_runtest_setup(item):
    if item.name.endswith("[tiny-beta]"):
        raise KeyboardInterrupt  # as Ctrl-C during the run
'''


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makeconftest((Path(__file__).parent / "e2e_conftest.py").read_text())
    (pytester.path / "hypotheses").mkdir()
    (pytester.path / "hypotheses" / "claim1.yaml").write_text(CLAIM)
    return pytester


def summary(path: Path) -> dict:
    return json.loads(path.read_text())


def test_an_interrupted_or_narrowed_run_keeps_the_last_complete_results(suite: pytest.Pytester) -> None:
    reports = suite.path / "reports"
    suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider")
    complete = summary(reports / "summary.json")
    assert complete["run"]["state"] == "complete" and len(complete["cases"]) == 3
    kept = complete["run"]["last_complete"]
    assert kept == f"runs/{complete['run']['id']}/summary.json" and summary(reports / kept) == complete

    (suite.path / "conftest.py").write_text((suite.path / "conftest.py").read_text() + INTERRUPT)
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    latest = summary(reports / "summary.json")
    assert latest["run"]["state"] == "interrupted" and "never finished" in latest["run"]["why"]
    assert latest["run"]["last_complete"] == kept and summary(reports / kept) == complete  # reachable, intact
    unfinished = [c for c in latest["cases"] if c["verdict"] == "error"]
    assert unfinished and all(c["hypothesis"] == "pathway_clustering" for c in unfinished)
    assert [c["hypothesis"] for c in latest["claims"]] == ["pathway_clustering"]  # not an empty claim list
    assert "this run is interrupted" in result.stdout.str() and kept in result.stdout.str()

    (suite.path / "conftest.py").write_text((suite.path / "conftest.py").read_text().replace(INTERRUPT, ""))
    suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "-k", "alpha")
    narrowed = summary(reports / "summary.json")
    assert narrowed["run"]["state"] == "narrowed" and "-k alpha" in narrowed["run"]["why"]
    assert narrowed["run"]["last_complete"] == kept and len(narrowed["cases"]) == 1
    assert len(list((reports / "runs").glob("*/summary.json"))) == 3  # every run kept
