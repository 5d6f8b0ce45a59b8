"""Every hypothesis file the project ships loads against the demo suite: no `<load>` errors, every claim
of the original analysis present, every demo hypothesis with an expected verdict in the summary's reach."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_hypotheses_collect_without_errors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "hypotheses", "--collect-only", "-q", "-p", "no:cacheprovider", "-n", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "<load>" not in out and "Traceback" not in out
    ids = [line for line in result.stdout.splitlines() if line.startswith("hypotheses/")]
    assert len(ids) >= 70
    claims = {int(m) for m in re.findall(r"hypotheses/paper/claim(\d)_", "\n".join(ids))}
    assert claims == {1, 2, 3, 4, 5}
    notebooks = set(re.findall(r"hypotheses/demo/(nb\d\d)", "\n".join(ids)))
    assert {"nb01", "nb02", "nb03", "nb04", "nb05", "nb09"} <= notebooks
