"""Calibration of the routing tests: each holds alpha on null worlds (ΔY and Jacobians independent) and finds
planted routing (Jacobian similarity = f(ΔY similarity) + noise); where nearby inputs have nearby Jacobians
and nearby ΔY (the proximity null), only the proximity-controlled (partial Mantel) test holds alpha, and it
finds routing clusters planted beyond proximity. The quick configuration of
``tools.calibration.routing`` (the CLI runs more worlds)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hypocheck.probes.matrixstats import cosine_from_gram, upper
from hypocheck.probes.routing_selection import proximity_matrix
from hypocheck.probes.setstats import unit_rows
from tools.calibration.routing import (
    COVERAGE_FLOOR,
    DIFFERENCE_FAMILIES,
    FAMILIES,
    PARTIAL_FAMILIES,
    PLANTED,
    PROXIMITY_NULL,
    QUICK,
    calibrate_routing,
    choose_method,
    delta_y_world,
    null_features,
    planted_features,
    proximity_world,
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


@pytest.mark.parametrize("name", [*FAMILIES, *DIFFERENCE_FAMILIES])
def test_every_routing_test_holds_alpha_on_null_worlds(result: dict[str, Any], name: str) -> None:
    summary = family(result, name)
    assert summary["n_null"] >= 80
    assert summary["fpr"] <= summary["bound"], f"{name}: FPR {summary['fpr']:.3f} > {summary['bound']:.3f}"
    for row in result["rows"]:  # each null design on its own, too
        if row["family"] == name and row["condition"] == "null":
            assert row["within_bound"], row


@pytest.mark.parametrize("name", [*FAMILIES, *DIFFERENCE_FAMILIES])
def test_planted_routing_is_found(result: dict[str, Any], name: str) -> None:
    assert family(result, name)["power"] >= 0.8


def test_runs_fast_and_writes_reports(result: dict[str, Any], tmp_path: Path) -> None:
    assert result["wall"] < 120  # about 20 s on one idle core; generous for loaded machines
    out = write_reports(result, tmp_path)
    loaded = json.loads((out / "routing.json").read_text())
    assert {f["family"] for f in loaded["families"]} == {*FAMILIES, *DIFFERENCE_FAMILIES}
    text = (out / "routing.md").read_text()
    assert "| mantel_pearson |" in text and "| partial_pearson |" in text and "MC bound" in text
    assert "proximity-null FPR" in text
    assert "| corrected jackknife | pearson | 40 |" in text and "Chosen" in text


def coverage_row(result: dict[str, Any], method: str, metric: str, k: int) -> dict[str, Any]:
    (found,) = [r for r in result["coverage"]["coverage"] if (r["method"], r["metric"], r["k"]) == (method, metric, k)]
    return found


@pytest.mark.parametrize("metric", ["pearson", "spearman"])
def test_corrected_jackknife_covers_near_nominal_and_the_others_overcover(result: dict[str, Any], metric: str):
    """K = 40: 320 samples (MC sd of a 95 % coverage ≈ 0.012); K = 150: 48 samples, a loose check only."""
    small = coverage_row(result, "corrected jackknife", metric, 40)
    assert 0.91 <= small["coverage"] <= 0.985, small
    assert 0.8 <= small["spread_ratio"] <= 1.2, small
    assert coverage_row(result, "corrected jackknife", metric, 150)["coverage"] >= 0.85
    for method in ("jackknife", "bootstrap"):  # the pair-level term counted twice: wider than the sampling spread
        assert coverage_row(result, method, metric, 40)["spread_ratio"] > 1.2
        assert coverage_row(result, method, metric, 40)["coverage"] >= small["coverage"]
    assert result["coverage"]["choice"]["chosen"] == "corrected jackknife"


def test_difference_test_holds_alpha_and_finds_a_shift(result: dict[str, Any]) -> None:
    rows = [r for r in result["coverage"]["difference"] if r["method"] == "corrected jackknife"]
    null = [r for r in rows if r["condition"] == "null"]
    runs = sum(r["n_runs"] for r in null if r["metric"] == "pearson")
    rate = sum(r["rate"] * r["n_runs"] for r in null if r["metric"] == "pearson") / runs
    assert rate <= 0.05 + 2 * (0.05 * 0.95 / runs) ** 0.5
    (power,) = [r for r in rows if r["condition"] == "shift 0.2" and r["metric"] == "pearson" and r["k"] == 40]
    assert power["rate"] >= 0.8
    boot = [r for r in result["coverage"]["difference"] if r["method"] == "bootstrap" and r["k"] == 40
            and r["condition"] == "shift 0.2" and r["metric"] == "pearson"]
    assert boot[0]["mean_width"] > power["mean_width"]


def test_choice_rule_rejects_undercoverage_and_prefers_nominal() -> None:
    def rows(values: dict[str, float]) -> list[dict[str, Any]]:
        return [{"method": m, "coverage": v} for m, v in values.items()]
    assert choose_method(rows({"corrected jackknife": 0.92, "jackknife": 0.99, "bootstrap": 0.995}))[
        "chosen"] == "jackknife"
    assert choose_method(rows({"corrected jackknife": 0.951, "jackknife": 0.99, "bootstrap": 0.995}))[
        "chosen"] == "corrected jackknife"
    assert choose_method(rows({"corrected jackknife": COVERAGE_FLOOR - 0.01, "jackknife": 0.9,
                               "bootstrap": 0.8}))["chosen"] is None


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


@pytest.mark.parametrize("name", PARTIAL_FAMILIES)
def test_the_proximity_controlled_test_holds_alpha_where_proximity_drives_both(result: dict[str, Any], name: str):
    summary = family(result, name)
    assert summary["n_proximity_null"] >= 150
    assert summary["proximity_calibrated"], summary
    assert summary["power_beyond_proximity"] >= 0.8


@pytest.mark.parametrize("name", ["mantel_pearson", "mantel_spearman"])
def test_the_plain_mantel_test_mistakes_proximity_for_routing(result: dict[str, Any], name: str) -> None:
    summary = family(result, name)
    assert summary["proximity_fpr"] > 0.5 > summary["proximity_bound"]
    assert not summary["proximity_calibrated"]


def test_proximity_worlds_are_what_they_claim() -> None:
    """Proximity null: both similarities fall with distance (the plain r is large), nothing beyond it; the
    planted world adds routing clusters independent of the representations."""
    means = {}
    for kind in ("smooth", "routed"):
        reps, delta_y, features = proximity_world(np.random.default_rng(3), QUICK, kind)
        x = upper(cosine_from_gram(features @ features.T)[0])
        y = upper(unit_rows(delta_y) @ unit_rows(delta_y).T)
        z = upper(proximity_matrix(reps))
        means[kind] = (np.corrcoef(x, z)[0, 1], np.corrcoef(y, z)[0, 1], np.corrcoef(x, y)[0, 1])
    assert means["smooth"][0] > 0.5 and means["smooth"][1] > 0.5 and means["smooth"][2] > 0.3
    assert means["routed"][2] > 0.2
    assert PROXIMITY_NULL.startswith("proximity null")
