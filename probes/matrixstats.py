"""Statistics on similarity matrices, with the knockdown as the unit: Mantel permutation tests, the
leave-one-knockdown-out jackknife (with its pair-level correction) and the knockdown bootstrap of
correlations between upper triangles, Fisher-z and normal-difference CIs, ARI (Ward clustering is
``kinds.ward_labels``: the routing selection's clustering is part of the backend contract).

Used by the routing probes (NB05–NB10) and their calibration. Pure numpy/scipy, vectorised over
permutations, bootstrap draws and leave-outs in chunks of about ``CHUNK_ELEMENTS`` numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from hypocheck.progress import stage

CHUNK_ELEMENTS = 4_000_000
LEVEL = 0.95


# ---------------------------------------------------------------- similarity and clustering helpers


def cosine_from_gram(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity from an inner-product Gram, and the mask of zero-norm rows (their similarity is 0)."""
    gram = np.asarray(gram, dtype=np.float64)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"the Jacobian Gram must be square; got shape {gram.shape}")
    if not np.all(np.isfinite(gram)):
        raise ValueError("the Jacobian Gram holds non-finite entries")
    diag = np.diag(gram).copy()
    zero = ~(diag > 0)
    norms = np.sqrt(np.where(zero, 1.0, diag))
    sim = gram / norms[:, None] / norms[None, :]
    sim[zero, :] = 0.0
    sim[:, zero] = 0.0
    sim = np.clip((sim + sim.T) / 2, -1.0, 1.0)
    return sim, zero


def gram_embedding(sim: np.ndarray) -> np.ndarray:
    """Rows whose inner products are ``sim`` (PSD, clipped at 0): equal to the unit rows up to a rotation, so
    their squared distances are ``2(1 − cos)`` and Ward on them is Ward on cosine distance."""
    values, vectors = np.linalg.eigh((sim + sim.T) / 2)
    return vectors * np.sqrt(np.clip(values, 0.0, None))[None, :]


def upper(matrix: np.ndarray) -> np.ndarray:
    """The strict upper triangle of a square matrix, row by row."""
    return matrix[np.triu_indices(matrix.shape[0], 1)]


def svd_share(gram: np.ndarray, components: int) -> float:
    """Share of the top ``components`` squared singular values of the stacked (flattened) matrices whose inner
    Gram is ``gram``: its top eigenvalues over its trace (exact without holding the matrices)."""
    values = np.clip(np.linalg.eigvalsh((gram + gram.T) / 2), 0.0, None)[::-1]
    total = float(values.sum())
    return float(values[:components].sum() / total) if total > 0 else float("nan")


# ---------------------------------------------------------------- permutation, bootstrap and jackknife engines


def _symmetric_from_upper(values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, n))
    i, j = np.triu_indices(n, 1)
    out[i, j] = values
    out[j, i] = values
    return out


