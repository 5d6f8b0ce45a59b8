"""Known answers for NB02 geometry: neighbour purity (uniform and magnitude-matched nulls) on built
neighbourhoods, cross-model cosine."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from hypocheck.probes.geometry import (
    CrossModelParams,
    NeighbourPurityParams,
    cross_model_cosine,
    nearest_neighbours,
    pert_neighbour_purity,
    rotation_null,
    set_purity,
)
from hypocheck.probes.setstats import cosine_matrix
from hypocheck.registry import get_probe


def neighbourhood(seed: int = 0) -> np.ndarray:
    """Rows 0–3 point almost along e0; 20 distractors spread over the other 9 axes."""
    rng = np.random.default_rng(seed)
    cluster = np.zeros((4, 10))
    cluster[:, 0] = 1.0
    cluster[:, 1:] = 0.05 * rng.normal(size=(4, 9))
    distractors = np.zeros((20, 10))
    distractors[:, 1:] = rng.normal(size=(20, 9))
    return np.vstack([cluster, distractors])


def purity(embeddings, members, seed=1, names=None, magnitude=None, **params):
    return pert_neighbour_purity(embeddings=embeddings, members=np.asarray(members), names=names, magnitude=magnitude,
                                 params=NeighbourPurityParams(**({"k": 3, "min_members": 4} | params)),
                                 rng=np.random.default_rng(seed))


def test_clustered_set_has_purity_one_and_beats_permuted_labels() -> None:
    res = purity(neighbourhood(), [0, 1, 2, 3])
    assert res.metrics["mean_purity"] == 1.0
    np.testing.assert_array_equal(res.arrays["purity"], np.ones(4))
    assert res.metrics["chance_purity"] == pytest.approx(3 / 23)
    assert res.metrics["null_mean_purity"] == pytest.approx(3 / 23, abs=0.02)  # a random set's expected purity
    assert res.metrics["p"] < 0.001 and res.metrics["z"] > 5
    assert res.metrics["delta_purity_uniform"] == pytest.approx(1.0 - res.metrics["null_mean_purity"])
    # without magnitudes the matched test of record cannot run
    assert res.inconclusive is not None and "magnitude" in res.inconclusive
    assert math.isnan(res.metrics["p_matched"]) and math.isnan(res.metrics["delta_purity"])


def test_purity_and_its_null_match_loops() -> None:
    x = np.random.default_rng(2).normal(size=(30, 6))
    sim = cosine_matrix(x)
    nbrs = nearest_neighbours(sim, 4)
    for i in range(30):  # the 4 most similar others, in order
        order = sorted((j for j in range(30) if j != i), key=lambda j: -sim[i, j])
        assert list(nbrs[i]) == order[:4]
    sets = np.array([[0, 5, 9, 12, 20], [1, 2, 3, 4, 29]])
    loops = [np.mean([np.isin(nbrs[i], s).mean() for i in s]) for s in sets]
    np.testing.assert_allclose(set_purity(nbrs, sets), loops)
    res = purity(x, sets[0], k=4)
    assert res.metrics["mean_purity"] == pytest.approx(loops[0])
    null = res.null
    assert null is not None and null.size == 2000
    assert res.metrics["p"] == pytest.approx((1 + np.sum(null >= loops[0])) / (null.size + 1))


def test_neighbours_table_lists_every_knockdown() -> None:
    x = neighbourhood()
    names = [f"KD{i}" for i in range(len(x))]
    table = purity(x, [0, 1, 2, 3], names=names).tables["neighbours"]
    assert list(table.columns[:4]) == ["knockdown", "rank", "neighbour", "cosine"]
    assert len(table) == len(x) * 3
    first = table[table.knockdown == "KD0"]
    assert list(first["rank"]) == [1, 2, 3] and set(first.neighbour) == {"KD1", "KD2", "KD3"}
    sim = cosine_matrix(x)
    for row in table.itertuples():
        assert row.cosine == pytest.approx(sim[names.index(row.knockdown), names.index(row.neighbour)])
    assert (table.groupby("knockdown", sort=False)["cosine"].apply(lambda c: c.is_monotonic_decreasing)).all()


def test_purity_too_few_members_is_inconclusive() -> None:
    res = purity(neighbourhood(), [0, 1, 2])
    assert res.inconclusive is not None and "3 set members" in res.inconclusive
    assert set(res.metrics) == set(get_probe("pert_neighbour_purity").metrics)
    assert math.isnan(res.metrics["p"]) and "neighbours" in res.tables


def weak_ring(n_strong: int = 30, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Ten no-effect knockdowns 0–9 near the shared default direction e0, on a small ring (knockdown *i* at
    angle 36°·i in the e1–e2 plane), so their nearest neighbours are the ring's next ones (distance 1, then 2);
    ``n_strong`` knockdowns with large effects in the orthogonal axes e3–e9 (cosine 0 with the ring).
    Magnitudes: the ring's 0.01–0.10, the others' 1–``n_strong``."""
    rng = np.random.default_rng(seed)
    angles = np.arange(10) * 2 * np.pi / 10
    ring = np.zeros((10, 10))
    ring[:, 0] = 1.0
    ring[:, 1], ring[:, 2] = 0.1 * np.cos(angles), 0.1 * np.sin(angles)
    strong = np.zeros((n_strong, 10))
    strong[:, 3:] = rng.normal(size=(n_strong, 7))
    magnitude = np.concatenate([0.01 * np.arange(1, 11), np.arange(1.0, n_strong + 1)])
    return np.vstack([ring, strong]), magnitude


