"""Routing analysis, the parts before the tests: which knockdowns enter it (the top of each ΔY cluster by ‖ΔY‖,
or all), the input-proximity matrix the partial Mantel test controls for, and the same- vs different-cluster
Jacobian statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .kinds import routing_clusters, routing_rows, ward_labels
from .matrixstats import (
    adjusted_rand_rows,
    bootstrap_draw_counts,
    cosine_from_gram,
    gram_embedding,
    percentile_ci,
    permuted_dots,
    upper_p,
    weighted_quadratic,
)

if TYPE_CHECKING:
    from .routing import RoutingParams


# ---------------------------------------------------------------- selection


@dataclass(frozen=True)
class RoutingSelection:
    """The knockdowns a routing analysis uses, ordered by ΔY cluster then by decreasing ‖ΔY‖."""

    index: np.ndarray  # rows of the inputs
    clusters: np.ndarray  # ΔY Ward cluster of each selected KD (clustering over all KDs)
    magnitude: np.ndarray  # ‖ΔY‖ of each selected KD
    jacobian_similarity: np.ndarray  # selected × selected Jacobian cosine
    delta_y_similarity: np.ndarray  # selected × selected ΔY cosine
    gram: np.ndarray  # selected × selected inner-product Gram
    n_zero_norm: int
    n_clusters: int
    proximity: np.ndarray  # selected × selected −‖r_a − r_b‖ of the pert representations


def proximity_matrix(pert_repr: np.ndarray) -> np.ndarray:
    """``−‖r_a − r_b‖`` for every pair of pert representations (rows of ``pert_repr``): input proximity."""
    reps = np.asarray(pert_repr, dtype=np.float64)
    sq = np.sum(reps**2, axis=1)
    dist2 = np.clip(sq[:, None] + sq[None, :] - 2 * reps @ reps.T, 0.0, None)
    np.fill_diagonal(dist2, 0.0)
    return -np.sqrt(dist2)


def select_routing(
    delta_y: np.ndarray, jacobian_gram: np.ndarray, names: Sequence[str], params: RoutingParams,
    pert_repr: np.ndarray, gram_rows: np.ndarray | None = None,
) -> RoutingSelection:
    """Cluster ΔY (Ward, cosine) over all KDs; drop KDs with a zero-norm Jacobian; select ('top' or 'all').

    ``gram_rows``: the knockdowns (rows of ``delta_y``) the Gram covers, in its order; ``None``: all of them.
    A Gram over fewer rows must cover every knockdown the selection takes; ``n_zero_norm`` then counts the
    zero Jacobians among the covered rows.
    """
    delta_y = np.asarray(delta_y, dtype=np.float64)
    gram = np.asarray(jacobian_gram, dtype=np.float64)
    reps = np.asarray(pert_repr, dtype=np.float64)
    n = delta_y.shape[0] if delta_y.ndim == 2 else -1
    rows = np.arange(max(n, 0)) if gram_rows is None else np.asarray(gram_rows, dtype=int)
    if n < 0 or gram.shape != (rows.size, rows.size):
        raise ValueError(f"delta_y {delta_y.shape} and jacobian_gram {gram.shape} do not describe the same KDs"
                         + ("" if gram_rows is None else f" (the Gram covers {rows.size} rows)"))
    if rows.size and (rows.min() < 0 or rows.max() >= n or np.unique(rows).size != rows.size):
        raise ValueError(f"gram_rows must be distinct rows of delta_y (0 … {n - 1})")
    if reps.ndim != 2 or reps.shape[0] != n:
        raise ValueError(f"pert_repr {reps.shape} does not hold one representation per knockdown ({n})")
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} knockdowns")
    if not np.all(np.isfinite(delta_y)):
        raise ValueError("delta_y holds non-finite entries")
    if not np.all(np.isfinite(reps)):
        raise ValueError("pert_repr holds non-finite entries")
    jac_sim, zero_covered = cosine_from_gram(gram)
    unit, clusters, magnitude = routing_clusters(delta_y, params.n_clusters)
    zero = np.zeros(n, dtype=bool)
    zero[rows[zero_covered]] = True
    index = routing_rows(clusters, magnitude, zero, params.selection, params.top_per_cluster)
    position = np.full(n, -1)
    position[rows] = np.arange(rows.size)
    missing = index[position[index] < 0]
    if missing.size:
        raise ValueError(f"the Jacobian Gram covers {rows.size} knockdowns, but the selection takes {missing.size} "
                         f"it does not cover (first: {names[int(missing[0])]})")
    block = np.ix_(position[index], position[index])
    return RoutingSelection(
        index=index, clusters=clusters[index], magnitude=magnitude[index], jacobian_similarity=jac_sim[block],
        delta_y_similarity=(unit @ unit.T)[np.ix_(index, index)], gram=gram[block], n_zero_norm=int(zero_covered.sum()),
        n_clusters=int(np.unique(clusters).size), proximity=proximity_matrix(reps[index]),
    )


# ---------------------------------------------------------------- cluster statistics


@dataclass(frozen=True)
class ClusterStats:
    """Same- vs different-cluster Jacobian similarity, its permutation p and bootstrap CI; ARI and its p."""

    same: float
    diff: float
    ratio: float
    p_ratio: float
    ratio_ci: tuple[float, float]
    jacobian_clusters: np.ndarray
    ari: float
    p_ari: float


def cluster_stats(
    jac_sim: np.ndarray, clusters: np.ndarray, n_clusters: int, rng: np.random.Generator, params: RoutingParams,
) -> ClusterStats:
    """Same/different-cluster means over pairs of distinct KDs; label-permutation p for the ratio and the ARI.

    Permuting cluster labels keeps the cluster sizes, so the number of
    same-cluster pairs and the total similarity are fixed: the same-cluster mean
    is the test statistic, equivalent to same − different (and to the ratio when
    the total is positive).
    """
    n = jac_sim.shape[0]
    nan = float("nan")
    same = clusters[:, None] == clusters[None, :]
    n_same, n_pairs = (same.sum() - n) / 2, n * (n - 1) / 2
    jac_clusters = ward_labels(gram_embedding(jac_sim), n_clusters)
    from sklearn.metrics import adjusted_rand_score  # imported here: scikit-learn is slow to import

    ari = float(adjusted_rand_score(clusters, jac_clusters))
    perms = np.argsort(rng.random((params.permutations, n)), axis=1)
    p_ari = upper_p(ari, adjusted_rand_rows(jac_clusters[perms], clusters))
    if n_same == 0 or n_same == n_pairs:
        return ClusterStats(nan, nan, nan, nan, (nan, nan), jac_clusters, ari, p_ari)
    off = jac_sim - np.diag(np.diag(jac_sim))
    mask_same = same.astype(float) - np.eye(n)  # ordered pairs of distinct KDs in one cluster
    total = off.sum() / 2
    same_mean = float(np.sum(off * mask_same) / (2 * n_same))
    diff_mean = float((total - same_mean * n_same) / (n_pairs - n_same))
    p_ratio = upper_p(same_mean, permuted_dots(off, mask_same, perms) / (2 * n_same))
    # bootstrap over KDs: pair (i, j) of different KDs enters c_i c_j times → quadratic forms
    counts = bootstrap_draw_counts(rng, n, params.bootstrap)
    mask_diff = (~same).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio_draws = ((weighted_quadratic(counts, off * mask_same) / weighted_quadratic(counts, mask_same))
                       / (weighted_quadratic(counts, off * mask_diff) / weighted_quadratic(counts, mask_diff)))
    ratio = same_mean / diff_mean if diff_mean != 0 else nan
    return ClusterStats(same_mean, diff_mean, ratio, p_ratio, percentile_ci(ratio_draws), jac_clusters, ari, p_ari)