def _standardised(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean()
    norm = np.sqrt(np.sum(centred**2))
    return centred / norm if norm > 0 else np.full_like(values, np.nan)


def permuted_dots(a: np.ndarray, b: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """``Σ_ij a_k[π_i, π_j] · b_k[i, j]`` for every permutation row ``π`` of ``perms`` and every pair of
    matrices ``(a_k, b_k)`` (``a``, ``b``: ``(K, n, n)``; 2-d: one pair) — ``(P, K)`` (``(P,)`` for 2-d).

    In chunks of permutations; one flat index array serves all ``K`` matrices, and each sum is a BLAS
    matrix-vector product."""
    flat = a.ndim == 2
    a3, b3 = (a[None], b[None]) if flat else (a, b)
    n = a3.shape[1]
    a_flat, b_flat = a3.reshape(a3.shape[0], -1), b3.reshape(b3.shape[0], -1)
    out = np.empty((perms.shape[0], a3.shape[0]))
    step = max(1, CHUNK_ELEMENTS // max(1, n * n))
    with stage("permutations", total=int(perms.shape[0])) as shown:
        for start in range(0, perms.shape[0], step):
            block = perms[start : start + step]
            index = (block[:, :, None] * n + block[:, None, :]).reshape(block.shape[0], -1)
            for k in range(a3.shape[0]):
                out[start : start + step, k] = a_flat[k].take(index) @ b_flat[k]
            shown.update(block.shape[0])
    return out[:, 0] if flat else out


def upper_p(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p, (1 + #null ≥ observed) / (n + 1), with a relative float tolerance."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or null.size == 0:
        return float("nan")
    tol = 1e-10 * max(1.0, abs(observed))
    return float((1 + np.count_nonzero(null >= observed - tol)) / (null.size + 1))


@dataclass(frozen=True)
class Mantel:
    """Correlations of two similarity matrices' upper triangles and their one-sided Mantel p."""

    pearson: float
    spearman: float
    p_pearson: float
    p_spearman: float
    null_pearson: np.ndarray  # Pearson r under the permutations (empty when undefined)


def mantel(x_sim: np.ndarray, y_sim: np.ndarray, rng: np.random.Generator, permutations: int) -> Mantel:
    """Pearson and Spearman r of the upper triangles; Mantel null: permute the knockdown labels of ``x_sim``.

    The multiset of upper-triangle values (hence their mean, sd and ranks) is
    unchanged by a relabelling, so each null r is one dot product of
    standardised (rank) matrices. Spearman ranks are averaged over ties.
    """
    n = x_sim.shape[0]
    x, y = upper(x_sim), upper(y_sim)
    if not (np.ptp(x) > 0 and np.ptp(y) > 0):  # a constant triangle: no correlation is defined
        return Mantel(float("nan"), float("nan"), float("nan"), float("nan"), np.array([]))
    pearson, spearman = float(stats.pearsonr(x, y).statistic), float(stats.spearmanr(x, y).statistic)
    if not (np.isfinite(pearson) and np.isfinite(spearman)):
        return Mantel(pearson, spearman, float("nan"), float("nan"), np.array([]))
    perms = np.argsort(rng.random((permutations, n)), axis=1)
    xs = np.stack([_symmetric_from_upper(_standardised(v), n) for v in (x, stats.rankdata(x))])
    ys = np.stack([_symmetric_from_upper(_standardised(v), n) for v in (y, stats.rankdata(y))])
    null = permuted_dots(xs, ys, perms) / 2
    observed = np.sum(xs * ys, axis=(1, 2)) / 2
    ps = [upper_p(float(observed[k]), null[:, k]) for k in range(2)]
    return Mantel(pearson, spearman, ps[0], ps[1], null[:, 0])


def weighted_quadratic(counts: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``c_b^T M c_b`` for every row ``c_b`` of ``counts``."""
    return np.einsum("bi,bi->b", counts @ matrix, counts)


def bootstrap_draw_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """``(n_boot, n)`` multiplicities of each knockdown in resamples of ``n`` draws with replacement."""
    draws = rng.integers(0, n, size=(n_boot, n))
    offsets = (np.arange(n_boot) * n)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _corr_from_moments(
    total: np.ndarray, sx: np.ndarray, sy: np.ndarray, sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray
) -> np.ndarray:
    """Pearson r from weighted sums (total weight, Σwx, Σwy, Σwx², Σwy², Σwxy); NaN where a variance is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / total
        var = (sxx - sx**2 / total) * (syy - sy**2 / total)
        return np.where(var > 0, cov / np.sqrt(np.where(var > 0, var, 1.0)), np.nan)


def _sorted_weighted_ranks(sorted_values: np.ndarray, w_sorted: np.ndarray) -> np.ndarray:
    """Average ranks, in sorted order, of values held ``w_sorted[b, i]`` times by resample ``b`` (ties averaged)."""
    new_group = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    if new_group.all():  # no ties among the original values: each value is its own group
        return np.cumsum(w_sorted, axis=1) - (w_sorted - 1) / 2
    starts = np.flatnonzero(new_group)
    group_w = np.add.reduceat(w_sorted, starts, axis=1)
    group_rank = np.cumsum(group_w, axis=1) - (group_w - 1) / 2
    return group_rank[:, np.cumsum(new_group) - 1]


def _count_weighted_spearman(x_sim: np.ndarray, y_sim: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Spearman r of the upper triangles for each row ``c`` of ``counts`` (``(B, n)`` knockdown multiplicities):
    pair ``(i, j)`` enters ``c_i · c_j`` times and each row ranks its own values (duplicates tie, average ranks),
    computed from the original sort order. O(B · n²), in chunks of rows."""
    x, y = upper(x_sim), upper(y_sim)
    i, j = np.triu_indices(x_sim.shape[0], 1)
    order_x, order_y = np.argsort(x, kind="stable"), np.argsort(y, kind="stable")
    x_sorted, y_sorted = x[order_x], y[order_y]
    ix, jx, iy, jy = i[order_x], j[order_x], i[order_y], j[order_y]
    y_to_x = np.argsort(order_y, kind="stable")[order_x]  # position in y order of each pair in x order
    out = np.empty(counts.shape[0])
    step = max(1, CHUNK_ELEMENTS // max(1, x.size))
    with stage("bootstrap draws (Spearman)", total=int(counts.shape[0])) as shown:
        for start in range(0, counts.shape[0], step):
            c = counts[start : start + step]
            wx = c[:, ix] * c[:, jx]
            rx = _sorted_weighted_ranks(x_sorted, wx)
            ry = _sorted_weighted_ranks(y_sorted, c[:, iy] * c[:, jy])[:, y_to_x]
            wrx, wry = wx * rx, wx * ry
            out[start : start + step] = _corr_from_moments(
                wx.sum(axis=1), wrx.sum(axis=1), wry.sum(axis=1), np.einsum("bm,bm->b", wrx, rx),
                np.einsum("bm,bm->b", wry, ry), np.einsum("bm,bm->b", wrx, ry))
            shown.update(c.shape[0])
    return out


def bootstrap_correlations(
    x_sim: np.ndarray, y_sim: np.ndarray, rng: np.random.Generator, n_boot: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap over knockdowns of the Pearson and Spearman r of the upper triangles.

    A resample draws ``n`` knockdowns with replacement; its pairs are the pairs
    of distinct draws that are different knockdowns, so original pair ``(i, j)``
    enters ``c_i · c_j`` times (``c``: draw counts). Pearson's weighted sums are
    quadratic forms ``cᵀ M c``; Spearman ranks each resample's own values.
    Kept for the calibration that compares it with the jackknife
    (``tools.calibration.routing``): its spread overstates the sampling spread.
    """
    n = x_sim.shape[0]
    counts = bootstrap_draw_counts(rng, n, n_boot)
    off = 1.0 - np.eye(n)
    xs, ys = x_sim * off, y_sim * off
    moments = [weighted_quadratic(counts, m) / 2 for m in (off, xs, ys, xs * xs, ys * ys, xs * ys)]
    return _corr_from_moments(*moments), _count_weighted_spearman(x_sim, y_sim, counts)


def jackknife_correlations(x_sim: np.ndarray, y_sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-knockdown-out Pearson and Spearman r of the upper triangles: ``(n,)`` each, entry ``m`` over
    the pairs of the other ``n − 1`` knockdowns.

    Pearson in O(n²): each pair sum (count, Σx, Σy, Σx², Σy², Σxy) over all
    pairs minus knockdown ``m``'s row of it. Spearman is exact: the remaining
    pairs are re-ranked for every leave-out (ties averaged), through the
    weighted-rank engine with weight 0 on the pairs of ``m`` (O(n³) in all).
    """
    n = x_sim.shape[0]
    off = 1.0 - np.eye(n)
    xs, ys = x_sim * off, y_sim * off
    sums = [(m.sum() / 2 - m.sum(axis=1)) for m in (off, xs, ys, xs * xs, ys * ys, xs * ys)]
    return _corr_from_moments(*sums), _count_weighted_spearman(x_sim, y_sim, off)


def pair_influence(x_sim: np.ndarray, y_sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical influence function of each pair (upper triangle, row by row) on the Pearson and the Spearman r
    of the upper triangles: ``r ≈ ρ + mean of the influences``.

    Pearson: ``x̃ỹ − r (x̃² + ỹ²) / 2`` (standardised values). Spearman, as
    the functional ``12 E[F(X) G(Y)] − 3``: ``12 [F(x) G(y) + E(1{x ≤ X} G(Y))
    + E(F(X) 1{y ≤ Y})]``, centred, with the empirical CDFs (``F(x)``: share of
    pairs with a value ≤ x).
    """
    x, y = upper(x_sim), upper(y_sim)
    with np.errstate(invalid="ignore", divide="ignore"):
        xt, yt = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
        r = float(np.mean(xt * yt))
        pearson = xt * yt - r * (xt**2 + yt**2) / 2
    size = x.size
    x_sorted, y_sorted = np.sort(x), np.sort(y)
    f = np.searchsorted(x_sorted, x, side="right") / size
    g = np.searchsorted(y_sorted, y, side="right") / size
    # Σ over pairs q with x_q ≥ x_p of G(y_q): a suffix sum in x order, entered at the start of p's tie group
    g_suffix = np.r_[np.cumsum(g[np.argsort(x, kind="stable")][::-1])[::-1], 0.0]
    f_suffix = np.r_[np.cumsum(f[np.argsort(y, kind="stable")][::-1])[::-1], 0.0]
    spearman = 12 * (f * g + (g_suffix[np.searchsorted(x_sorted, x, side="left")]
                              + f_suffix[np.searchsorted(y_sorted, y, side="left")]) / size)
    return pearson - pearson.mean(), spearman - spearman.mean()


def jackknife_se(leave_out: np.ndarray, influence: np.ndarray | None = None) -> float:
    """Standard error of a pairwise statistic from its ``K`` leave-one-knockdown-out values (NaN if any is
    undefined).

    Plain: ``V_J = (K − 1)/K · Σ (θ₍ₘ₎ − θ̄)²``. For a statistic that is a mean
    over the pairs of ``K`` knockdowns (a degree-2 U-statistic, to first
    order), ``Var = 4(K − 2)/(K(K − 1)) ζ₁ + 2/(K(K − 1)) ζ₂`` (ζ₁: variance of
    a knockdown's mean pair influence, ζ₂: of one pair's), while
    ``E V_J ≈ 4/(K − 2) ζ₁ + 4/(K − 2)² ζ₂``: the jackknife counts the
    pair-level term about twice, which inflates it where pair noise dominates.
    With the pairs' ``influence`` (``pair_influence``), ``ζ₂`` is estimated
    by its mean square, ``ζ₁`` solved from ``V_J`` (floored at 0) and ``Var``
    returned with the right coefficients (the corrected jackknife).
    """
    values = np.asarray(leave_out, dtype=float)
    k = values.size
    if k < 3 or not np.all(np.isfinite(values)):
        return float("nan")
    v_jack = (k - 1) / k * float(np.sum((values - values.mean()) ** 2))
    if influence is None:
        return float(np.sqrt(v_jack))
    zeta2 = float(np.mean(np.asarray(influence, dtype=float) ** 2))
    zeta1 = max(0.0, (v_jack - 4 * zeta2 / (k - 2) ** 2) * (k - 2) / 4)
    return float(np.sqrt((4 * (k - 2) * zeta1 + 2 * zeta2) / (k * (k - 1))))


def correlation_ses(x_sim: np.ndarray, y_sim: np.ndarray) -> tuple[float, float]:
    """Corrected-jackknife standard errors (``jackknife_se`` with ``pair_influence``) of the Pearson and the
    Spearman r of the upper triangles, the knockdown being the unit."""
    pearson, spearman = (jackknife_se(leave_out, influence) for leave_out, influence in
                         zip(jackknife_correlations(x_sim, y_sim), pair_influence(x_sim, y_sim), strict=True))
    return pearson, spearman


def fisher_ci(estimate: float, se: float, df: float = np.inf, level: float = LEVEL) -> tuple[float, float]:
    """CI of a correlation on the Fisher-z scale: ``tanh(atanh(r) ± q · se / (1 − r²))`` (delta-method SE of
    z; |r| clipped just below 1), ``q`` the t quantile with ``df`` degrees of freedom (K − 1 for a jackknife
    SE from K leave-outs, as in Tukey's jackknife interval; normal with the default)."""
    if not (np.isfinite(estimate) and np.isfinite(se)):
        return (float("nan"), float("nan"))
    r = float(np.clip(estimate, -1 + 1e-12, 1 - 1e-12))
    half = float(stats.t.ppf((1 + level) / 2, df)) * se / (1 - r**2)
    z = float(np.arctanh(r))
    return float(np.tanh(z - half)), float(np.tanh(z + half))


@dataclass(frozen=True)
class Difference:
    """A difference of two estimates from independent samples: SE, Welch degrees of freedom, CI, two-sided p."""

    estimate: float
    se: float
    df: float
    ci: tuple[float, float]
    p: float


def welch_difference(estimate_a: float, se_a: float, df_a: float, estimate_b: float, se_b: float, df_b: float,
                     level: float = LEVEL) -> Difference:
    """``a − b`` with ``SE = sqrt(SE_a² + SE_b²)`` (independent samples of knockdowns), Welch–Satterthwaite
    degrees of freedom from the two SEs' (``df_a``, ``df_b``), CI ``(a − b) ± q · SE`` and two-sided t p of
    ``a − b = 0``, on the scale of the estimates."""
    diff, se = estimate_a - estimate_b, float(np.hypot(se_a, se_b))
    if not (np.isfinite(diff) and np.isfinite(se)):
        return Difference(diff, se, float("nan"), (float("nan"), float("nan")), float("nan"))
    if se == 0:
        return Difference(diff, se, float("nan"), (diff, diff), 1.0 if diff == 0 else 0.0)
    spread = se_a**4 / df_a + se_b**4 / df_b
    df = float(se**4 / spread) if spread > 0 else float("inf")
    q = float(stats.t.ppf((1 + level) / 2, df))
    return Difference(diff, se, df, (diff - q * se, diff + q * se), float(2 * stats.t.sf(abs(diff) / se, df)))


def percentile_ci(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the finite draws (NaN, NaN without any)."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return (float("nan"), float("nan"))
    tail = (1 - level) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail])
    return float(lo), float(hi)


def adjusted_rand_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Adjusted Rand index of each row of ``a`` (``(B, n)`` labels) against the labelling ``b`` (``(n,)``)."""
    a = np.atleast_2d(a)
    _, a_codes = np.unique(a, return_inverse=True)
    a_codes = a_codes.reshape(a.shape)
    _, b_codes = np.unique(b, return_inverse=True)
    na, nb, n = int(a_codes.max()) + 1, int(b_codes.max()) + 1, a.shape[1]
    cells = na * nb
    flat = a_codes * nb + b_codes[None, :] + (np.arange(a.shape[0]) * cells)[:, None]
    table = np.bincount(flat.ravel(), minlength=a.shape[0] * cells).reshape(a.shape[0], na, nb).astype(float)
    comb = table * (table - 1) / 2
    index = comb.sum(axis=(1, 2))
    rows = table.sum(axis=2)
    cols = table.sum(axis=1)
    sum_a = (rows * (rows - 1) / 2).sum(axis=1)
    sum_b = (cols * (cols - 1) / 2).sum(axis=1)
    expected = sum_a * sum_b / (n * (n - 1) / 2)
    maximum = (sum_a + sum_b) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(maximum != expected, (index - expected) / (maximum - expected), 1.0)


# ---------------------------------------------------------------- partial Mantel: coherence beyond input proximity


def proximity_basis(proximity: np.ndarray, degree: int) -> np.ndarray:
    """``(pairs, degree + 1)`` polynomial basis ``1, z, …, z^degree`` of the standardised proximity ``z`` (one
    value per pair): what "explained by proximity" means (``degree`` 1: the linear partial Mantel)."""
    z = np.asarray(proximity, dtype=float)
    sd = z.std()
    zs = (z - z.mean()) / sd if sd > 0 else np.zeros_like(z)
    return np.column_stack([zs**k for k in range(degree + 1)])


def _partial_from_moments(moments: np.ndarray, p: int) -> np.ndarray:
    """Partial correlation of the last two columns given the first ``p`` (an intercept among them), from
    their cross-product matrices ``(..., p + 2, p + 2)``: the correlation of the two residual vectors."""
    a, b, c = moments[..., :p, :p], moments[..., :p, p:], moments[..., p:, p:]
    with np.errstate(invalid="ignore", divide="ignore"):
        resid = c - np.swapaxes(b, -1, -2) @ np.linalg.solve(a, b)
        var = resid[..., 0, 0] * resid[..., 1, 1]
        return np.where(var > 0, resid[..., 0, 1] / np.sqrt(np.where(var > 0, var, 1.0)), np.nan)


def _leave_one_out_partial(columns: np.ndarray, n: int, p: int) -> np.ndarray:
    """Leave-one-knockdown-out partial correlations (``(n,)``) of pair columns ``(pairs, p + 2)``: all pairs'
    cross products minus those of the pairs of knockdown ``m`` (exact for the regression refitted without
    them)."""
    q = columns.shape[1]
    full = np.zeros((n, n, q))
    i, j = np.triu_indices(n, 1)
    full[i, j] = columns
    full[j, i] = columns
    total = columns.T @ columns
    own = np.einsum("mjq,mjr->mqr", full, full)
    return _partial_from_moments(total[None] - own, p)


def _residuals(values: np.ndarray, basis: np.ndarray) -> np.ndarray:
    beta, *_ = np.linalg.lstsq(basis, values, rcond=None)
    return values - basis @ beta


@dataclass(frozen=True)
class PartialMantel:
    """Correlation of two similarity matrices beyond what a third (input proximity) explains, and its test.

    ``pearson`` / ``spearman``: correlation of the residuals of both upper
    triangles after regressing each on a polynomial in the proximity (Spearman:
    of the ranks, on the rank of proximity); ``p_pearson`` / ``p_spearman``:
    one-sided, KD labels of the first residual matrix permuted; ``se_*``:
    corrected leave-one-knockdown-out jackknife (the regression refitted at
    every leave-out; Spearman's ranks kept from the full sample);
    ``proximity_x`` / ``proximity_y``: Pearson r of each triangle with the
    proximity itself."""

    pearson: float
    spearman: float
    p_pearson: float
    p_spearman: float
    se_pearson: float
    se_spearman: float
    proximity_x: float
    proximity_y: float
    null_pearson: np.ndarray


def partial_mantel(
    x_sim: np.ndarray, y_sim: np.ndarray, proximity: np.ndarray, rng: np.random.Generator, permutations: int,
    degree: int = 3,
) -> PartialMantel:
    """Partial Mantel test of ``x_sim`` against ``y_sim`` controlling for ``proximity`` (all ``(n, n)``).

    Both upper triangles are residualised on ``proximity_basis`` (degree
    ``degree``); the statistic is the Pearson r of the residuals (Spearman: the
    same on ranks). The null permutes the knockdown labels of the residual
    matrix of ``x`` (Smouse, Long & Sokal 1986; Legendre 2000), so pairs sharing
    a knockdown stay dependent, as in ``mantel``. It tests the association that
    proximity does not explain: where similar inputs give similar Jacobians
    *and* similar ΔY, the plain Mantel r is positive without any routing, and
    this one is not. It assumes the proximity captures how both similarities
    depend on the inputs: structure shared beyond it (e.g. a Jacobian field
    that changes faster along some input directions than others) is not
    removed (``tools.calibration.routing`` reports its false-positive rate on
    smooth Jacobian fields).
    """
    n = x_sim.shape[0]
    nan = float("nan")
    x, y, z = upper(x_sim), upper(y_sim), upper(proximity)
    if not (np.ptp(x) > 0 and np.ptp(y) > 0 and np.ptp(z) > 0):
        return PartialMantel(nan, nan, nan, nan, nan, nan, nan, nan, np.array([]))
    prox_x, prox_y = float(np.corrcoef(x, z)[0, 1]), float(np.corrcoef(y, z)[0, 1])
    cols = {"pearson": (proximity_basis(z, degree), x, y),
            "spearman": (proximity_basis(stats.rankdata(z), degree), stats.rankdata(x), stats.rankdata(y))}
    estimates, ses, residual_mats = {}, {}, []
    for name, (basis, a, b) in cols.items():
        ra, rb = _residuals(a, basis), _residuals(b, basis)
        sa, sb = _standardised(ra), _standardised(rb)
        estimates[name] = float(np.sum(sa * sb)) if np.all(np.isfinite(sa) & np.isfinite(sb)) else nan
        xa, yb = _symmetric_from_upper(sa, n), _symmetric_from_upper(sb, n)
        residual_mats.append((xa, yb))
        leave_out = _leave_one_out_partial(np.column_stack([basis, a, b]), n, basis.shape[1])
        ses[name] = jackknife_se(leave_out, pair_influence(xa, yb)[0])
    if not all(np.isfinite(v) for v in estimates.values()):
        return PartialMantel(estimates["pearson"], estimates["spearman"], nan, nan, ses["pearson"],
                             ses["spearman"], prox_x, prox_y, np.array([]))
    perms = np.argsort(rng.random((permutations, n)), axis=1)
    xs = np.stack([m[0] for m in residual_mats])
    ys = np.stack([m[1] for m in residual_mats])
    null = permuted_dots(xs, ys, perms) / 2
    ps = [upper_p(estimates[name], null[:, k]) for k, name in enumerate(cols)]
    return PartialMantel(estimates["pearson"], estimates["spearman"], ps[0], ps[1], ses["pearson"], ses["spearman"],
                         prox_x, prox_y, null[:, 0])