def ring_null_purities(k: int = 4) -> np.ndarray:
    """Purity of every 5-subset of the ring."""
    emb, _ = weak_ring()
    nbrs = nearest_neighbours(cosine_matrix(emb), k)
    return set_purity(nbrs, np.array(list(itertools.combinations(range(10), 5))))


def test_ring_neighbours_are_the_next_ones_on_the_ring() -> None:
    emb, _ = weak_ring()
    nbrs = nearest_neighbours(cosine_matrix(emb), 4)
    for i in range(10):
        assert set(nbrs[i, :2]) == {(i - 1) % 10, (i + 1) % 10}
        assert set(nbrs[i, 2:]) == {(i - 2) % 10, (i + 2) % 10}


def test_no_effect_set_passes_uniform_but_not_magnitude_matched() -> None:
    """Five interleaved no-effect knockdowns: each has 2 of its 4 neighbours (distance 2 on the ring) in the set.
    Against uniformly permuted labels that is far above chance (4/39); against null sets matched for ‖ΔY‖
    (drawn from the equally weak ring, where every knockdown's neighbours are weak too) it is ordinary."""
    emb, magnitude = weak_ring()
    res = purity(emb, [0, 2, 4, 6, 8], k=4, min_members=5, magnitude=magnitude)
    np.testing.assert_array_equal(res.arrays["purity"], np.full(5, 0.5))
    assert res.metrics["mean_purity"] == 0.5
    assert res.metrics["match_neighbours"] == 2
    assert res.metrics["null_mean_purity"] == pytest.approx(4 / 39, abs=0.02)
    assert res.metrics["p"] < 0.01 and res.metrics["z"] > 3  # the uniform null: "pure"
    assert np.mean(res.arrays["matched_sets"] < 10) > 0.9  # matched null members: (almost all) on the ring
    assert res.metrics["matched_null_mean_purity"] > 3 * res.metrics["null_mean_purity"]
    assert res.metrics["p_matched"] > 0.1 and res.metrics["z_matched"] < 2  # the matched null: not pure
    assert res.metrics["delta_purity"] == pytest.approx(0.5 - res.metrics["matched_null_mean_purity"])
    assert res.inconclusive is None
    lo, hi = res.cis["delta_purity"]
    assert lo <= res.metrics["delta_purity"] <= hi


