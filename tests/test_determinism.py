"""Results do not depend on how a run is scheduled, and heavy artifacts are computed once per run.

- The end-to-end suite of ``test_plugin_e2e`` (a tiny planted arc-state model) gives the same metrics, seeds,
  verdicts and BH-adjusted p-values with ``-n 0``, ``-n 2``, ``-n auto`` and in a shuffled test order.
- The project's own conftest (``SuiteContext`` + the shared ``ArtifactCache``) on a tiny suite: with two xdist
  workers whose cases all need the same artifacts, each artifact is computed exactly once; a second run computes
  nothing; a new checkpoint fingerprint recomputes; ``--clear-artifact-cache`` drops the cache.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers_tiny import single_thread, tiny_adata, tiny_run_dir
from tests.test_plugin_e2e import REPO_ROOT, load_summary, suite  # noqa: F401  (suite: the e2e pytester fixture)

SHUFFLE_SEED = 20240607


def _results(summary: dict[str, Any]) -> dict[str, str]:
    """Per case id: metrics, seed, verdict and p_adj, as canonical JSON (NaN compares equal to itself)."""
    return {
        c["id"]: json.dumps({k: c.get(k) for k in ("metrics", "seed", "verdict", "p", "p_adj", "effect", "ci")},
                            sort_keys=True)
        for c in summary["cases"]
    }


def _order(stdout: str) -> list[str]:
    """Node ids in the order a ``-v`` run reported them."""
    return re.findall(r"^(hypotheses/\S+) (?:PASSED|FAILED|SKIPPED|ERROR)", stdout, flags=re.MULTILINE)


def test_worker_count_and_test_order_do_not_change_results(suite: pytest.Pytester) -> None:  # noqa: F811
    serial = suite.runpytest_subprocess("hypotheses", "-n", "0", "-v", "-p", "no:cacheprovider")
    baseline = load_summary(suite)
    expected = _results(baseline)
    assert len(expected) == 4 and baseline["environment"]["xdist_workers"] == 0
    assert {json.loads(v)["verdict"] for v in expected.values()} == {"pass", "fail", "inconclusive", "error"}

    for workers in ("2", "auto"):
        suite.runpytest_subprocess("hypotheses", "-n", workers, "-p", "no:cacheprovider")
        summary = load_summary(suite)
        assert summary["environment"]["xdist_workers"] >= (2 if workers == "2" else 1), workers
        assert _results(summary) == expected, f"-n {workers} differs from -n 0"

    # the same cases, named on the command line in a seeded random order (pytest runs them in that order)
    node_ids = [c.get("nodeid") or c["id"] for c in baseline["cases"]]
    collected = _order(serial.stdout.str())
    shuffled = list(node_ids)
    rng = random.Random(SHUFFLE_SEED)
    while shuffled == collected or shuffled == node_ids:
        rng.shuffle(shuffled)
    options = ["-p", "randomly", "-p", "no:cacheprovider"] if importlib.util.find_spec("pytest_randomly") else [
        "-p", "no:cacheprovider"]
    result = suite.runpytest_subprocess(*shuffled, "-n", "0", "-v", *options)
    if not options[1] == "randomly":
        assert _order(result.stdout.str()) == shuffled, "the shuffled order was not the order run"
    assert _results(load_summary(suite)) == expected, "a shuffled order differs from collection order"


# ------------------------------------------------------------------------------------ the artifact cache
HYPOTHESIS = """\
id: shared_artifacts
claim: Knockdown sets cluster in pert_encoder space (every case needs the same embeddings and effect sizes)
probe: pert_embedding_clustering
cases:
  model: [tiny]
  gene_set: [set_a, set_b, set_c, set_d]
