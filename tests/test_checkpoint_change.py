"""The checkpoint-change story, as a user lives it: the suite on a checkpoint (baseline saved, Allure report
made), then on its successor in the same run dir (``best`` then ``final``): the second report links every case
to the first through Allure's history, the drift section names what moved beyond its uncertainty, and both
fingerprints are shown (terminal, summary.md, summary.json, Allure's environment)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hypocheck.allure_report import find_allure, generate_html
from hypocheck.fixtures.st_rundir import save_run_dir
from tests.helpers_tiny import BATCH_NAMES, CELL_LINES, GENE_NAMES, PERT_NAMES, tiny_h5ad, tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]
CLAIM = """\
id: program_clusters
claim: The program's knockdowns point one way in pert_encoder space
probe: pert_embedding_clustering
cases: {model: [tiny], gene_set: [program, rest]}
params: {null_sets: 400, bootstrap: 200, min_members: 3, max_unmatched: 1.0}
inputs: {null_excludes: none}  # 11 knockdowns in all: the matched null needs the other set (its test is not this one)
expect:
  - z > 2
"""


def _successor(model: torch.nn.Module) -> torch.nn.Module:
    """The same model trained further: the program's knockdowns (KD00–KD04) now share a direction."""
    weight = model.pert_encoder[0].weight  # (hidden, perts): column k is perturbation k's direction
    shared = 3 * torch.randn(weight.shape[0], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for name in ("KD00", "KD01", "KD02", "KD03", "KD04"):
            weight[:, PERT_NAMES.index(name)] += shared
    return model


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HYPOCHECK_"))}
    return subprocess.run([sys.executable, "-m", "pytest", "hypotheses", "-p", "no:cacheprovider", "-q", *args],
                          cwd=root, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.mark.usefixtures("one_torch_thread")
def test_best_then_final_regression_story(tmp_path: Path) -> None:
    try:
        find_allure(REPO_ROOT)
    except FileNotFoundError:
        if os.environ.get("HYPOCHECK_BROWSER_REQUIRED"):
            pytest.fail("the Allure command-line tool is not installed (make test installs it)")
        pytest.skip("the Allure command-line tool is not installed (npm ci)")
    run_dir = tmp_path / "runs" / "tiny"
    model = tiny_model(seed=0)
    save_run_dir(model, run_dir, GENE_NAMES, PERT_NAMES, BATCH_NAMES, CELL_LINES)
    shutil.move(run_dir / "checkpoints" / "final.ckpt", run_dir / "checkpoints" / "best.ckpt")
    save_run_dir(_successor(model), run_dir, GENE_NAMES, PERT_NAMES, BATCH_NAMES, CELL_LINES)
    tiny_h5ad(tmp_path / "data.h5ad", n_per_group=4, knockdowns=PERT_NAMES[1:])
    (tmp_path / "hypotheses").mkdir()
    (tmp_path / "hypotheses" / "claim.yaml").write_text(CLAIM)
    suite = {"models": {"tiny": {"run_dir": "runs/tiny", "checkpoint": "best"}}, "data": {"path": "data.h5ad"},
             "cell_lines": ["hepg2", "jurkat"], "device": "cpu", "control_sentence": {"cells": 8, "seed": 3},
             "gene_sets": {"program": {"members": ["KD00", "KD01", "KD02", "KD03", "KD04"]},
                           "rest": {"members": ["KD05", "KD06", "KD07", "KD08", "KD09"]}}}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    history = tmp_path / "history.jsonl"

    first = _run(tmp_path, "--save-baseline", "best", "--alluredir", "allure-best")
    assert first.returncode == 1, first.stdout  # the claim fails on 'best': the program does not cluster yet
    generate_html([tmp_path / "allure-best"], tmp_path / "html-best", history=history)
    before = json.loads((tmp_path / "reports" / "summary.json").read_text())

    suite["models"]["tiny"]["checkpoint"] = "final"
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    second = _run(tmp_path, "--baseline", "best", "--alluredir", "allure-final")
    index = generate_html([tmp_path / "allure-final"], tmp_path / "html-final", history=history)
    after = json.loads((tmp_path / "reports" / "summary.json").read_text())

    # each case is one history line per report, under the same history id
    verdicts = {c["id"]: c["verdict"] for c in before["cases"]}
    assert verdicts["claim::program_clusters[tiny-program]"] == "fail"
    assert {c["id"]: c["verdict"] for c in after["cases"]}["claim::program_clusters[tiny-program]"] == "pass"
    runs = [json.loads(line) for line in history.read_text().splitlines()]
    assert len(runs) == 2
    ids = [{r["historyId"]: r["status"] for r in run["testResults"].values()} for run in runs]
    assert set(ids[0]) == set(ids[1]) and len(ids[1]) == 2
    status = {"pass": "passed", "fail": "failed", "inconclusive": "skipped"}
    for run, summary in zip(ids, (before, after), strict=True):  # each report shows the run's own verdicts
        assert sorted(run.values()) == sorted(status[c["verdict"]] for c in summary["cases"])
    assert index.stat().st_size > 0

    # the drift names what moved beyond its uncertainty, and both fingerprints
    drift = after["drift"]
    fingerprints = drift["checkpoints"]["models/tiny"]
    assert fingerprints["baseline"] != fingerprints["current"]
    assert fingerprints["baseline"] == before["environment"]["models"]["tiny"]["fingerprint"]
    assert fingerprints["current"] == after["environment"]["models"]["tiny"]["fingerprint"]
    moved = drift["cases"]["claim::program_clusters[tiny-program]"]
    assert {"kind": "verdict", "baseline": "fail", "current": "pass"} in moved
    assert any(e["kind"] == "metric" and e["name"] == "z" and abs(e["delta"]) > e["allowed"] for e in moved)
    out = second.stdout
    assert "DRIFT  claim::program_clusters[tiny-program]: verdict fail → pass" in out
    assert f"fingerprint changed  models/tiny: {fingerprints['baseline'][:12]}" in out
    markdown = (tmp_path / "reports" / "summary.md").read_text()
    assert "## Drift from baseline `best`" in markdown and "`claim::program_clusters[tiny-program]`" in markdown
    properties = (tmp_path / "allure-final" / "environment.properties").read_text()
    assert fingerprints["baseline"] in properties and fingerprints["current"] in properties
