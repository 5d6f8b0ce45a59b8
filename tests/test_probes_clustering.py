"""Known answers for NB01 output clustering: exact cosines, the magnitude confound, absence and its power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from hypocheck.probes.clustering import (
    OutputAbsenceParams,
    OutputClusteringParams,
    detection_power,
    minimal_detectable_effect,
    noeffect_floor_of,
    output_set_absence,
    output_set_clustering,
)
from hypocheck.registry import get_probe

FAST = {"null_sets": 2000, "bootstrap": 500}


def confounded(seed: int = 0, n: int = 200, dim: int = 40, planted: np.ndarray | None = None):
    """features = default + magnitude · own direction + noise; the first 40 KDs have (almost) no effect.

    With ``planted``, those knockdowns get a large magnitude and one shared program direction.
    """
    rng = np.random.default_rng(seed)
    default = rng.normal(size=dim)
    default /= np.linalg.norm(default)
    magnitude = rng.lognormal(0.0, 0.5, n)
    magnitude[:40] = rng.uniform(0.0, 0.05, 40)
    directions = rng.normal(size=(n, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    if planted is not None:
        program = rng.normal(size=dim)
        directions[planted] = program / np.linalg.norm(program) + 0.3 * directions[planted]
        magnitude[planted] = rng.uniform(1.5, 2.0, planted.size)
    features = default + magnitude[:, None] * directions + 0.05 * rng.normal(size=(n, dim))
    return features, magnitude


def run(features, members, magnitude, seed=1, **params):
    return output_set_clustering(features=features, members=np.asarray(members), magnitude=magnitude,
                                 params=OutputClusteringParams(**(FAST | params)), rng=np.random.default_rng(seed))


def test_within_mean_cosine_is_exact() -> None:
    # members 0,1,2: cos(0,1) = 1, cos(0,2) = cos(1,2) = 0 → mean over pairs 1/3
    features = np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 3.0, 0], [0, 0, 1.0], [1.0, 1, 0], [0, 1, 1.0]])
    res = run(features, [0, 1, 2], np.arange(1.0, 7.0), min_members=3, magnitude_bins=2, min_stratum_ratio=1.0)
    assert res.metrics["within_mean_cosine"] == pytest.approx(1 / 3)
    assert res.metrics["n_members"] == 3
    assert res.metrics["set_magnitude"] == 2.0  # median of 1, 2, 3


def test_within_mean_matches_loops_and_z_matches_null() -> None:
    features = np.random.default_rng(3).normal(size=(60, 8))
    members = np.array([2, 7, 11, 19, 23, 31, 40])
    res = run(features, members, np.linalg.norm(features, axis=1))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    pairs = [unit[a] @ unit[b] for a in members for b in members if a != b]
    assert res.metrics["within_mean_cosine"] == pytest.approx(np.mean(pairs))
    for null, z, p in ((res.arrays["uniform_null"], "z", "p"), (res.arrays["matched_null"], "z_matched", "p_matched")):
        assert res.metrics[z] == pytest.approx((np.mean(pairs) - null.mean()) / null.std(ddof=1))
        assert res.metrics[p] == pytest.approx((1 + np.sum(null >= np.mean(pairs))) / (null.size + 1))
    assert res.metrics["delta_cosine"] == pytest.approx(np.mean(pairs) - res.arrays["matched_null"].mean())
    lo, hi = res.cis["delta_cosine"]
    assert lo < res.metrics["delta_cosine"] < hi


def test_no_effect_set_clusters_against_uniform_but_not_matched_sets() -> None:
    features, magnitude = confounded()
    no_effect = np.arange(3, 15)  # 12 of the 40 knockdowns without effect
    res = run(features, no_effect, magnitude)
    assert res.metrics["z"] > 4 and res.metrics["p"] < 0.001  # the confound: "clustered" against uniform sets
    assert abs(res.metrics["z_matched"]) < 2 and res.metrics["p_matched"] > 0.05
    assert res.metrics["n_magnitude_bins"] == 10
    assert res.metrics["magnitude_ratio"] < 2  # the set sits at the no-effect floor
    assert res.cis["delta_cosine"][0] < 0 < res.cis["delta_cosine"][1]


def test_strong_planted_set_stays_clustered_under_both_nulls() -> None:
    planted = np.arange(100, 112)
    features, magnitude = confounded(planted=planted)
    res = run(features, planted, magnitude)
    assert res.metrics["z"] > 4 and res.metrics["z_matched"] > 4
    assert res.metrics["p_matched"] < 0.001
    assert res.cis["delta_cosine"][0] > 0.3
    assert res.metrics["magnitude_ratio"] > 10


def test_noeffect_floor_given_or_computed() -> None:
    features, magnitude = confounded()
    computed = run(features, np.arange(50, 60), magnitude).metrics["noeffect_floor"]
    assert computed == pytest.approx(np.median(np.sort(magnitude)[:20]))
    assert noeffect_floor_of(np.arange(1.0, 11.0), 0.3) == 2.0
    given = output_set_clustering(features=features, members=np.arange(50, 60), magnitude=magnitude,
                                  noeffect_floor=0.5, params=OutputClusteringParams(**FAST),
                                  rng=np.random.default_rng(0))
    assert given.metrics["noeffect_floor"] == 0.5
    assert given.metrics["magnitude_ratio"] == pytest.approx(np.median(magnitude[50:60]) / 0.5)


def test_too_few_members_is_inconclusive_with_every_metric_present() -> None:
    features, magnitude = confounded()
    res = run(features, [1, 2, 3], magnitude)
    assert res.inconclusive is not None and "3 set members" in res.inconclusive
    assert set(res.metrics) == set(get_probe("output_set_clustering").metrics)
    assert math.isnan(res.metrics["z_matched"]) and res.metrics["n_members"] == 3


def test_crowded_magnitude_bins_are_merged() -> None:
    features, magnitude = confounded()
    res = run(features, np.arange(0, 30), magnitude)  # 30 of the 40 weakest: 10 bins of 20 would be crowded
    assert res.metrics["n_magnitude_bins"] < 10
    too_large = run(features, np.arange(0, 150), magnitude)
    assert too_large.inconclusive is not None and "too large" in too_large.inconclusive


def test_power_and_minimal_detectable_effect_on_a_normal_null() -> None:
    null = stats.norm.ppf((np.arange(100_000) + 0.5) / 100_000)
    mde = minimal_detectable_effect(null, alpha=0.05, power=0.8)
    assert mde == pytest.approx(stats.norm.ppf(0.95) + stats.norm.ppf(0.8), abs=1e-3)
    assert detection_power(null, mde, 0.05) == pytest.approx(0.8, abs=1e-3)
    assert detection_power(null, 0.0, 0.05) == pytest.approx(0.05, abs=1e-3)


def absence(features, members, magnitude, reference, **params):
    return output_set_absence(features=features, members=np.asarray(members), magnitude=magnitude,
                              params=OutputAbsenceParams(reference_effect=reference, **(FAST | params)),
                              rng=np.random.default_rng(2))


def test_absence_shown_when_ci_excludes_the_reference_and_power_is_high() -> None:
    features, magnitude = confounded()
    res = absence(features, np.arange(60, 90), magnitude, reference=0.3)  # 30 unrelated knockdowns
    assert res.inconclusive is None
    assert res.metrics["p_matched"] > 0.05
    assert res.metrics["reference_excluded"] == 1.0
    assert res.cis["delta_cosine"][1] < 0.3
    assert res.metrics["power"] > 0.99 and res.metrics["minimal_detectable_effect"] < 0.3
    assert set(res.metrics) == set(get_probe("output_set_absence").metrics)


def test_absence_inconclusive_when_the_data_cannot_decide() -> None:
    features, magnitude = confounded()
    wide = absence(features, np.arange(120, 126), magnitude, reference=0.01)  # an effect too small to exclude
    assert wide.inconclusive is not None and "reaches the reference" in wide.inconclusive
    assert wide.metrics["reference_excluded"] == 0.0 and wide.metrics["power"] < 0.8
    small = absence(features, [60, 61], magnitude, reference=0.3)
    assert small.inconclusive is not None and "2 set members" in small.inconclusive
    assert math.isnan(small.metrics["power"]) and small.metrics["reference_effect"] == 0.3


def test_absence_of_a_clustered_set_is_conclusive_and_significant() -> None:
    planted = np.arange(100, 112)
    features, magnitude = confounded(planted=planted)
    res = absence(features, planted, magnitude, reference=0.1)
    assert res.inconclusive is None  # significant: the absence claim fails on its expectations, not inconclusive
    assert res.metrics["p_matched"] < 0.001 and res.metrics["reference_excluded"] == 0.0
