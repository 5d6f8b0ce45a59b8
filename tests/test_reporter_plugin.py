"""A reporter is one small module on the engine's hooks: a JSON-lines writer (under 80 lines), loaded with ``-p``,
writes one line per case as its record reaches the controller (under ``-n 2``: records travel from the
workers) and one line for the run; what it writes agrees with summary.json for every case. The run record's
one JSON form is summary.json itself, and ``hypocheck gate`` reads it back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hypocheck.cli import main as cli_main
from hypocheck.records import RunRecord
from tests.test_verdicts import CONFTEST, CORRECTED, FLOORS

JSONL_REPORTER = '''\
"""Write reports/cases.jsonl: one JSON line per case as its record reaches the controller, then one for the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hypocheck.records import CaseVerdict, RunRecord


def _path(config: pytest.Config) -> Path:
    return Path(config.rootpath) / "reports" / "cases.jsonl"


def _append(config: pytest.Config, line: dict) -> None:
    path = _path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line, sort_keys=True) + "\\n")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller (the only process without -n)
        _path(session.config).unlink(missing_ok=True)


def pytest_hypocheck_case_recorded(config: pytest.Config, verdict: CaseVerdict) -> None:
    _append(config, {"kind": "case", "id": verdict.id, "verdict": verdict.verdict, "effect_metric":
                     verdict.effect_metric, "effect": verdict.effect, "ci": list(verdict.ci), "p": verdict.p})


def pytest_hypocheck_run_finished(config: pytest.Config, run: RunRecord) -> None:
    _append(config, {"kind": "run", "counts": run.counts, "claims": {c.hypothesis: c.verdict for c in run.claims},
                     "p_run_bh": {c.id: c.p_run_bh for c in run.cases}})
'''


def test_the_reporter_is_one_small_module() -> None:
    assert len(JSONL_REPORTER.splitlines()) < 80


@pytest.fixture
def run(pytester: pytest.Pytester) -> tuple[pytest.Pytester, pytest.RunResult]:
    pytester.makeconftest(CONFTEST)
    (pytester.path / "hypotheses").mkdir()
    (pytester.path / "hypotheses" / "corrected.yaml").write_text(CORRECTED)
    (pytester.path / "hypotheses" / "floors.yaml").write_text(FLOORS)
    (pytester.path / "jsonl_reporter.py").write_text(JSONL_REPORTER)
    result = pytester.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "-p", "jsonl_reporter",
                                           "-n", "2")
    return pytester, result


def test_a_jsonl_reporter_agrees_with_the_summary(run: tuple[pytest.Pytester, pytest.RunResult]) -> None:
    pytester, result = run
    summary = json.loads((pytester.path / "reports" / "summary.json").read_text())
    lines = [json.loads(line) for line in (pytester.path / "reports" / "cases.jsonl").read_text().splitlines()]
    cases = {line["id"]: line for line in lines if line["kind"] == "case"}
    assert len(cases) == len(lines) - 1 == len(summary["cases"]) == 8, result.stdout.str()
    assert {c["verdict"] for c in summary["cases"]} == {"pass", "fail", "inconclusive"}
    for case in summary["cases"]:
        line = cases[case["id"]]
        assert (line["verdict"], line["effect_metric"], line["effect"], line["ci"], line["p"]) == \
            (case["verdict"], case["effect_metric"], case["effect"], case["ci"], case["p"]), case["id"]
    last = lines[-1]
    assert last["kind"] == "run" and last["counts"] == summary["counts"]
    assert last["claims"] == {c["hypothesis"]: c["verdict"] for c in summary["claims"]}
    assert last["p_run_bh"] == {c["id"]: c["p_run_bh"] for c in summary["cases"]}
    # summary.json is the run record's one JSON form
    assert RunRecord.from_json(summary).to_json() == summary
    assert all(set(c["metric_kinds"]) == set(c["metrics"]) for c in summary["cases"])


def test_gate_reads_the_summary(run: tuple[pytest.Pytester, pytest.RunResult], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """Failing claims are findings: the gate passes them; an error or a contradicted planted truth fails it."""
    pytester, _ = run
    path = pytester.path / "reports" / "summary.json"
    assert cli_main(["gate", str(path)]) == 0
    assert "3 pass, 4 fail, 1 inconclusive, 0 error" in capsys.readouterr().out
    summary = json.loads(path.read_text())
    summary["cases"][0] |= {"expected": "fail" if summary["cases"][0]["verdict"] == "pass" else "pass",
                            "truth": "differs"}
    broken = tmp_path / "summary.json"
    broken.write_text(json.dumps(summary))
    alias = subprocess.run([sys.executable, "-m", "hypocheck.gate", str(broken)], capture_output=True, text=True,
                           check=False)
    assert alias.returncode == 1 and f"verdict differs from the planted truth: {summary['cases'][0]['id']}" in \
        alias.stderr
    assert cli_main(["gate", str(tmp_path / "missing.json")]) == 2


def test_one_rule_for_the_exit_status_and_the_control() -> None:
    """pytest's exit status counts failed claims, drift and (when asked) inconclusive cases; the gate only defects.
    A passing case holds as strongly on a control when the control passes with an effect at its CI's low end."""
    import dataclasses

    from hypocheck.decisions import GATE, ExitRule, holds_as_strongly, run_problems
    from hypocheck.records import error_verdict
    from hypocheck.summary import build_run

    base = error_verdict("f::h[a]", "", "f.yaml:1", hypothesis="h", claim="c")
    passed = dataclasses.replace(base, verdict="pass", effect=0.5, ci=(0.3, 0.7))
    failed = dataclasses.replace(base, id="f::h[b]", verdict="fail")
    unsure = dataclasses.replace(base, id="f::g[c]", hypothesis="g", verdict="inconclusive")
    run = build_run([passed, failed, unsure], {})
    assert run_problems(run) == ["claim fails: h"] and run_problems(run, GATE) == []
    assert run_problems(run, ExitRule(inconclusive=True)) == ["claim fails: h", "inconclusive: f::g[c]"]
    assert holds_as_strongly(passed, dataclasses.replace(passed, effect=0.3))
    assert not holds_as_strongly(passed, dataclasses.replace(passed, effect=0.29))
    assert not holds_as_strongly(failed, passed)