params: {null_sets: 100, bootstrap: 100, min_members: 3}
expect: ["z > 2"]
"""


def _tiny_suite(root: Path) -> None:
    """A suite config over a tiny run dir and an .h5ad holding every knockdown the model knows."""
    with single_thread():
        tiny_run_dir(root / "run")
    adata = tiny_adata()
    perturbed = (adata.obs["gene"] != "non-targeting").to_numpy()
    genes = adata.obs["gene"].astype(str).to_numpy()
    genes[perturbed] = [f"KD{i % 11:02d}" for i in range(int(perturbed.sum()))]
    adata.obs["gene"] = genes
    adata.write_h5ad(root / "tiny.h5ad")
    config = {
        "models": {"tiny": {"run_dir": "run"}},
        "data": {"path": "tiny.h5ad"},
        "cell_lines": ["hepg2", "jurkat"],
        "control_sentence": {"cells": 8, "seed": 1},
        "gene_sets": {"set_a": {"patterns": ["^KD0[0-4]$"]}, "set_b": {"patterns": ["^KD0[5-9]$"]},
                      "set_c": {"members": ["KD01", "KD03", "KD05", "KD07", "KD09"]},
                      "set_d": {"members": ["KD00", "KD02", "KD04", "KD06", "KD08", "KD10"]}},
        "device": "cpu",
    }
    (root / "suite.yaml").write_text(yaml.safe_dump(config))


def _computed(cache: Path) -> Counter[str]:
    """How often each cache key was computed: the cache appends one index line per computation."""
    index = cache / "index.jsonl"
    lines = index.read_text().splitlines() if index.exists() else []
    return Counter(json.loads(line)["key"] for line in lines)


def _artifacts(cache: Path) -> Counter[str]:
    index = cache / "index.jsonl"
    return Counter(json.loads(line)["artifact"] for line in index.read_text().splitlines())


def test_artifacts_are_computed_once_per_run_across_workers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.delenv("HYPOCHECK_SUITE", raising=False)
    # no conftest: the installed plugin reads suite.yaml and builds every input
    _tiny_suite(pytester.path)
    (pytester.path / "hypotheses").mkdir()
    (pytester.path / "hypotheses" / "shared.yaml").write_text(HYPOTHESIS)
    cache = pytester.path / "artifacts"
    args = ["hypotheses", "-p", "no:cacheprovider", "--artifact-cache", str(cache)]

    # two workers, four cases, every case needs the same three artifacts
    first = suite_run(pytester, *args, "-n", "2", "-v")
    workers = set(re.findall(r"\[(gw\d)\]", first))
    assert workers == {"gw0", "gw1"}, "both workers must have run cases"
    once = _computed(cache)
    assert len(once) >= 2 and set(once.values()) == {1}, once  # embeddings, per-line effect sizes …: once each
    assert "pert_embeddings" in _artifacts(cache)
    entries = sorted(cache.glob("*/*.pt"))
    assert len(entries) == len(once)

    # the same cache: nothing is computed again
    suite_run(pytester, *args, "-n", "0")
    assert _computed(cache) == once
    # a new checkpoint (another fingerprint): every artifact of that model is recomputed, once
    with single_thread():
        tiny_run_dir(pytester.path / "run", seed=1)
    suite_run(pytester, *args, "-n", "0")
    after = _computed(cache)
    assert len(after) == 2 * len(once) and set(once) < set(after) and set(after.values()) == {1}, after
    # --clear-artifact-cache drops every entry before the run: only this run's computations remain
    suite_run(pytester, *args, "-n", "0", "--clear-artifact-cache")
    cleared = _computed(cache)
    assert set(cleared) == set(after) - set(once) and set(cleared.values()) == {1}, cleared
    assert not any(path.exists() for path in entries)


def suite_run(pytester: pytest.Pytester, *args: str) -> str:
    """Run the suite; every case must have run (pass or fail, no error); return its output."""
    result = pytester.runpytest_subprocess(*args)
    out = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) + outcomes.get("skipped", 0) == 4, out[-4000:]
    assert "error" not in outcomes and "errors" not in outcomes, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    summary = json.loads((pytester.path / "reports" / "summary.json").read_text())
    assert all(c["verdict"] != "error" for c in summary["cases"]), summary["cases"]
    return out
