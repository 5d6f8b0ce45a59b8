"""The progress display: stages, ETA and throttling (unit), the controller's screen, and end to end under
``-n 2`` (each case's name with its stages, one finished line per case with the summary's verdict)."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from hypocheck import progress
from hypocheck.runsummary import finished_line
from hypocheck.verdict import CaseVerdict, error_verdict

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _nobody_watches() -> Any:
    progress.install(None)
    yield
    progress.install(None)


# ------------------------------------------------------------------ formatting and throttling
@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.4, "59s"), (65, "1m05s"), (600, "10m00s"),
                                               (3725, "1h02m")])
def test_seconds_read_short(seconds: float, text: str) -> None:
    assert progress.format_seconds(seconds) == text


def test_bad_seconds_and_stages_are_refused() -> None:
    with pytest.raises(ValueError, match="seconds must be a number >= 0"):
        progress.format_seconds(-1)
    with pytest.raises(ValueError, match="label must be a non-empty string"):
        with progress.stage(""):
            pass
    with pytest.raises(ValueError, match="total must be None or an int >= 0, got -3"):
        with progress.stage("draws", total=-3):
            pass


def test_eta_is_the_rate_so_far() -> None:
    s = progress.Stage("directions", total=100, started=0.0)
    assert s.eta(5.0) is None  # nothing done yet: no rate
    s.done = 25
    assert s.eta(10.0) == pytest.approx(30.0)  # 25 in 10 s → 75 more in 30 s
    assert progress.format_stage(s.to_json(10.0)) == "directions 25/100 ETA 30s"
    assert progress.Stage("loading").eta(3.0) is None
    assert progress.format_stage({"label": "draws", "done": 7, "total": None}) == "draws 7"


def test_nested_state_reads_as_one_line() -> None:
    state = {"worker": "gw1", "case": "c::h[m-x]", "elapsed": 62.0,
             "stages": [{"label": "jacobian_gram m/x", "done": 0, "total": None, "eta": None},
                        {"label": "Gram directions", "done": 96, "total": 328, "eta": 40.2}]}
    assert progress.format_state(state) == "c::h[m-x] › jacobian_gram m/x › Gram directions 96/328 ETA 40s (1m02s)"
    assert progress.format_state({"worker": "gw0", "case": None}) == ""
    # written 10 s ago (nothing changed since): the case has run 10 s longer, the ETA is 10 s shorter
    later = progress.format_state({**state, "at": 500.0}, now=510.0)
    assert later.endswith("Gram directions 96/328 ETA 30s (1m12s)")


def test_live_status_fits_each_worker_in_its_share_of_the_line() -> None:
    state = {"worker": "gw0", "case": "claim1_pert_encoder_clustering::pathway[fewshot-hepg2]", "elapsed": 5.0,
             "stages": [{"label": "inputs"}, {"label": "jacobian_gram fewshot/hepg2"},
                        {"label": "Gram directions", "done": 2, "total": 8, "eta": 30.0}]}
    assert progress.compact_state(state, 500) == progress.format_state(state)
    middle = progress.compact_state(state, 100)
    assert middle == "claim1_pert_encoder_clustering::pathway[fewshot-hepg2] › … › Gram directions 2/8 ETA 30s (5s)"
    tight = progress.compact_state(state, 60)
    assert len(tight) <= 60 and tight.startswith("…") and "[fewshot-hepg2] › … › Gram directions 2/8" in tight
    assert len(progress.compact_state(state, 20)) <= 20


def test_lines_at_stage_changes_and_at_most_every_heartbeat() -> None:
    throttle = progress.LineThrottle(heartbeat=30.0)
    a, b = ("case", "loading"), ("case", "loading", "draws")
    assert throttle.due("gw0", a, 0.0)
    assert not throttle.due("gw0", a, 29.0)  # same stage, counts moving: quiet
    assert throttle.due("gw1", a, 1.0)  # another worker has its own clock
    assert throttle.due("gw0", b, 29.5)  # a stage change prints at once
    assert not throttle.due("gw0", b, 59.0)
    assert throttle.due("gw0", b, 59.6)  # heartbeat


def test_resolve_mode() -> None:
    assert progress.resolve_mode(None, "auto", isatty=True) == "live"
    assert progress.resolve_mode(None, "auto", isatty=False) == "lines"
    assert progress.resolve_mode("off", "lines", isatty=True) == "off"
    assert progress.resolve_mode(None, "LINES", isatty=True) == "lines"
    with pytest.raises(ValueError, match="ini option hypocheck_progress: unknown value 'loud'; valid: auto, lines"):
        progress.resolve_mode(None, "loud", isatty=False)


# ------------------------------------------------------------------ stages and publishing
def test_without_a_publisher_a_stage_is_a_no_op() -> None:
    with progress.stage("draws", total=3) as draws:
        draws.update(2)
        assert progress.stack() == []
    with progress.stage("draws", total=3, tqdm=True) as bar:
        bar.update(3)
        assert bar.n == 3  # a real tqdm bar when asked (library use)


def test_published_state_holds_the_case_and_nested_stages(tmp_path: Path) -> None:
    publisher = progress.Publisher(tmp_path / "gw3.json", "gw3", interval=60.0)  # no ticks: flushes only
    progress.install(publisher)
    publisher.begin_case("f::h[m-x]")
    with progress.stage("delta_y m/x"), progress.stage("directions", total=8) as dirs:
        dirs.update(3)
        publisher.flush()
        state = json.loads((tmp_path / "gw3.json").read_text())
    assert state["worker"] == "gw3" and state["case"] == "f::h[m-x]"
    assert [(s["label"], s["done"], s["total"]) for s in state["stages"]] == [("delta_y m/x", 0, None),
                                                                              ("directions", 3, 8)]
    assert state["stages"][1]["eta"] is not None and progress.stack() == []
    publisher.end_case()  # written at once, without waiting for a tick
    assert json.loads((tmp_path / "gw3.json").read_text())["case"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["gw3.json"]  # no temporary file left


def test_the_publisher_thread_writes_changes_throttled(tmp_path: Path) -> None:
    publisher = progress.Publisher(tmp_path / "gw0.json", "gw0", interval=0.05).start()
    progress.install(publisher)
    publisher.begin_case("c")
    first = json.loads((tmp_path / "gw0.json").read_text())["seq"]
    with progress.stage("draws", total=1000) as draws:
        for _ in range(1000):
            draws.update()  # a thousand updates, a handful of writes
        deadline = time.monotonic() + 5
        while json.loads((tmp_path / "gw0.json").read_text())["seq"] == first:
            assert time.monotonic() < deadline, "the thread never wrote the change"
    publisher.close()
    state = json.loads((tmp_path / "gw0.json").read_text())
    assert state["stages"][0]["done"] == 1000 and state["seq"] - first < 10


# ------------------------------------------------------------------ the controller's screen
def test_progress_lines_start_on_their_own_line() -> None:
    out = io.StringIO()
    screen = progress.Screen(out, live=False)
    screen.write("hypotheses/a.yaml ..")
    screen.line("· gw0  a::h[x] › loading (2s)")
    screen.write(".")
    screen.line("PASS  a::h[x]")
    assert out.getvalue() == "hypotheses/a.yaml ..\n· gw0  a::h[x] › loading (2s)\n.\nPASS  a::h[x]\n"
    screen.status("not shown outside live mode")
    assert "not shown" not in out.getvalue()


def test_a_verbose_line_waiting_for_its_outcome_is_written_again() -> None:
    out = io.StringIO()
    screen = progress.Screen(out, live=False)
    screen.write("hypotheses/a.yaml::h[x] ")  # -v -n 0: the node id, then the outcome once the case ends
    screen.line("· a::h[x] › loading (2s)")
    screen.write("\x1b[32mPASSED\x1b[0m [ 50%]\n")
    lines = out.getvalue().splitlines()
    assert lines == ["hypotheses/a.yaml::h[x] ", "· a::h[x] › loading (2s)",
                     "hypotheses/a.yaml::h[x] \x1b[32mPASSED\x1b[0m [ 50%]"]
    assert re.findall(r"^(hypotheses/\S+) (?:\x1b\[32m)?PASSED", out.getvalue(), flags=re.M) == [
        "hypotheses/a.yaml::h[x]"]


def test_live_status_is_rewritten_in_place_and_cleared_before_output() -> None:
    out = io.StringIO()
    screen = progress.Screen(out, live=True, width=lambda: 40)
    screen.status("gw0  a::h[x] › loading")
    screen.status("gw0  a::h[x] › " + "probe " * 20)
    screen.write("done\n")
    screen.write("..")
    screen.status("gw1  b")  # below the partial line of dots …
    screen.write(".")  # … and gone, the cursor back after the dots, before the next dot
    text = out.getvalue()
    assert text.startswith("\rgw0  a::h[x] › loading\r\x1b[K\rgw0  a::h[x] › probe")
    assert all(len(line) <= 39 for line in re.split(r"\r|\n", text))  # cut to the width
    assert text.endswith("done\n..\ngw1  b\r\x1b[K\x1b[1A\x1b[3G.")


def test_reporter_renders_workers_files_throttled(tmp_path: Path) -> None:
    now = [100.0]
    out = io.StringIO()
    reporter = progress.ProgressReporter(tmp_path, progress.Screen(out, live=False), heartbeat=30.0,
                                         clock=lambda: now[0], wall=lambda: 1000.0)
    for worker, stages in (("gw0", [{"label": "loading"}]), ("gw1", [])):
        state = {"worker": worker, "case": f"f::{worker}", "elapsed": 1.0, "at": 998.0, "stages": stages}
        (tmp_path / f"{worker}.json").write_text(json.dumps(state))
    (tmp_path / "gw2.json").write_text(json.dumps({"worker": "gw2", "case": None}))  # idle: nothing
    (tmp_path / "gw3.json").write_text('{"worker": "gw3", "ca')  # half a file never happens; skipped anyway
    reporter.tick()
    assert out.getvalue().splitlines() == ["· gw0  f::gw0 › loading (3s)", "· gw1  f::gw1 (3s)"]
    now[0] += 10
    reporter.tick()
    assert len(out.getvalue().splitlines()) == 2  # nothing changed: quiet
    now[0] += 25
    reporter.tick()
    assert len(out.getvalue().splitlines()) == 4  # heartbeat


def test_live_reporter_shows_every_worker_on_one_line(tmp_path: Path) -> None:
    out = io.StringIO()
    reporter = progress.ProgressReporter(tmp_path, progress.Screen(out, live=True, width=lambda: 100),
                                         wall=lambda: 10.0)
    for worker in ("gw0", "gw1"):
        state = {"worker": worker, "case": f"claim5_routing_backbone::routing_coherence[{worker}-hepg2]",
                 "elapsed": 1.0, "at": 10.0, "stages": [{"label": "inputs"}, {"label": "draws", "done": 1,
                                                                                 "total": 4, "eta": 3.0}]}
        (tmp_path / f"{worker}.json").write_text(json.dumps(state))
    reporter.tick()
    status = out.getvalue()
    assert status.startswith("\r") and "\n" not in status and len(status) <= 100
    assert "gw0  …" in status and "[gw0-hepg2] › … › draws 1/4 ETA 3s" in status and "[gw1-hepg2]" in status


def test_finished_line_reads_the_record() -> None:
    base = error_verdict("f::h[m-x]", "", "f.yaml:1:1", hypothesis="h").to_json()
    record = CaseVerdict.from_json({**base, "verdict": "pass", "effect_metric": "delta", "effect": 0.4213,
                                    "ci": [0.31, 0.55], "p": 0.002})
    assert finished_line(record, 12.44) == "PASS  f::h[m-x]  effect delta=0.421 [0.31, 0.55]  p 0.002  (12.4 s)"
    crashed = error_verdict("f::h[m-y]", "never finished: worker 'gw1' crashed", "f.yaml")
    assert finished_line(crashed, 1.0) == \
        "ERROR f::h[m-y]  could not run: never finished: worker 'gw1' crashed  (1.0 s)"


# ------------------------------------------------------------------ end to end
CLAIM = """\
id: pathway_clustering
claim: Knockdowns of one pathway cluster in pert_encoder space
probe: pert_embedding_clustering
cases:
  model: [tiny]
  gene_set: [alpha, beta, tiny]