def test_contiguous_ring_arc_is_pure_unless_magnitude_explains_it() -> None:
    """An arc of five: per-member purity 2/4, 3/4, 4/4, 3/4, 2/4; only the 10 arcs of 252 ring subsets reach 0.7.
    With ‖ΔY‖ scrambled over the ring, the matched null draws weak knockdowns without regard to their place
    on the ring and an arc is rare in it; when ‖ΔY‖ follows the ring (neighbours on the ring are neighbours
    in ‖ΔY‖), the arc is the five weakest knockdowns: for three of its members the four nearest in ‖ΔY‖ are all
    members, no exchangeable knockdown exists and the case is inconclusive. Forced to draw anyway
    (``max_unmatched: 1``), the null sets of knockdowns next to the members in ‖ΔY‖ are arcs too."""
    emb, magnitude = weak_ring()
    scrambled = magnitude.copy()
    scrambled[:10] = np.random.default_rng(2).permutation(magnitude[:10])
    res = purity(emb, [0, 1, 2, 3, 4], k=4, magnitude=scrambled, permutations=5000)
    np.testing.assert_array_equal(res.arrays["purity"], [0.5, 0.75, 1.0, 0.75, 0.5])
    assert res.metrics["mean_purity"] == pytest.approx(0.7)
    assert np.mean(ring_null_purities() >= 0.7 - 1e-12) == pytest.approx(10 / 252)
    assert res.metrics["p_matched"] < 0.05
    assert res.inconclusive is None and res.metrics["unmatched_members"] <= 2
    following = purity(emb, [0, 1, 2, 3, 4], k=4, magnitude=magnitude, permutations=5000)
    assert following.inconclusive is not None and "no exchangeable knockdowns" in following.inconclusive
    assert following.metrics["unmatched_members"] == 3 and math.isnan(following.metrics["p_matched"])
    assert math.isfinite(following.metrics["p"])  # the uniform test is still reported
    following = purity(emb, [0, 1, 2, 3, 4], k=4, magnitude=magnitude, permutations=5000, max_unmatched=1)
    assert following.inconclusive is None and following.metrics["p_matched"] > 0.05
    assert following.metrics["matched_null_mean_purity"] > res.metrics["matched_null_mean_purity"]


def test_set_with_effects_stays_pure_against_the_matched_null() -> None:
    """Magnitude matching does not remove real structure: a tight cluster beats both nulls (members' magnitudes
    0, 7, 14, 21 of 0–23, spread over the range)."""
    x = neighbourhood()
    magnitude = (np.arange(len(x)) * 7 % len(x)).astype(float)
    res = purity(x, [0, 1, 2, 3], magnitude=magnitude)
    assert res.metrics["mean_purity"] == 1.0
    assert res.metrics["p"] < 0.01 and res.metrics["p_matched"] < 0.01
    assert res.metrics["delta_purity"] > 0.5 and res.metrics["z_matched"] > 3
    assert res.null is not None and np.array_equal(res.null, res.arrays["matched_null"])
    assert res.arrays["uniform_null"].size == res.arrays["matched_null"].size == 2000


def test_purity_matched_null_needs_room_and_matching_magnitudes() -> None:
    emb, magnitude = weak_ring(n_strong=2)
    res = purity(emb, list(range(9)), k=2, magnitude=magnitude)  # 9 of 12: 9 + 5 − 1 > 12 knockdowns
    assert res.inconclusive is not None and "too large" in res.inconclusive
    assert math.isfinite(res.metrics["p"]) and math.isnan(res.metrics["p_matched"])
    with pytest.raises(ValueError, match="magnitude has shape"):
        purity(emb, [0, 1, 2, 3], magnitude=magnitude[:-1])


def cross(a, b, members=None, seed=3):
    return cross_model_cosine(embeddings_a=a, embeddings_b=b, members=members, params=CrossModelParams(),
                              rng=np.random.default_rng(seed))


def test_cross_model_cosine_is_exact_per_knockdown() -> None:
    a = np.array([[1.0, 0], [0, 1], [1, 1], [2, 0], [0, -1], [1, -1]])
    b = np.array([[1.0, 1], [0, 2], [1, 1], [-1, 0], [0, -3], [1, 0]])
    expected = np.array([1 / math.sqrt(2), 1, 1, -1, 1, 1 / math.sqrt(2)])
    res = cross(a, b)
    np.testing.assert_allclose(res.arrays["cosine"], expected)
    assert res.metrics["mean_cosine"] == pytest.approx(expected.mean())
    assert res.metrics["n_kds"] == 6
    sub = cross(a, b, members=np.array([0, 3, 4, 5, 1]))
    assert sub.metrics["mean_cosine"] == pytest.approx(expected[[0, 3, 4, 5, 1]].mean())


def test_cross_model_null_pairs_with_other_knockdowns() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=(80, 16))
    same = cross(a, a + 0.5 * rng.normal(size=a.shape))
    assert same.metrics["p"] < 0.001 and same.metrics["z"] > 5
    assert same.metrics["null_mean_cosine"] == pytest.approx(0.0, abs=0.05)
    unrelated = cross(a, rng.normal(size=a.shape))
    assert unrelated.metrics["p"] > 0.05
    lo, hi = unrelated.cis["mean_cosine"]
    assert lo < 0 < hi
    # the null never pairs a knockdown with itself: with b = a, every null pair is a mismatched pair
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    off_diagonal = (unit @ unit.T)[~np.eye(80, dtype=bool)]
    assert cross(a, a).metrics["null_mean_cosine"] == pytest.approx(off_diagonal.mean(), abs=0.01)


