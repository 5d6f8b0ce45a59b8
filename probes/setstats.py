"""Shared set statistics on similarity matrices: within-set mean similarity, its null and CI.

The unit is the set member (a knockdown): nulls draw whole random sets of the
same size, and CIs resample members, never pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from hypocheck.stats import NullComparison, bootstrap_ci, compare_to_null, quantile_strata, random_sets

CHUNK_ELEMENTS = 4_000_000


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows (zero rows get similarity 0)."""
    unit = unit_rows(vectors)
    return unit @ unit.T


def within_mean(sim: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """Mean off-diagonal similarity inside each row of ``sets`` (an ``(n_sets, m)`` index array)."""
    sets = np.atleast_2d(sets)
    n_sets, m = sets.shape
    if m < 2:
        return np.full(n_sets, np.nan)
    out = np.empty(n_sets)
    step = max(1, CHUNK_ELEMENTS // (m * m))
    for start in range(0, n_sets, step):
        block = sets[start : start + step]
        sub = sim[block[:, :, None], block[:, None, :]]
        total = sub.sum(axis=(1, 2)) - np.trace(sub, axis1=1, axis2=2)
        out[start : start + step] = total / (m * (m - 1))
    return out


def within_mean_distinct(sim: np.ndarray, members: np.ndarray) -> float:
    """Within-set mean over pairs of *different* members (a bootstrap resample may repeat one)."""
    sub = sim[np.ix_(members, members)]
    distinct = members[:, None] != members[None, :]
    return float(sub[distinct].mean()) if distinct.any() else float("nan")


def background_mean(sim: np.ndarray) -> float:
    """Mean similarity over all distinct pairs of the matrix."""
    n = sim.shape[0]
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


@dataclass(frozen=True)
class SetClustering:
    """Within-set similarity of one set against size-matched random sets."""

    within: float
    null: np.ndarray
    test: NullComparison
    ci: tuple[float, float]


def set_clustering(
    sim: np.ndarray,
    members: np.ndarray,
    rng: np.random.Generator,
    n_null: int,
    n_boot: int,
    pool: np.ndarray | None = None,
    member_strata: Sequence[int] | None = None,
    pool_strata: np.ndarray | None = None,
) -> SetClustering:
    """Within-set mean similarity, its null from random sets of the same size (optionally stratified),
    z and empirical p, and a bootstrap CI of (within − null mean) over members."""
    members = np.asarray(members)
    pool = np.arange(sim.shape[0]) if pool is None else np.asarray(pool)
    observed = float(within_mean(sim, members[None, :])[0])
    null_sets = random_sets(rng, pool, members.size, n_null, member_strata, pool_strata)
    null = within_mean(sim, null_sets)
    test = compare_to_null(observed, null)
    ci = bootstrap_ci(
        np.arange(members.size),
        lambda idx: within_mean_distinct(sim, members[idx]) - test.null_mean,
        rng,
        n_resamples=n_boot,
    )
    return SetClustering(observed, null, test, ci)


def within_mean_distinct_rows(sim: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """Per row of ``sets`` (rows may repeat members, as bootstrap resamples do): mean similarity over
    pairs of *different* members; NaN for a row without such a pair. Vectorised ``within_mean_distinct``."""
    sets = np.atleast_2d(sets)
    n_sets, m = sets.shape
    out = np.full(n_sets, np.nan)
    step = max(1, CHUNK_ELEMENTS // max(1, m * m))
    for start in range(0, n_sets, step):
        block = sets[start : start + step]
        distinct = block[:, :, None] != block[:, None, :]
        total = np.where(distinct, sim[block[:, :, None], block[:, None, :]], 0.0).sum(axis=(1, 2))
        count = distinct.sum(axis=(1, 2))
        np.divide(total, count, out=out[start : start + step], where=count > 0)
    return out


def stratum_pair_means(sim: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """Mean similarity of two distinct items drawn from strata *a* and *b* (a strata × strata matrix):
    the expected within-set similarity of a pair under a null that draws members stratum by stratum."""
    strata = np.asarray(strata, dtype=int)
    onehot = np.eye(int(strata.max()) + 1)[strata]
    counts = onehot.sum(axis=0)
    totals = onehot.T @ sim @ onehot - np.diag(onehot.T @ np.diag(sim))
    pairs = np.outer(counts, counts) - np.diag(counts)
    return np.divide(totals, pairs, out=np.full(totals.shape, np.nan), where=pairs > 0)


def bootstrap_within_ci(
    sim: np.ndarray, members: np.ndarray, rng: np.random.Generator, n_boot: int,
    expected: float | np.ndarray = 0.0, level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI over members of the within-set mean of (similarity − ``expected``), vectorised.

    ``expected`` is the null's mean (a number) or, for a stratified null, each
    pair's own null expectation (an items × items matrix, see
    ``stratum_pair_means``): a resample then carries its own composition's null
    mean, so the CI reflects clustering, not which strata the resample drew.
    A resample drawing one member only has no pair and is skipped: with
    ``scipy.stats.bootstrap`` that single NaN would turn the whole CI into NaN
    (for a 5-member set, most runs of 1000 resamples contain one).
    """
    members = np.asarray(members)
    if members.size < 2:
        return (np.nan, np.nan)
    draws = members[rng.integers(0, members.size, size=(n_boot, members.size))]
    values = within_mean_distinct_rows(sim - expected, draws)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (np.nan, np.nan)
    tail = (1 - level) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return float(lo), float(hi)


def set_clustering_vectorised(
    sim: np.ndarray,
    members: np.ndarray,
    rng: np.random.Generator,
    n_null: int,
    n_boot: int,
    pool: np.ndarray | None = None,
    member_strata: Sequence[int] | np.ndarray | None = None,
    pool_strata: np.ndarray | None = None,
) -> SetClustering:
    """``set_clustering`` with a vectorised, NaN-safe bootstrap CI (``bootstrap_within_ci``); with strata,
    each resample is compared with its own composition's null expectation (``stratum_pair_means``)."""
    members = np.asarray(members)
    pool = np.arange(sim.shape[0]) if pool is None else np.asarray(pool)
    observed = float(within_mean(sim, members[None, :])[0])
    wanted = None if member_strata is None else np.asarray(member_strata, dtype=int).tolist()
    null = within_mean(sim, random_sets(rng, pool, members.size, n_null, wanted, pool_strata))
    test = compare_to_null(observed, null)
    block = sim[np.ix_(members, members)]
    expected: float | np.ndarray = test.null_mean
    if wanted is not None and pool_strata is not None:
        pair_means = stratum_pair_means(sim[np.ix_(pool, pool)], np.asarray(pool_strata))
        expected = pair_means[np.ix_(wanted, wanted)]
    ci = bootstrap_within_ci(block, np.arange(members.size), rng, n_boot, expected=expected)
    return SetClustering(observed, null, test, ci)


def bootstrap_mean_ci(
    values: np.ndarray, rng: np.random.Generator, n_boot: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over units (``scipy.stats.bootstrap``, vectorised)."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return (np.nan, np.nan)
    res = stats.bootstrap((values,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                          vectorized=True, random_state=rng)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """``mean(x) − mean(y)`` along ``axis`` (vectorised statistic for scipy's permutation test and bootstrap)."""
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def bootstrap_difference_ci(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_boot: int
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(x) − mean(y)``, each group resampled on its own."""
    res = stats.bootstrap((x, y), mean_difference, vectorized=True, n_resamples=n_boot, method="percentile",
                          random_state=rng)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def matched_bins(magnitude: np.ndarray, members: np.ndarray, max_bins: int, ratio: float) -> np.ndarray | None:
    """Quantile bins of ‖ΔY‖, as many as possible (≤ ``max_bins``, ≥ 2) with no bin crowded by the set."""
    for bins in range(max_bins, 1, -1):
        strata = quantile_strata(magnitude, bins)
        wanted = np.bincount(strata[members], minlength=bins)
        if np.all(np.bincount(strata, minlength=bins) >= ratio * wanted):
            return strata
    return None