params: {null_sets: 200, bootstrap: 100, min_members: 3}
expect:
  - z > 2
"""

SLOW_PREPARE = '''

import time as _time

from hypocheck import progress as _progress

_fast_prepare = TinyContext.prepare


def _slow_prepare(self, case):
    """Work long enough (2 s) for the display to show it: four steps of a counted stage."""
    with _progress.stage("planted work", total=4) as work:
        for _ in range(4):
            _time.sleep(0.5)
            work.update()
    return _fast_prepare(self, case)


TinyContext.prepare = _slow_prepare
'''


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makeconftest((Path(__file__).parent / "e2e_conftest.py").read_text() + SLOW_PREPARE)
    (pytester.path / "hypotheses").mkdir()
    (pytester.path / "hypotheses" / "claim1.yaml").write_text(CLAIM)
    return pytester


def test_each_case_shows_its_stages_and_one_finished_line_under_xdist(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "-n", "2",
                                        "--hypocheck-progress=lines")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    lines = result.stdout.str().splitlines()
    cases = {c["id"]: c["verdict"] for c in json.loads((suite.path / "reports" / "summary.json").read_text())["cases"]}
    assert len(cases) == 3
    for case_id, verdict in cases.items():
        shown = [line for line in lines if line.startswith("· gw") and f"  {case_id} › " in line]
        assert any(f"{case_id} › inputs › planted work " in line and "/4" in line for line in shown), (case_id, lines)
        finished = [line for line in lines if re.match(rf"[A-Z]+ +{re.escape(case_id)}  .*\(\d+\.\d s\)$", line)]
        assert len(finished) == 1, (case_id, lines)
        assert finished[0].split()[0] == verdict.upper()
    assert {re.match(r"· (gw\d)", line)[1] for line in lines if line.startswith("· gw")} <= {"gw0", "gw1"}


def test_off_prints_no_progress(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "-k", "alpha",
                                        "--hypocheck-progress=off")
    result.assert_outcomes(passed=1, deselected=2)
    out = result.stdout.str()
    assert "planted work" not in out and not re.search(r"^· ", out, flags=re.M)
    assert not re.search(r"^[A-Z]+ +\S+  .*\(\d+\.\d s\)$", out, flags=re.M)  # no finished-case line
    assert "PASS         claim1::pathway_clustering[tiny-alpha]" in out  # the summary is still there