def test_rotation_null_of_one_direction_is_a_uniform_unit_vector_coordinate() -> None:
    """cos(x, Qx) for a uniformly random orthogonal Q: mean 0, variance 1/d (a coordinate of a random unit vector)."""
    rng = np.random.default_rng(6)
    x = np.tile(rng.normal(size=(1, 8)), (3, 1))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    null = rotation_null(x, x, 4000, rng)
    assert null.mean() == pytest.approx(0.0, abs=0.015)
    assert null.var() == pytest.approx(1 / 8, rel=0.08)


def test_rotation_null_matches_full_haar_rotations() -> None:
    """The reduced draw (a random k-frame's leading block) has the distribution of full d × d Haar rotations."""
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(6, 12)), rng.normal(size=(6, 12))
    a[:3] += 3.0
    b[:3] += 2.0
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    fast = rotation_null(a, b, 4000, rng)
    full = np.einsum("id,rde,ie->r", a, stats.ortho_group.rvs(12, size=4000, random_state=rng), b) / 6
    assert stats.ks_2samp(fast, full).pvalue > 0.01
    assert fast.std() == pytest.approx(full.std(), rel=0.06)


def test_cluster_in_unaligned_spaces_beats_mismatched_pairs_but_not_rotations() -> None:
    """Members 0–9 cluster along u in A and along v in B, cos(u, v) = 0.3, the rest random in both: each member is
    closer to itself (0.3) than to a random other knockdown (0), yet no closer than a random turn of B makes it."""
    rng = np.random.default_rng(7)
    dim, n = 16, 80
    u = np.eye(dim)[0]
    v = 0.3 * u + np.sqrt(1 - 0.09) * np.eye(dim)[1]
    a, b = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    a[:10] = u + 0.02 * rng.normal(size=(10, dim))
    b[:10] = v + 0.02 * rng.normal(size=(10, dim))
    res = cross(a, b, members=np.arange(10))
    assert res.metrics["mean_cosine"] == pytest.approx(0.3, abs=0.02)
    assert res.metrics["p_mismatched"] < 0.01 and res.metrics["z"] > 3
    assert res.metrics["rotation_null_mean_cosine"] == pytest.approx(0.0, abs=0.03)
    assert res.metrics["p_rotation"] > 0.05
    assert res.metrics["p"] == max(res.metrics["p_mismatched"], res.metrics["p_rotation"])
    assert res.arrays["rotation_null"].size == CrossModelParams().rotations


def test_cross_model_shape_mismatch_and_too_few() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        cross(np.ones((5, 3)), np.ones((5, 4)))
    res = cross(np.eye(4), np.eye(4))
    assert res.inconclusive is not None
    assert set(res.metrics) == set(get_probe("cross_model_cosine").metrics)


def test_purity_attainable_p_and_minimum_effect() -> None:
    emb, magnitude = weak_ring()
    res = purity(emb, [0, 2, 4, 6, 8], k=4, min_members=5, magnitude=magnitude, permutations=1500)
    assert dict(res.attainable) == {"p": 1 / 1501, "p_matched": 1 / 1501}
    assert res.metrics["p_matched"] >= res.attainable["p_matched"]
    without = purity(emb, [0, 2, 4, 6, 8], k=4, min_members=5, permutations=1500)  # no magnitudes: no matched test
    assert without.attainable["p"] == 1 / 1501 and math.isnan(without.attainable["p_matched"])
    assert get_probe("pert_neighbour_purity").min_effect == 0.1


def test_cross_model_attainable_p_is_the_larger_floor_and_minimum_effect() -> None:
    rng = np.random.default_rng(8)
    a = rng.normal(size=(30, 6))
    res = cross_model_cosine(embeddings_a=a, embeddings_b=a + 0.1 * rng.normal(size=a.shape),
                             params=CrossModelParams(permutations=1200, rotations=300), rng=np.random.default_rng(1))
    assert dict(res.attainable) == {"p_mismatched": 1 / 1201, "p_rotation": 1 / 301, "p": 1 / 301}
    assert res.metrics["p"] == pytest.approx(1 / 301)  # perfect agreement sits at the floor of the coarser null
    assert get_probe("cross_model_cosine").min_effect == 0.1
