"""Calibration: each test family holds alpha on null data and finds planted sets; the original
pair-level rank-sum test does not hold alpha. A small run of
``tools.calibration.clustering`` (the CLI runs more)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tools.calibration.clustering import (
    ALL_KNOCKDOWNS,
    CALIBRATED,
    LOW_OFF_EDGES,
    MIN_POWER,
    NO_EFFECT_TRAP,
    RELATED,
    CalibrationConfig,
    calibrate,
    family_table,
    mc_bound,
    table,
    write_reports,
)

CONFIG = CalibrationConfig(seeds=24, demo_seeds=1)


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return calibrate(CONFIG, workers=2)


def row(result: dict[str, Any], family: str, data: str) -> dict[str, Any]:
    (found,) = [r for r in result["rows"] if r["family"] == family and r["data"] == data]
    return found


def test_mc_bound() -> None:
    assert mc_bound(0.05, 100) == pytest.approx(0.05 + 2 * math.sqrt(0.05 * 0.95 / 100))


def family(result: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [f for f in result["families"] if f["family"] == name]
    return found


@pytest.mark.parametrize("name", sorted(CALIBRATED))
def test_every_family_holds_alpha_on_null_data(result: dict[str, Any], name: str) -> None:
    summary = family(result, name)
    assert summary["n_null"] >= 60
    assert summary["fpr"] <= summary["bound"], f"{name}: FPR {summary['fpr']:.3f} > {summary['bound']:.3f}"
    for data in CALIBRATED[name]:  # every null data set took part
        assert row(result, name, data)["n_runs"] >= 10


@pytest.mark.parametrize(
    "family, data",
    [("clustering_matched", "synthetic: planted program"), ("clustering_specific", "synthetic: planted program"),
     ("neighbour_purity_matched", "synthetic: planted program"),
     ("cross_model", "synthetic: planted"), ("knockout_shared_vs_specific", "synthetic: planted")],
)
def test_planted_sets_are_found(result: dict[str, Any], family: str, data: str) -> None:
    assert row(result, family, data)["rate"] >= 0.8


def test_pair_level_rank_sum_and_uniform_null_are_not_calibrated(result: dict[str, Any]) -> None:
    rank_sum = family(result, "original_rank_sum")  # on the same null data as the uniform clustering test
    assert rank_sum["fpr"] > rank_sum["bound"]  # pairs sharing a member are not independent
    assert rank_sum["fpr"] > 2 * family(result, "clustering_uniform")["fpr"]
    assert row(result, "original_rank_sum", "synthetic: random sets")["rate"] > 0.15
    confound = row(result, "clustering_uniform", "synthetic: low-magnitude sets")
    assert confound["rate"] > 0.9  # weak knockdowns share the default direction
    assert row(result, "clustering_matched", "synthetic: low-magnitude sets")["rate"] <= confound["bound"]


@pytest.mark.parametrize("family", ["clustering_matched", "clustering_specific", "neighbour_purity_matched"])
@pytest.mark.parametrize("data", ["synthetic: low-magnitude sets", "synthetic: low-magnitude sets, off bin edges",
                                  "synthetic: low-magnitude sets, crowded"])
def test_matched_nulls_hold_alpha_on_every_low_magnitude_design(result: dict[str, Any], family: str,
                                                                data: str) -> None:
    """Sets of the weakest knockdowns, whether or not their share falls on a ‖ΔY‖ decile edge (the matched null
    drawn from quantile bins leaked at the edge: FPR 0.15), and when a set holds half of its weak neighbours."""
    found = row(result, family, data)
    assert found["must_hold"] and found["n_runs"] == CONFIG.seeds * len(CONFIG.sizes)
    assert found["rate"] <= found["bound"], f"{family} on {data}: FPR {found['rate']:.3f} > {found['bound']:.3f}"


def test_cross_model_rotation_null_holds_alpha_on_unaligned_clustered_sets(result: dict[str, Any]) -> None:
    """A set clustering in two unaligned spaces: the mismatched-knockdown null alone counts it once per member."""
    data = "synthetic: clustered set, unaligned spaces"
    assert row(result, "cross_model", data)["rate"] <= row(result, "cross_model", data)["bound"]
    assert row(result, "cross_model_mismatched_only", data)["rate"] > row(result, "cross_model", data)["rate"]


def test_purity_magnitude_confound_is_removed_by_the_matched_null(result: dict[str, Any]) -> None:
    """Weak knockdowns are each other's neighbours: a low-magnitude set looks pure against uniformly permuted
    labels, not against labels permuted within magnitude bins."""
    confound = row(result, "neighbour_purity_uniform", "synthetic: low-magnitude sets")
    assert confound["rate"] > 0.3
    matched = row(result, "neighbour_purity_matched", "synthetic: low-magnitude sets")
    assert matched["rate"] <= matched["bound"] < confound["rate"]
    assert family(result, "neighbour_purity_matched")["power"] >= 0.8


@pytest.mark.parametrize("family", ["clustering_matched", "neighbour_purity_matched"])
def test_related_sets_keep_their_power_where_the_previous_null_lost_it(result: dict[str, Any], family: str) -> None:
    """Two sets of one program with a distinctive ‖ΔY‖: each member's window holds the other set's knockdowns.
    Leaving the other configured sets out of the null finds the program; drawing from every knockdown (the
    previous null) absorbs it."""
    of_record = row(result, family, RELATED["planted"])
    previous = row(result, family + ALL_KNOCKDOWNS, RELATED["planted"])
    assert of_record["n_runs"] == previous["n_runs"] == 2 * CONFIG.seeds  # inconclusive runs count as misses
    assert of_record["rate"] >= 0.85, f"{family}: power {of_record['rate']:.2f} with the other sets left out"
    assert previous["rate"] <= of_record["rate"] - 0.3, f"{family}: the previous null found {previous['rate']:.2f}"
    assert of_record["min_power"] == MIN_POWER[(family, RELATED["planted"])] == 0.9


@pytest.mark.parametrize("family", ["clustering_matched", "clustering_specific", "neighbour_purity_matched"])
@pytest.mark.parametrize("data", [RELATED["null"], NO_EFFECT_TRAP, LOW_OFF_EDGES])
def test_the_null_with_other_sets_left_out_holds_alpha(result: dict[str, Any], family: str, data: str) -> None:
    """The no-effect trap stays caught, and weak sets keep their FPR, when the null leaves out the other configured
    sets (one of them weak too, which thins the weak band); a band of two sets without a program is no program."""
    found = row(result, family, data)
    runs = 2 * CONFIG.seeds if data == RELATED["null"] else CONFIG.seeds
    assert found["must_hold"] and found["n_runs"] + found["undefined"] == runs and found["undefined"] <= 0.1 * runs
    assert found["rate"] <= found["bound"], f"{family} on {data}: FPR {found['rate']:.3f} > {found['bound']:.3f}"
    uniform = row(result, "clustering_uniform", data)
    if data != RELATED["null"]:  # weak sets: the uniform null is fooled, the trap is real
        assert uniform["rate"] > 0.9 and not uniform["must_hold"]


def test_reports_are_written(result: dict[str, Any], tmp_path) -> None:
    out = write_reports(result, tmp_path)
    saved = json.loads((out / "calibration.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    text = (out / "calibration.md").read_text()
    assert table(result) in text and family_table(result) in text
    assert "| clustering_matched | synthetic: two sets of one program |" in text and "power ≥ 0.9" in text
