"""Statistics glue: seeds, size-matched random-set nulls, bootstrap CIs and BH adjustment.

The unit of replication is the member of a set (a knockdown or a gene), never a
pair: nulls draw whole random sets, CIs resample members.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .progress import stage


def derive_seed(base_seed: int, key: str) -> int:
    """A 32-bit seed from a base seed and a stable text key (a case id): order- and worker-independent."""
    digest = hashlib.sha256(f"{int(base_seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class NullComparison:
    """An observed statistic against a null sample: z-score and one-sided empirical p."""

    observed: float
    null_mean: float
    null_sd: float
    z: float
    p: float


def compare_to_null(observed: float, null: np.ndarray, alternative: str = "greater") -> NullComparison:
    """z = (obs − mean) / sd of the null; empirical p with the +1 correction, (1 + #≥obs) / (n + 1)."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if null.size < 2 or not np.isfinite(observed):
        return NullComparison(float(observed), np.nan, np.nan, np.nan, np.nan)
    mean, sd = float(null.mean()), float(null.std(ddof=1))
    z = (observed - mean) / sd if sd > 0 else (np.inf if observed > mean else (0.0 if observed == mean else -np.inf))
    if alternative == "greater":
        extreme = np.count_nonzero(null >= observed)
    elif alternative == "less":
        extreme = np.count_nonzero(null <= observed)
    else:
        extreme = np.count_nonzero(np.abs(null - mean) >= abs(observed - mean))
    p = (1 + extreme) / (null.size + 1)
    return NullComparison(float(observed), mean, sd, float(z), float(p))


def random_sets(
    rng: np.random.Generator,
    pool: np.ndarray,
    set_size: int,
    n_sets: int,
    member_strata: Sequence[int] | None = None,
    pool_strata: np.ndarray | None = None,
) -> np.ndarray:
    """``n_sets`` random sets of ``set_size`` distinct items of ``pool`` (an ``(n_sets, set_size)`` array).

    With strata (e.g. effect-magnitude quantile bins), member *i* of every null
    set is drawn from ``pool`` items in stratum ``member_strata[i]``, so null sets
    match the observed set's composition, not just its size.
    """
    pool = np.asarray(pool)
    if set_size > pool.size:
        raise ValueError(f"cannot draw sets of {set_size} from a pool of {pool.size}")
    if member_strata is None or pool_strata is None:
        keys = rng.random((n_sets, pool.size))
        return pool[np.argpartition(keys, set_size - 1, axis=1)[:, :set_size]]
    pool_strata = np.asarray(pool_strata)
    out = np.empty((n_sets, set_size), dtype=pool.dtype)
    wanted = np.asarray(member_strata)
    for stratum in np.unique(wanted):
        slots = np.flatnonzero(wanted == stratum)
        candidates = pool[pool_strata == stratum]
        if candidates.size < slots.size:
            raise ValueError(f"stratum {stratum} has {candidates.size} items for {slots.size} members")
        keys = rng.random((n_sets, candidates.size))
        out[:, slots] = candidates[np.argpartition(keys, slots.size - 1, axis=1)[:, : slots.size]]
    return out


def quantile_strata(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index (0 … n_bins−1) of each value by its quantile among ``values``."""
    from scipy import stats  # imported when used: scipy.stats is slow to import

    ranks = stats.rankdata(values, method="ordinal") - 1
    return (ranks * n_bins // len(values)).astype(int)


def bootstrap_ci(
    units: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    rng: np.random.Generator,
    n_resamples: int = 1000,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over resampled units (scipy.stats.bootstrap)."""
    units = np.asarray(units)
    if units.size < 2:
        return (np.nan, np.nan)
    from scipy import stats

    with stage("bootstrap resamples", total=n_resamples) as shown:

        def counted(sample: np.ndarray) -> float:  # one call per resample (vectorized=False)
            shown.update()
            return statistic(sample)

        res = stats.bootstrap(
            (units,), counted, n_resamples=n_resamples, confidence_level=level,
            method="percentile", vectorized=False, random_state=rng,
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bh_adjust(p_values: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (scipy's ``false_discovery_control``); NaN stays NaN."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        from scipy import stats

        out[finite] = stats.false_discovery_control(np.clip(p[finite], 0, 1), method="bh")
    return [float(v) for v in out]


def empirical_p_floor(null: np.ndarray) -> float:
    """The smallest p ``compare_to_null`` can give against ``null``: ``1/(n + 1)`` for its ``n`` finite draws
    (NaN with fewer than two, where it gives no p)."""
    null = np.asarray(null, dtype=float)
    n = int(np.count_nonzero(np.isfinite(null)))
    return 1.0 / (n + 1) if n >= 2 else float("nan")
