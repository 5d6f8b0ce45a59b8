"""The notebook interface: ``hypocheck.run`` in a Jupyter kernel (a small notebook executed with nbclient) gives
the verdicts ``pytest`` gives on the same files, as tables and as rich output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_wheel_install import SUITE_YAML

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

CLAIMS = """\
id: program_pert_clustering
claim: Knockdowns of one program point the same way in pert_encoder space
probe: pert_embedding_clustering
cases:
  model: [fewshot]
  gene_set: [mitoribosome, proteasome]
params: {null_sets: 200, bootstrap: 200}
expect:
  - z_matched > 2
"""

CELLS = [
    "import json, hypocheck\nresult = hypocheck.run(['hypotheses'], suite='suite.yaml')",
    "result",
    "result.claims",
    "print('VERDICTS ' + json.dumps(dict(zip(result.cases['id'], result.cases['verdict']))))",
]


def test_a_notebook_and_pytest_give_the_same_verdicts(tmp_path: Path) -> None:
    (tmp_path / "suite.yaml").write_text(SUITE_YAML)
    (tmp_path / "hypotheses").mkdir()
    (tmp_path / "hypotheses" / "claims.yaml").write_text(CLAIMS)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HYPOCHECK_"))}
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.km_kwargs = {"env": {**env, "OMP_NUM_THREADS": "1"}}  # type: ignore[attr-defined]
    client.execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    rich = [o["data"]["text/html"] for o in outputs if o.get("output_type") == "execute_result"
            and "text/html" in o.get("data", {})]
    assert any("<b>hypocheck</b>" in h and "program_pert_clustering" in h for h in rich), rich
    assert any("<table" in h and "verdict" in h for h in rich)  # the claims DataFrame
    assert any('<img src="data:image/png;base64,' in h and "null distribution" in h for h in rich)  # plots inline
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    verdicts = json.loads(printed.split("VERDICTS ", 1)[1].splitlines()[0])
    assert sorted(verdicts.values()) == ["fail", "pass"]  # the demo's planted truth: mitoribosome, not proteasome

    proc = subprocess.run([sys.executable, "-m", "pytest", "hypotheses", "--suite-config", "suite.yaml",
                           "-p", "no:cacheprovider", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert {c["id"]: c["verdict"] for c in summary["cases"]} == verdicts
