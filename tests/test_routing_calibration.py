"""Calibration of the routing tests: each holds alpha on null worlds (ΔY and Jacobians independent) and finds
planted routing (Jacobian similarity = f(ΔY similarity) + noise). The quick configuration of
``probes.routing_calibration`` (the CLI runs more worlds)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from probes.matrixstats import cosine_from_gram, unit_rows, upper
from probes.routing_calibration import (
    FAMILIES,
    PLANTED,
    QUICK,
    calibrate_routing,
    delta_y_world,
    null_features,
    planted_features,
    write_reports,
)


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    start = time.perf_counter()
    out = calibrate_routing(QUICK)
    out["wall"] = time.perf_counter() - start
    return out


def family(result: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [f for f in result["families"] if f["family"] == name]
    return found


@pytest.mark.parametrize("name", [*FAMILIES, "difference"])
def test_every_routing_test_holds_alpha_on_null_worlds(result: dict[str, Any], name: str) -> None:
    summary = family(result, name)
    assert summary["n_null"] >= 80
    assert summary["fpr"] <= summary["bound"], f"{name}: FPR {summary['fpr']:.3f} > {summary['bound']:.3f}"
    for row in result["rows"]:  # each null design on its own, too
        if row["family"] == name and row["condition"] == "null":
            assert row["within_bound"], row


@pytest.mark.parametrize("name", [*FAMILIES, "difference"])
def test_planted_routing_is_found(result: dict[str, Any], name: str) -> None:
    assert family(result, name)["power"] >= 0.8


def test_runs_fast_and_writes_reports(result: dict[str, Any], tmp_path: Path) -> None:
    assert result["wall"] < 120  # about 20 s on one idle core; generous for loaded machines
    out = write_reports(result, tmp_path)
    loaded = json.loads((out / "routing.json").read_text())
    assert {f["family"] for f in loaded["families"]} == {*FAMILIES, "difference"}
    text = (out / "routing.md").read_text()
    assert "| mantel_pearson |" in text and "MC bound" in text


def test_worlds_are_what_they_claim() -> None:
    """Planted worlds tie Jacobian to ΔY cosine; null worlds do not (on one large world)."""
    rng = np.random.default_rng(0)
    cfg = QUICK
    delta_y = delta_y_world(rng, cfg)
    y = upper(unit_rows(delta_y) @ unit_rows(delta_y).T)
    planted = planted_features(rng, delta_y, cfg.planted_signal, cfg.jacobian_dim)
    null = null_features(rng, cfg, structured=True)
    r_planted = np.corrcoef(upper(cosine_from_gram(planted @ planted.T)[0]), y)[0, 1]
    r_null = np.corrcoef(upper(cosine_from_gram(null @ null.T)[0]), y)[0, 1]
    assert r_planted > 0.3 and abs(r_null) < 0.15
    assert PLANTED.startswith("planted")
