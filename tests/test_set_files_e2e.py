"""A gene set read from a GMT file, as a user runs it: the case says, in every output, which file and line the set
comes from, how many of its genes it used of how many the file names, which it dropped and why, and the cells per
knockdown behind it (the terminal line and failure text, summary.json, summary.md, Allure's results)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hypocheck.fixtures.st_rundir import save_run_dir
from tests.helpers_tiny import BATCH_NAMES, CELL_LINES, GENE_NAMES, PERT_NAMES, tiny_adata, tiny_model

CLAIM = """\
id: program_clusters
claim: The program's knockdowns point one way in pert_encoder space
probe: pert_embedding_clustering
cases: {model: [tiny], gene_set: [program]}
params: {null_sets: 200, bootstrap: 100, min_members: 3}
expect:
  - z > 2
"""

# KD04 is a perturbation of the model that the data lack; NOTAGENE is no perturbation of the model (a typo)
GMT = "# pathways\nprogram\tfive knockdowns and a typo\tKD00\tKD01\tKD02\tKD03\tKD04\tNOTAGENE\n" \
      "big\ttoo big\t" + "\t".join(f"KD{i:02d}" for i in range(11)) + "\n"
NOTE = ("gene set program (sets/pathways.gmt:2): 4 of 6 members used; not used: 1 not in the data, "
        "1 not a perturbation of the model: KD04 (not in the data), NOTAGENE (not a perturbation of the model)")
CELLS = "min 6, median 8, max 8 (over hepg2, jurkat)"


@pytest.mark.usefixtures("one_torch_thread")
def test_a_file_sets_case_says_its_source_its_drops_and_its_cells_everywhere(tmp_path: Path) -> None:
    save_run_dir(tiny_model(seed=0), tmp_path / "runs" / "tiny", GENE_NAMES, PERT_NAMES, BATCH_NAMES, CELL_LINES)
    adata = tiny_adata(n_per_group=4, knockdowns=[p for p in PERT_NAMES[1:] if p != "KD04"])
    fewer = ((adata.obs["gene"] == "KD01") & (adata.obs["cell_line"] == "jurkat")).to_numpy().nonzero()[0][:2]
    keep = [i for i in range(adata.n_obs) if i not in set(fewer)]  # KD01: 2 + 4 cells, every other knockdown 4 + 4
    adata[keep].copy().write_h5ad(tmp_path / "data.h5ad")
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "pathways.gmt").write_text(GMT)
    (tmp_path / "hypotheses").mkdir()
    (tmp_path / "hypotheses" / "claim.yaml").write_text(CLAIM)
    suite = {"models": {"tiny": {"run_dir": "runs/tiny"}}, "data": {"path": "data.h5ad"},
             "cell_lines": ["hepg2", "jurkat"], "device": "cpu", "control_sentence": {"cells": 8, "seed": 3},
             "gene_sets": {"from": "sets/pathways.gmt", "max_size": 10}}  # 'big' (11 genes) is left out
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HYPOCHECK_"))}
    run = subprocess.run([sys.executable, "-m", "pytest", "hypotheses", "-p", "no:cacheprovider", "-n", "0",
                          "--alluredir", "allure"], cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=600, check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-4000:]  # an untrained model: the program does not cluster, the case fails

    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    case, = summary["cases"]
    assert case["verdict"] == "fail"
    assert case["measured"]["members"] == "4 of 6"
    assert case["measured"]["gene_set_source"] == "sets/pathways.gmt:2"
    assert case["measured"]["members_unused"] == "1 not in the data, 1 not a perturbation of the model"
    assert case["measured"]["cells_per_knockdown"] == CELLS
    assert NOTE in case["notes"]
    markdown = (tmp_path / "reports" / "summary.md").read_text()
    assert NOTE in markdown and "members: 4 of 6" in markdown and CELLS in markdown
    # the failure text pytest prints, and the verdict section's line
    failure = out.split("= FAILURES =")[1].split("= hypocheck verdicts =")[0]
    assert f"\n  note: {NOTE}" in failure and f"cells_per_knockdown: {CELLS}" in failure, failure
    assert "members: 4 of 6; gene_set_source: sets/pathways.gmt:2" in failure
    assert f"note: {NOTE}" in out.split("= hypocheck verdicts =")[1]
    allure = "".join(p.read_text() for p in (tmp_path / "allure").glob("*-result.json"))
    assert "4 of 6" in allure and "sets/pathways.gmt:2" in allure and CELLS in allure
    assert "NOTAGENE (not a perturbation of the model)" in allure
