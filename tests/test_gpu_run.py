"""The prepared GPU run: its bundle's rules, and a dry run of the very script the device runs, on CPU at tiny
sizes (every stage, every record, the five claims through the suite's path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.bench.gpu_bundle import BUNDLE, DEVICE_HAS, check_size, normalise, select, wheel_name_version

ROOT = Path(__file__).resolve().parents[1]
PAPER_CLAIMS = sorted(p.stem for p in (ROOT / "hypotheses" / "paper").glob("*.yaml"))


def test_wheel_names_parse_and_normalise() -> None:
    assert wheel_name_version(Path("pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl")) == (
        "pydantic-core", "2.50.5")
    assert normalise("Typing_Extensions") == "typing-extensions"
    with pytest.raises(ValueError, match="not a wheel"):
        wheel_name_version(Path("anndata-0.12.tar.gz"))


def test_size_check_refuses_over_the_carry_limit() -> None:
    assert "of the 64 MiB" in check_size(10 * 2**20, 20 * 2**20)
    with pytest.raises(SystemExit, match=r"too large: bundle 50\.0 MiB \+ working tree 20\.0 MiB"):
        check_size(50 * 2**20, 20 * 2**20)


def test_install_selects_only_what_this_python_lacks_or_has_older(tmp_path: Path) -> None:
    import importlib.metadata as md

    have = md.version("pyyaml")
    for name in (f"PyYAML-{have}-py3-none-any.whl", "PyYAML-0.1-py3-none-any.whl", "PyYAML-9999.0-py3-none-any.whl",
                 "surely_absent_dist-1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    chosen, present = select(tmp_path)
    assert sorted(p.name for p in chosen) == ["PyYAML-9999.0-py3-none-any.whl",
                                              "surely_absent_dist-1.0-py3-none-any.whl"]
    assert present == {"pyyaml": have}


def test_bundle_lists_nothing_the_device_has_except_upgrades() -> None:
    overlap = {normalise(n) for n in BUNDLE} & DEVICE_HAS
    assert overlap == {"typing-extensions"}, "bundle only what the image lacks (typing-extensions: a newer one)"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu-dry")
    env = {**os.environ, "PYTHON": sys.executable, "GPU_BUNDLE": str(out / "no-bundle"), "OMP_NUM_THREADS": "1",
           "OUT": str(out)}
    proc = subprocess.run(["bash", str(ROOT / "tools/bench/gpu_run.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


def _rec(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


def test_dry_run_writes_every_record_done(dry_run: Path) -> None:
    names = {"env", "setup", "engine_vs_notebook", "suite"} | {f"all_knockdowns_{p}" for p in ("fp32", "tf32", "bf16")}
    assert {p.stem for p in dry_run.glob("*.json")} == names
    for name in names - {"env"}:
        rec = _rec(dry_run, name)
        assert rec["status"] == "done", (name, rec.get("error"), rec.get("traceback"))
        assert rec["dry_run"] is True and rec["device"] == "cpu"


def test_dry_run_engine_matches_the_notebooks_jacobian(dry_run: Path) -> None:
    rec = _rec(dry_run, "engine_vs_notebook")
    assert rec["notebook"]["kds"] >= 1 and rec["ratio"] > 0
    assert rec["max_rel_err_engine_vs_notebook"] < 1e-5
    assert rec["engine"]["bf16"]["max_rel_err_vs_fp32_engine"] > rec["engine"]["tf32"]["max_rel_err_vs_fp32_engine"]


def test_dry_run_covers_all_knockdowns_in_three_precisions(dry_run: Path) -> None:
    fp32 = _rec(dry_run, "all_knockdowns_fp32")
    assert fp32["knockdowns"] == 40 and "exact" in fp32["gram_method"] and "exact" in fp32["onehot_gram_method"]
    for p in ("tf32", "bf16"):
        rec = _rec(dry_run, f"all_knockdowns_{p}")
        diff = rec["gram_routing_r_diff_vs_fp32"]["pearson"]
        assert 0 <= diff < 0.1 and rec["gram_max_cosine_diff_vs_fp32"] >= 0
    assert _rec(dry_run, "all_knockdowns_tf32")["gram_routing_r_diff_vs_fp32"]["pearson"] < 1e-4  # no tf32 on CPU


def test_dry_run_runs_the_five_claims_through_the_suite(dry_run: Path) -> None:
    suite = _rec(dry_run, "suite")
    assert suite["complete"] is True
    assert [c["claim"] for c in suite["claims"]] == PAPER_CLAIMS
    for claim in suite["claims"]:
        assert claim["verdicts"] and set(claim["verdicts"].values()) <= {"pass", "fail", "inconclusive"}


def test_every_distribution_the_run_needs_is_on_the_device_or_in_the_bundle(dry_run: Path) -> None:
    found = _rec(dry_run, "env")["imported_distributions"]
    needed = set(found["needed"])
    assert {"arc-state", "anndata", "pydantic", "torch", "omegaconf", "geomloss"} <= needed
    allowed = DEVICE_HAS | {normalise(n) for n in BUNDLE} | {"hypocheck"}
    assert needed - allowed == set(), "add these to BUNDLE in tools/bench/gpu_bundle.py"
    assert "transformers" in found["importers"]["kernels"] or "kernels" not in found["importers"]


def test_the_import_recorder_follows_the_project_not_the_image() -> None:
    from tools.bench.imports import Recorder

    rec = Recorder()
    for name, importer in (("hypocheck", "tools.bench.gpu_run"), ("torch.nn", "hypocheck.fixtures.jacobians"),
                           ("anndata", "hypocheck.fixtures.data"), ("zarr", "anndata._io"),
                           ("pandas", "anndata._core"), ("pytz", "pandas.core"), ("yaml", "tools.bench.gpu_run"),
                           ("torch", "torch.nn"), ("json", "tools.bench.gpu_run")):
        rec.note(name, importer)
    needed, importers = rec.needed({"torch", "pandas", "pyyaml", "pytz"})
    assert needed == ["anndata", "hypocheck", "pandas", "pyyaml", "torch", "zarr"]  # pytz: only pandas imports it
    assert importers["pytz"] == ["pandas"] and importers["zarr"] == ["anndata"]
