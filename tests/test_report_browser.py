"""The HTML report in a real headless browser: every claim with its verdict, effect, CI and plots.

A small pytester run (tiny real arc-state model) writes Allure results; the Allure 3 command-line tool renders
them as one self-contained ``index.html``; Debian's Chromium opens it from disk (``file://``) and we read the
rendered DOM. Screenshots go to ``reports/report-browser.png`` and ``reports/report-case.png``.

Needs ``chromium`` and ``node_modules/.bin/allure`` (``make test`` installs both); without them the test is
skipped, or fails when ``HYPOCHECK_BROWSER_REQUIRED`` is set (as ``make test`` does).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from hypocheck.allure_report import find_allure, generate_html
from tests.test_plugin_e2e import BROKEN, CLAIM, REPO_ROOT

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
TITLE = "Knockdowns of one pathway cluster in pert_encoder space [tiny · {}]"
LEAF = re.compile(
    r'data-tree-node-id="(?P<id>[^"]+)"[^>]*>\s*<div data-testid="tree-leaf-status-(?P<status>\w+)"'
    r'[\s\S]*?data-testid="tree-leaf-title"[^>]*>(?P<title>[^<]*)<'
)


def _need(ok: bool, what: str) -> None:
    if ok:
        return
    message = f"{what} is not installed (make test installs it)"
    if os.environ.get("HYPOCHECK_BROWSER_REQUIRED"):
        pytest.fail(message)
    pytest.skip(message)


def _chromium(profile: Path, url: str, *extra: str, budget_ms: int = 30000) -> str:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=True).stdout


def _rendered(profile: Path, url: str, ready: Callable[[str], bool], attempts: int = 3) -> str:
    """The DOM once ``ready`` holds (the report renders asynchronously; a slow machine may need a retry)."""
    dom = ""
    for attempt in range(attempts):
        dom = _chromium(profile / f"dom{attempt}", url, "--dump-dom", budget_ms=30000 * (attempt + 1))
        if ready(dom):
            return dom
    return dom


def _leaves(dom: str) -> dict[str, tuple[str, str]]:
    """Tree leaves of the report: title → (status, test result id)."""
    return {html.unescape(m["title"]): (m["status"], m["id"]) for m in LEAF.finditer(dom)}


@pytest.fixture
def report(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Allure results of a pass / fail / inconclusive / broken-file run, rendered twice (history grows)."""
    _need(CHROMIUM is not None, "chromium")
    try:
        find_allure(REPO_ROOT)
    except FileNotFoundError:
        _need(False, "the Allure command-line tool (npm ci)")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makeconftest((Path(__file__).parent / "e2e_conftest.py").read_text())
    (pytester.path / "hypotheses" / "paper").mkdir(parents=True)
    (pytester.path / "hypotheses" / "paper" / "claim1.yaml").write_text(CLAIM)
    (pytester.path / "hypotheses" / "paper" / "broken.yaml").write_text(BROKEN)
    results = pytester.path / "allure-results"
    run = pytester.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", f"--alluredir={results}")
    run.assert_outcomes(passed=1, failed=1, skipped=1, errors=1)
    history = tmp_path / "history.jsonl"
    generate_html([results], tmp_path / "html", history=history)
    index = generate_html([results], tmp_path / "html", history=history)
    assert len(history.read_text().splitlines()) == 2
    return index


def test_report_renders_every_claim_with_verdict_effect_and_plots(report: Path, tmp_path: Path) -> None:
    page = report.read_text()
    assert "googletagmanager" not in page  # no analytics call from a local report
    url = report.as_uri()
    titles = {TITLE.format("alpha"): "passed", TITLE.format("beta"): "failed", TITLE.format("tiny"): "skipped",
              "hypothesis file does not load: broken.yaml": "broken"}
    dom = _rendered(tmp_path, url, lambda d: set(titles) <= set(_leaves(d)))
    leaves = _leaves(dom)
    assert {t: leaves[t][0] for t in titles if t in leaves} == titles

    # one case's page: category, description with effect, CI and the paper's figures, plots attached
    case_url = f"{url}#/{leaves[TITLE.format('beta')][1]}"
    case = _rendered(tmp_path / "case", case_url, lambda d: "test-result-description-frame" in d)
    text = " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)[\s\S]*?</\1>", "", case)).split())
    assert "Category: Claim failed" in text and "Failed" in text
    frame = html.unescape(re.search(r'data-testid="test-result-description-frame"[^>]*srcdoc="([^"]*)"', case)[1])
    for figure in ("FAIL", "delta_cosine", "95% CI", "Reported by the paper vs measured", "0.267", "z &gt; 2"):
        assert figure in frame
    for attachment in ("null distribution", "similarity heatmap", "metrics"):
        assert attachment in text

    # screenshots for a person to look at
    out = REPO_ROOT / "reports"
    out.mkdir(exist_ok=True)
    for name, target in (("report-browser.png", url), ("report-case.png", case_url)):
        shot = out / name
        shot.unlink(missing_ok=True)
        _chromium(tmp_path / name, target, f"--screenshot={shot}", "--window-size=1440,1100")
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
