"""Known answers for NB02 geometry: neighbour purity on a built neighbourhood, cross-model cosine."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hypocheck.registry import get_probe
from probes.geometry import (
    CrossModelParams,
    NeighbourPurityParams,
    cross_model_cosine,
    nearest_neighbours,
    pert_neighbour_purity,
    set_purity,
)
from probes.setstats import cosine_matrix


def neighbourhood(seed: int = 0) -> np.ndarray:
    """Rows 0–3 point almost along e0; 20 distractors spread over the other 9 axes."""
    rng = np.random.default_rng(seed)
    cluster = np.zeros((4, 10))
    cluster[:, 0] = 1.0
    cluster[:, 1:] = 0.05 * rng.normal(size=(4, 9))
    distractors = np.zeros((20, 10))
    distractors[:, 1:] = rng.normal(size=(20, 9))
    return np.vstack([cluster, distractors])


def purity(embeddings, members, seed=1, names=None, **params):
    return pert_neighbour_purity(embeddings=embeddings, members=np.asarray(members), names=names,
                                 params=NeighbourPurityParams(**({"k": 3, "min_members": 4} | params)),
                                 rng=np.random.default_rng(seed))


def test_clustered_set_has_purity_one_and_beats_permuted_labels() -> None:
    res = purity(neighbourhood(), [0, 1, 2, 3])
    assert res.metrics["mean_purity"] == 1.0
    np.testing.assert_array_equal(res.arrays["purity"], np.ones(4))
    assert res.metrics["chance_purity"] == pytest.approx(3 / 23)
    assert res.metrics["null_mean_purity"] == pytest.approx(3 / 23, abs=0.02)  # a random set's expected purity
    assert res.metrics["p"] < 0.001 and res.metrics["z"] > 5
    assert res.metrics["delta_purity"] == pytest.approx(1.0 - res.metrics["null_mean_purity"])


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


def test_cross_model_shape_mismatch_and_too_few() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        cross(np.ones((5, 3)), np.ones((5, 4)))
    res = cross(np.eye(4), np.eye(4))
    assert res.inconclusive is not None
    assert set(res.metrics) == set(get_probe("cross_model_cosine").metrics)
