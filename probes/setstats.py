"""Shared set statistics on similarity matrices: within-set mean similarity, its null and CI.

The unit is the set member (a knockdown): nulls draw whole random sets of the
same size, and CIs resample members, never pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from hypocheck.stats import NullComparison, bootstrap_ci, compare_to_null, random_sets

from .kinds import unit_rows  # one row normalisation, also the routing selection's (backend contract)

CHUNK_ELEMENTS = 4_000_000


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


def bootstrap_within_ci(
    sim: np.ndarray, members: np.ndarray, rng: np.random.Generator, n_boot: int,
    expected: float | np.ndarray = 0.0, level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI over members of the within-set mean of (similarity − ``expected``), vectorised.

    ``expected`` is the null's mean (a number) or, for a null matched member by
    member, each pair's own null expectation (an items × items matrix, see
    ``slot_pair_means``): a resample then carries its own composition's null
    mean, so the CI reflects clustering, not which magnitudes the resample drew.
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
    null_sets: np.ndarray | None = None,
) -> SetClustering:
    """``set_clustering`` with a vectorised, NaN-safe bootstrap CI (``bootstrap_within_ci``).

    Without ``null_sets`` the null is ``n_null`` uniformly drawn sets of the same size; with them (e.g.
    ``magnitude_matched_sets``) it is those sets, and each resample is compared with its own composition's
    null expectation (``slot_pair_means``: pair *i, j* of members against null members *i, j*).
    """
    members = np.asarray(members)
    observed = float(within_mean(sim, members[None, :])[0])
    matched = null_sets is not None
    if null_sets is None:
        null_sets = random_sets(rng, np.arange(sim.shape[0]), members.size, n_null)
    null = within_mean(sim, null_sets)
    test = compare_to_null(observed, null)
    block = sim[np.ix_(members, members)]
    expected: float | np.ndarray = slot_pair_means(sim, null_sets) if matched else test.null_mean
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


def magnitude_windows(magnitude: np.ndarray, members: np.ndarray, length: int) -> np.ndarray:
    """Per set member, knockdowns by distance from it in the ‖ΔY‖ ranking: itself, then one rank below and one
    above, two below and two above, … (the ranks that exist), the first ``length`` of them (an ``(m, length)``
    index array; ``length`` ≤ the number of knockdowns). Ties in ‖ΔY‖ are ranked by index."""
    magnitude = np.asarray(magnitude, dtype=float)
    members = np.asarray(members, dtype=int)
    n = magnitude.size
    order = np.argsort(magnitude, kind="stable")
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    steps = np.arange(1, n)
    offsets = np.concatenate([[0], np.stack([-steps, steps], axis=1).ravel()])  # 0, −1, +1, −2, +2, …
    ranks = rank[members][:, None] + offsets[None, :]
    valid = (ranks >= 0) & (ranks < n)
    first = np.argsort(~valid, axis=1, kind="stable")[:, :length]  # the valid ones, in offset order
    return order[np.take_along_axis(ranks, first, axis=1)]


def null_candidates(n: int, members: np.ndarray, excluded: np.ndarray | None) -> np.ndarray:
    """The knockdowns a matched null may draw from: all ``n`` but the ``excluded`` ones; the set's own members
    always stay (an index array, ascending)."""
    if excluded is None or np.size(excluded) == 0:
        return np.arange(n)
    keep = np.ones(n, dtype=bool)
    keep[np.asarray(excluded, dtype=int)] = False
    keep[np.asarray(members, dtype=int)] = True
    return np.flatnonzero(keep)


def magnitude_matched_sets(
    rng: np.random.Generator, magnitude: np.ndarray, members: np.ndarray, n_sets: int, neighbours: int,
    excluded: np.ndarray | None = None,
) -> np.ndarray | None:
    """``n_sets`` null sets matched member by member for effect magnitude (an ``(n_sets, m)`` index array).

    Null member *i* is drawn uniformly from a window of the ‖ΔY‖ ranking centred on set member *i*: the member
    and the ``neighbours`` knockdowns on either side of it, fewer near the ends of the ranking but always as
    many below as above, so a null member is on average exactly as strong as its set member (the weakest
    knockdown is matched with itself). The knockdown is the unit and a null set holds ``m`` distinct
    knockdowns: members are filled in a random order per draw, and a window knockdown that the null set
    already holds is passed over for the next nearest in rank. Unlike quantile bins there is no bin edge: a
    member at the low end of a bin is matched with knockdowns as weak as itself, not with the whole bin.

    The ranking holds the candidates only (``null_candidates``): every knockdown but the ``excluded`` ones
    (members of related gene sets, which share the set's program and would carry it into the null), the set's
    own members always included: under the null the set's labels are exchangeable with those of knockdowns of
    the same magnitude, so the observed set is one this null can draw. ``None`` when there are fewer than
    ``2·neighbours + m`` candidates.
    """
    members = np.asarray(members, dtype=int)
    magnitude = np.asarray(magnitude, dtype=float)
    candidates = null_candidates(magnitude.size, members, excluded)
    position = np.searchsorted(candidates, members)  # each member's place among the candidates
    sets = _window_sets(rng, magnitude[candidates], position, n_sets, neighbours)
    return None if sets is None else candidates[sets]


def _window_sets(
    rng: np.random.Generator, magnitude: np.ndarray, members: np.ndarray, n_sets: int, neighbours: int
) -> np.ndarray | None:
    """``magnitude_matched_sets`` over all of ``magnitude`` (no knockdown excluded)."""
    m, n = members.size, magnitude.size
    if n < 2 * neighbours + m:
        return None
    order = np.argsort(magnitude, kind="stable")
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    half = np.minimum(neighbours, np.minimum(rank[members], n - 1 - rank[members]))
    width = 2 * half + 1  # per member: its symmetric window
    windows = magnitude_windows(magnitude, members, int(width.max()) + m - 1)  # ≤ m − 1 taken at its turn
    out = np.empty((n_sets, m), dtype=int)
    taken = np.zeros((n_sets, n), dtype=bool)
    rows = np.arange(n_sets)
    order_of_slots = np.argsort(rng.random((n_sets, m)), axis=1)
    picks = np.floor(rng.random((n_sets, m)) * width[None, :]).astype(int) + 1  # the j-th free, j in 1..width
    for step in range(m):
        slot = order_of_slots[:, step]
        candidates = windows[slot]  # (n_sets, length), nearest in rank first
        free = ~taken[rows[:, None], candidates]
        position = np.argmax(np.cumsum(free, axis=1) >= picks[rows, slot][:, None], axis=1)
        chosen = candidates[rows, position]
        out[rows, slot] = chosen
        taken[rows, chosen] = True
    return out


def unmatched_members(
    magnitude: np.ndarray, members: np.ndarray, neighbours: int, excluded: np.ndarray | None = None
) -> int:
    """How many set members have no exchangeable knockdown: the ``2·neighbours`` candidates nearest to the member
    in the ‖ΔY‖ ranking (``null_candidates``; nearest in rank first, below before above) are all members of the
    set too. Such a member's null slot can only be filled with the set's own members."""
    members = np.asarray(members, dtype=int)
    magnitude = np.asarray(magnitude, dtype=float)
    candidates = null_candidates(magnitude.size, members, excluded)
    length = min(2 * neighbours + 1, candidates.size)
    if members.size == 0 or length < 2:
        return int(members.size)
    position = np.searchsorted(candidates, members)
    nearest = magnitude_windows(magnitude[candidates], position, length)[:, 1:]  # without the member itself
    return int(np.isin(nearest, position).all(axis=1).sum())


MAX_UNMATCHED = 0.5
"""Default share of set members without an exchangeable knockdown (``unmatched_members``) above which the
matched null cannot be drawn: most of its slots could only be filled with the set's own members, so the null
would be the set itself and no clustering could be told from magnitude."""


class MatchedNullParams(BaseModel):
    """Parameters of the magnitude-matched null, shared by the clustering and purity probes."""

    model_config = ConfigDict(extra="forbid")
    match_neighbours: int = Field(
        2, ge=1,
        description="Matched null: null member i is drawn from set member i and this many knockdowns on either "
        "side of it in the ‖ΔY‖ ranking (fewer near the ends, as many below as above), skipping knockdowns the "
        "null set already holds. The ranking holds the candidates: every knockdown but members of the gene sets "
        "the null excludes (`inputs: {null_excludes: …}`), the set's own members always included.",
    )
    max_unmatched: float = Field(
        MAX_UNMATCHED, ge=0, le=1,
        description="Matched null: a member is unmatched when the 2·match_neighbours candidates nearest to it in "
        "the ‖ΔY‖ ranking are all members of the set; when more than this share of members are, the set fills "
        "its own magnitude band, no exchangeable knockdowns exist and the case is inconclusive.",
    )


@dataclass(frozen=True)
class MatchedDraw:
    """The matched null sets of one set, or why there are none; how many candidates and unmatched members."""

    sets: np.ndarray | None
    reason: str | None
    candidates: int
    unmatched: int


def draw_matched_null(
    rng: np.random.Generator, magnitude: np.ndarray, members: np.ndarray, n_sets: int, params: MatchedNullParams,
    excluded: np.ndarray | None = None,
) -> MatchedDraw:
    """The magnitude-matched null sets over the candidates (``magnitude_matched_sets``), or the reason the case
    is inconclusive: the set is too large for the windows, or more than ``params.max_unmatched`` of its
    members have no exchangeable knockdown (``unmatched_members``)."""
    members = np.asarray(members, dtype=int)
    magnitude = np.asarray(magnitude, dtype=float)
    k = params.match_neighbours
    n_candidates = null_candidates(magnitude.size, members, excluded).size
    unmatched = unmatched_members(magnitude, members, k, excluded)
    left_out = magnitude.size - n_candidates
    among = (f"{n_candidates} candidate knockdowns ({left_out} members of other gene sets left out)" if left_out
             else f"{n_candidates} knockdowns")
    if n_candidates < 2 * k + members.size:
        reason = (f"the set ({members.size} members among {among}) is too large to draw magnitude-matched null "
                  f"sets within {k} ranks of each member")
        return MatchedDraw(None, reason, n_candidates, unmatched)
    if members.size and unmatched > params.max_unmatched * members.size:
        reason = (f"no exchangeable knockdowns for the magnitude-matched null: for {unmatched} of {members.size} "
                  f"members the {2 * k} knockdowns nearest in ‖ΔY‖ among {among} are all members of the set "
                  f"(more than max_unmatched = {params.max_unmatched:g} of them): the set fills its own magnitude "
                  f"band, so its clustering cannot be told from its magnitude"
                  + ("; if the gene sets left out are not of this set's program, let the null draw them "
                     "(inputs: null_excludes: related, or a list of sets)" if left_out else ""))
        return MatchedDraw(None, reason, n_candidates, unmatched)
    sets = magnitude_matched_sets(rng, magnitude, members, n_sets, k, excluded)
    return MatchedDraw(sets, None, n_candidates, unmatched)


def slot_pair_means(sim: np.ndarray, null_sets: np.ndarray) -> np.ndarray:
    """Mean similarity of null members *i* and *j* over the null sets (an ``m × m`` matrix, diagonal NaN):
    each pair of set members' own expectation under a member-by-member matched null."""
    null_sets = np.atleast_2d(null_sets)
    n_sets, m = null_sets.shape
    total = np.zeros((m, m))
    step = max(1, CHUNK_ELEMENTS // max(1, m * m))
    for start in range(0, n_sets, step):
        block = null_sets[start : start + step]
        total += sim[block[:, :, None], block[:, None, :]].sum(axis=0)
    out = total / n_sets
    np.fill_diagonal(out, np.nan)
    return out


MATCHED_NULL = "magnitude-matched null (random sets matched member by member for ‖ΔY‖)"
"""How reports name the magnitude-matched null of the set-clustering and purity probes."""
