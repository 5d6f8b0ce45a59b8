"""Known answers for NB04 knockout transfer: exact Spearman per gene and the summaries over genes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from hypocheck.probes.knockout import (
    MIN_SPEARMAN,
    KnockoutTransferParams,
    group_test_floor,
    knockout_transfer,
    rowwise_spearman,
)
from hypocheck.registry import get_probe

A = np.array([1.0, 2, 3, 4])
# line-B profiles with hand-computed Spearman r against A: 1 − 6 Σd² / (n (n² − 1)), n = 4
B_ROWS = {
    1.0: [1.0, 2, 3, 4],
    0.8: [1.0, 3, 2, 4],  # Σd² = 2
    -1.0: [4.0, 3, 2, 1],
    0.6: [2.0, 1, 4, 3],  # Σd² = 4
    -0.6: [3.0, 4, 1, 2],  # Σd² = 16
}


def transfer(a, b, seed=0, **kw):
    names = [f"g{i}" for i in range(len(a))]
    params = KnockoutTransferParams(**kw.pop("params", {}))
    return knockout_transfer(profiles_a=a, profiles_b=b, gene_names=names, params=params,
                             rng=np.random.default_rng(seed), **kw)


def test_spearman_per_gene_is_exact() -> None:
    a = np.tile(A, (6, 1))
    b = np.array([*B_ROWS.values(), [5.0, 5, 5, 5]])  # the last row is constant: no r
    rho = rowwise_spearman(a, b)
    np.testing.assert_allclose(rho[:5], list(B_ROWS))
    assert math.isnan(rho[5])


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(1)
    a = np.round(rng.normal(size=(40, 25)))  # many ties
    b = 0.5 * a + rng.normal(size=a.shape)
    expected = [stats.spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(rowwise_spearman(a, b), expected)


def test_summaries_over_genes() -> None:
    a = np.tile(A, (6, 1))
    b = np.array([*B_ROWS.values(), [5.0, 5, 5, 5]])
    res = transfer(a, b, params={"min_genes": 2})
    m = res.metrics
    assert m["mean_spearman"] == pytest.approx(np.mean(list(B_ROWS)))  # 0.16
    assert m["median_spearman"] == pytest.approx(0.6)
    assert m["max_spearman"] == pytest.approx(1.0)
    assert (m["n_above"], m["share_above"]) == (3, pytest.approx(0.6))  # 1.0, 0.8, 0.6 > 0.4
    assert (m["n_below_zero"], m["share_below_zero"]) == (2, pytest.approx(0.4))
    assert (m["n_genes"], m["n_undefined"]) == (5, 1)
    assert math.isnan(m["shared_minus_specific"]) and math.isnan(m["p_shared_minus_specific"])
    assert res.arrays["spearman"].shape == (6,)
    assert list(res.tables["spearman"].gene) == [f"g{i}" for i in range(6)]
    lo, hi = res.cis["mean_spearman"]
    assert -1 <= lo < 0.16 < hi <= 1


def test_shared_regulators_transfer_better() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(12, 300))
    b = rng.normal(size=a.shape)
    b[:6] += a[:6]  # genes 0–5 regulate alike in both lines
    res = transfer(a, b, shared_regulators=range(6), specific_regulators=range(6, 12))
    rho = rowwise_spearman(a, b)
    assert res.metrics["shared_minus_specific"] == pytest.approx(rho[:6].mean() - rho[6:].mean())
    assert res.metrics["p_shared_minus_specific"] == pytest.approx(1 / 924)  # exact: the best of C(12, 6) splits
    assert res.attainable == {"p_shared_minus_specific": pytest.approx(1 / 924)}  # what it reached is its floor
    lo, hi = res.cis["shared_minus_specific"]
    assert 0.5 < lo < res.metrics["shared_minus_specific"] < hi
    assert list(res.tables["spearman"].group[:7]) == ["shared"] * 6 + ["specific"]


def test_too_few_defined_genes_is_inconclusive() -> None:
    a = np.tile(A, (3, 1))
    b = np.array([[1.0, 2, 3, 4], [2.0, 2, 2, 2], [3.0, 3, 3, 3]])
    res = transfer(a, b)
    assert res.inconclusive is not None and "1 genes" in res.inconclusive
    assert set(res.metrics) == set(get_probe("knockout_transfer").metrics)
    assert res.metrics["n_undefined"] == 2


def test_rejects_misaligned_inputs() -> None:
    with pytest.raises(ValueError, match="one shape"):
        transfer(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="gene names"):
        knockout_transfer(profiles_a=np.ones((3, 4)), profiles_b=np.ones((3, 4)), gene_names=["a"],
                          params=KnockoutTransferParams(), rng=np.random.default_rng(0))


def test_group_test_floor_three_shared_against_four_specific() -> None:
    """NB04's planted groups: 3 shared vs 4 line-specific regulators: C(7, 3) = 35 splits, so p ≥ 1/35 ≈ 0.029,
    which two cases' correction (×2 = 0.057) keeps from ever reaching 0.05."""
    assert group_test_floor(3, 4, 2000) == pytest.approx(1 / 35)
    assert group_test_floor(20, 20, 2000) == pytest.approx(1 / 2001)  # too many splits: Monte Carlo floor
    rng = np.random.default_rng(5)
    a = rng.normal(size=(7, 200))
    b = rng.normal(size=a.shape)
    b[:3] += 3 * a[:3]  # the 3 shared transfer far better: the most extreme split
    res = transfer(a, b, shared_regulators=[0, 1, 2], specific_regulators=[3, 4, 5, 6],
                   params={"permutations": 2000})
    assert res.attainable["p_shared_minus_specific"] == pytest.approx(1 / 35)
    assert res.metrics["p_shared_minus_specific"] == pytest.approx(1 / 35)


def test_no_groups_declare_no_group_p_floor_and_the_transfer_floor_is_set() -> None:
    res = transfer(np.tile(A, (6, 1)), np.tile(A, (6, 1)))
    assert res.attainable == {}
    assert get_probe("knockout_transfer").min_effect == MIN_SPEARMAN == 0.1
