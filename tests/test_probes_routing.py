"""Known answers for NB05–NB10 routing: cosine from the Gram, upper-triangle correlations, Mantel and label
permutations, the partial Mantel test beyond input proximity, KD bootstrap, KD jackknife (plain and corrected),
Fisher-z and normal-difference CIs, Ward selection, ARI, SVD share, attainable p-values, the difference and the
stability probes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import adjusted_rand_score

from hypocheck.cases import expand
from hypocheck.decisions import judge
from hypocheck.plots import PlotInfo, render_all
from hypocheck.probes.kinds import ward_labels
from hypocheck.probes.matrixstats import (
    adjusted_rand_rows,
    bootstrap_correlations,
    correlation_ses,
    cosine_from_gram,
    fisher_ci,
    gram_embedding,
    jackknife_correlations,
    jackknife_se,
    mantel,
    pair_influence,
    partial_mantel,
    upper,
    welch_difference,
)
from hypocheck.probes.routing import (
    DifferenceParams,
    RoutingParams,
    StabilityParams,
    permutation_floor,
    routing_coherence,
    routing_coherence_difference,
    routing_stability,
)
from hypocheck.probes.routing_selection import proximity_matrix
from hypocheck.probes.setstats import unit_rows
from hypocheck.registry import get_probe
from hypocheck.schema import hypotheses_from_doc
from hypocheck.yamlsource import load_yaml

ROOT = Path(__file__).resolve().parents[1]
FAST = {"permutations": 199, "bootstrap": 200}


def clustered_world(seed: int, n_clusters: int = 4, per_cluster: int = 6, genes: int = 30, spread: float = 0.15):
    """ΔY in well-separated clusters (program + small noise, magnitudes spread), and the true labels."""
    rng = np.random.default_rng(seed)
    programs = rng.normal(size=(n_clusters, genes)) * 3
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    scale = rng.uniform(0.5, 3.0, size=labels.size)
    delta_y = (programs[labels] + spread * rng.normal(size=(labels.size, genes)) * 3) * scale[:, None]
    return delta_y, labels


def jacobians_like(delta_y: np.ndarray, rng: np.random.Generator, noise: float, hidden: int = 4) -> np.ndarray:
    """Explicit Jacobians (K, G, H) whose flattened rows are ΔY's unit direction ⊗ a shared vector, plus noise."""
    k, g = delta_y.shape
    shared = rng.normal(size=hidden)
    base = unit_rows(delta_y)[:, :, None] * shared[None, None, :]
    return base + noise * rng.normal(size=(k, g, hidden)) / math.sqrt(g * hidden)


def gram_of(jacobians: np.ndarray) -> np.ndarray:
    flat = jacobians.reshape(jacobians.shape[0], -1)
    return flat @ flat.T


def names(k: int) -> list[str]:
    return [f"kd{i}" for i in range(k)]


def unrelated_repr(k: int, seed: int = 99) -> np.ndarray:
    """Pert representations drawn independently of everything: proximity explains nothing."""
    return np.random.default_rng(seed).normal(size=(k, 5))


def run(delta_y, gram, seed=0, pert_repr=None, **kw):
    params = RoutingParams(**(FAST | kw))
    reps = unrelated_repr(delta_y.shape[0]) if pert_repr is None else pert_repr
    return routing_coherence(delta_y=delta_y, jacobian_gram=gram, names=names(delta_y.shape[0]), pert_repr=reps,
                             params=params, rng=np.random.default_rng(seed))


def test_registered_with_declared_metrics() -> None:
    spec = get_probe("routing_coherence")
    assert (spec.effect, spec.p, spec.axes) == ("partial_pearson", "p_partial", ("model", "cell_line"))
    assert spec.min_effect == 0.1
    assert {"pearson", "spearman", "p_spearman", "same_diff_ratio", "p_ratio", "ari", "p_ari", "svd_share",
            "n_zero_norm", "partial_pearson", "partial_spearman", "p_partial", "p_partial_spearman",
            "proximity_jacobian_r", "proximity_delta_r"} <= set(spec.metrics)
    diff = get_probe("routing_coherence_difference")
    assert (diff.effect, diff.p, diff.axes, diff.min_effect) == ("difference", "p_difference", (), None)
    assert {"partial_difference", "p_partial_difference", "partial_a", "partial_b"} <= set(diff.metrics)
    assert get_probe("routing_stability").effect == "agreement"
    with pytest.raises(Exception, match="extra"):
        RoutingParams(unknown=1)  # type: ignore[call-arg]


def test_cosine_from_gram_normalises_and_zeroes_null_rows() -> None:
    j = np.array([[3.0, 4.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-6.0, -8.0, 0.0]])
    sim, zero = cosine_from_gram(j @ j.T)
    np.testing.assert_array_equal(zero, [False, False, True, False])
    expected = np.array([[1, 0.8, 0, -1], [0.8, 1, 0, -0.8], [0, 0, 0, 0], [-1, -0.8, 0, 1]])
    np.testing.assert_allclose(sim, expected, atol=1e-12)


def test_gram_embedding_reproduces_cosine_distances() -> None:
    rng = np.random.default_rng(3)
    rows = unit_rows(rng.normal(size=(9, 20)))
    emb = gram_embedding(rows @ rows.T)
    d_emb = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    d_rows = ((rows[:, None] - rows[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d_emb, d_rows, atol=1e-10)
    assert adjusted_rand_score(ward_labels(emb, 3), ward_labels(rows, 3)) == 1.0


def test_correlations_equal_scipy_on_the_explicit_upper_triangles() -> None:
    rng = np.random.default_rng(0)
    delta_y, _ = clustered_world(1)
    jac = jacobians_like(delta_y, rng, noise=1.5)
    res = run(delta_y, gram_of(jac), selection="all", n_clusters=4, min_kds=5)
    flat = jac.reshape(jac.shape[0], -1)
    x = upper(unit_rows(flat) @ unit_rows(flat).T)
    y = upper(unit_rows(delta_y) @ unit_rows(delta_y).T)
    assert res.metrics["n_kds"] == delta_y.shape[0]
    assert res.metrics["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert res.metrics["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert 0.2 < res.metrics["pearson"] < 0.99  # noisy but related: a real test of the numbers above
    # the scatter arrays are the same two triangles (any KD order gives the same pairs)
    assert res.arrays["jacobian"].shape == res.arrays["delta_y"].shape == x.shape
    assert stats.pearsonr(res.arrays["jacobian"], res.arrays["delta_y"]).statistic == pytest.approx(
        res.metrics["pearson"], abs=1e-12)


def naive_mantel_p(x_sim, y_sim, perms, spearman=False):
    corr = stats.spearmanr if spearman else stats.pearsonr
    obs = corr(upper(x_sim), upper(y_sim)).statistic
    null = [corr(upper(x_sim[np.ix_(p, p)]), upper(y_sim)).statistic for p in perms]
    return (1 + sum(v >= obs - 1e-12 for v in null)) / (len(perms) + 1)


def test_mantel_p_matches_a_naive_permutation_loop() -> None:
    rng = np.random.default_rng(5)
    a = unit_rows(rng.normal(size=(10, 6)))
    b = unit_rows(a + 0.8 * rng.normal(size=a.shape))
    x_sim, y_sim = a @ a.T, b @ b.T
    res = mantel(x_sim, y_sim, np.random.default_rng(9), 300)
    perms = np.argsort(np.random.default_rng(9).random((300, 10)), axis=1)
    assert res.p_pearson == pytest.approx(naive_mantel_p(x_sim, y_sim, perms))
    assert res.p_spearman == pytest.approx(naive_mantel_p(x_sim, y_sim, perms, spearman=True))
    assert res.p_pearson < 0.2


def naive_bootstrap(x_sim, y_sim, draws):
    """Per resample: correlate the pairs of distinct draws that are different KDs (the definition)."""
    out_p, out_s = [], []
    for d in draws:
        a, b = np.triu_indices(d.size, 1)
        keep = d[a] != d[b]
        xs, ys = x_sim[d[a][keep], d[b][keep]], y_sim[d[a][keep], d[b][keep]]
        out_p.append(stats.pearsonr(xs, ys).statistic)
        out_s.append(stats.spearmanr(xs, ys).statistic)
    return np.array(out_p), np.array(out_s)


@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_matches_explicit_resamples(ties: bool) -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    x_sim, y_sim = unit_rows(a) @ unit_rows(a).T, unit_rows(a + b) @ unit_rows(a + b).T
    if ties:
        x_sim, y_sim = np.round(x_sim, 1), np.round(y_sim, 1)
    pearson, spearman = bootstrap_correlations(x_sim, y_sim, np.random.default_rng(4), 40)
    draws = np.random.default_rng(4).integers(0, 9, size=(40, 9))
    exp_p, exp_s = naive_bootstrap(x_sim, y_sim, draws)
    np.testing.assert_allclose(pearson, exp_p, atol=1e-10)
    np.testing.assert_allclose(spearman, exp_s, atol=1e-10)


def small_pair(ties: bool, n: int = 9, seed: int = 2):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))
    x_sim, y_sim = unit_rows(a) @ unit_rows(a).T, unit_rows(a + b) @ unit_rows(a + b).T
    return (np.round(x_sim, 1), np.round(y_sim, 1)) if ties else (x_sim, y_sim)


@pytest.mark.parametrize("ties", [False, True])
def test_jackknife_matches_explicit_leave_one_out_correlations(ties: bool) -> None:
    x_sim, y_sim = small_pair(ties)
    pearson, spearman = jackknife_correlations(x_sim, y_sim)
    exp_p, exp_s = [], []
    for m in range(9):
        keep = np.delete(np.arange(9), m)
        xs, ys = upper(x_sim[np.ix_(keep, keep)]), upper(y_sim[np.ix_(keep, keep)])
        exp_p.append(stats.pearsonr(xs, ys).statistic)
        exp_s.append(stats.spearmanr(xs, ys).statistic)
    np.testing.assert_allclose(pearson, exp_p, atol=1e-12)
    np.testing.assert_allclose(spearman, exp_s, atol=1e-12)


def test_jackknife_se_plain_and_corrected_by_hand() -> None:
    rng = np.random.default_rng(3)
    leave_out, influence = 0.3 + 0.05 * rng.normal(size=20), rng.normal(size=190)
    k = 20
    v_jack = (k - 1) / k * np.sum((leave_out - leave_out.mean()) ** 2)
    assert jackknife_se(leave_out) == pytest.approx(math.sqrt(v_jack))
    zeta2 = np.mean(influence**2)
    zeta1 = (v_jack - 4 * zeta2 / (k - 2) ** 2) * (k - 2) / 4
    assert zeta1 > 0  # the unfloored branch
    expected = math.sqrt((4 * (k - 2) * zeta1 + 2 * zeta2) / (k * (k - 1)))
    assert jackknife_se(leave_out, influence) == pytest.approx(expected)
    assert jackknife_se(leave_out, influence) < jackknife_se(leave_out)
    # all spread explained by pair noise → ζ1 floored at 0: the variance of a mean of P independent pairs
    assert jackknife_se(np.full(k, 0.3), influence) == pytest.approx(math.sqrt(2 * zeta2 / (k * (k - 1))))
    assert math.isnan(jackknife_se(np.r_[leave_out[:-1], np.nan]))


def test_pair_influence_matches_leave_one_pair_out() -> None:
    """r − r₍₋ₚ₎ ≈ influence_p / (P − 1) for every pair p: the empirical influence of the pair."""
    x_sim, y_sim = small_pair(False, n=12, seed=1)
    x, y = upper(x_sim), upper(y_sim)
    size = x.size
    influence = pair_influence(x_sim, y_sim)
    for corr, inf in zip((stats.pearsonr, stats.spearmanr), influence, strict=True):
        full = corr(x, y).statistic
        empirical = np.array([(size - 1) * (full - corr(np.delete(x, q), np.delete(y, q)).statistic)
                              for q in range(size)])
        assert np.corrcoef(inf, empirical)[0, 1] > 0.995
        assert np.mean(inf**2) == pytest.approx(np.mean(empirical**2), rel=0.1)
        assert abs(inf.mean()) < 1e-12


def test_fisher_and_normal_difference_intervals() -> None:
    lo, hi = fisher_ci(0.4, 0.05)
    half = 1.959963984540054 * 0.05 / (1 - 0.16)
    assert (lo, hi) == pytest.approx((math.tanh(math.atanh(0.4) - half), math.tanh(math.atanh(0.4) + half)))
    assert lo < 0.4 < hi and hi - 0.4 < 0.4 - lo  # skewed towards 0 on the r scale
    t_lo, t_hi = fisher_ci(0.4, 0.05, df=39)
    t_half = 2.022690920036761 * 0.05 / (1 - 0.16)
    assert (t_lo, t_hi) == pytest.approx((math.tanh(math.atanh(0.4) - t_half), math.tanh(math.atanh(0.4) + t_half)))
    assert fisher_ci(1.0, 0.0, df=20) == pytest.approx((1.0, 1.0))
    assert all(math.isnan(v) for v in fisher_ci(float("nan"), 0.1))
    diff = welch_difference(0.5, 0.03, 29, 0.4, 0.04, 39)
    df = 0.05**4 / (0.03**4 / 29 + 0.04**4 / 39)
    assert diff.estimate == pytest.approx(0.1) and diff.se == pytest.approx(0.05) and diff.df == pytest.approx(df)
    assert 29 < df < 29 + 39
    assert diff.p == pytest.approx(2 * stats.t.sf(2.0, df))
    q = stats.t.ppf(0.975, df)
    assert diff.ci == pytest.approx((0.1 - q * 0.05, 0.1 + q * 0.05))
    assert welch_difference(0.5, 0.03, np.inf, 0.4, 0.04, np.inf).p == pytest.approx(2 * stats.norm.sf(2.0))
    assert welch_difference(0.3, 0.0, 9, 0.3, 0.0, 9).p == 1.0 and welch_difference(0.3, 0.0, 9, 0.2, 0.0, 9).p == 0.0


def test_probe_cis_are_the_corrected_jackknife() -> None:
    delta_y, _ = clustered_world(13)
    jac = jacobians_like(delta_y, np.random.default_rng(7), noise=3.0)
    res = run(delta_y, gram_of(jac), selection="all", n_clusters=4, min_kds=5)
    flat = jac.reshape(jac.shape[0], -1)
    x_sim, y_sim = unit_rows(flat) @ unit_rows(flat).T, unit_rows(delta_y) @ unit_rows(delta_y).T
    se_p, se_s = correlation_ses(x_sim, y_sim)
    assert 0 < se_p < jackknife_se(jackknife_correlations(x_sim, y_sim)[0])
    assert res.cis["pearson"] == pytest.approx(fisher_ci(res.metrics["pearson"], se_p, df=23))
    assert res.cis["spearman"] == pytest.approx(fisher_ci(res.metrics["spearman"], se_s, df=23))
    other = run(delta_y, gram_of(jac), seed=5, selection="all", n_clusters=4, min_kds=5)
    assert other.cis["pearson"] == res.cis["pearson"]  # the jackknife draws nothing


def test_adjusted_rand_rows_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    b = rng.integers(0, 4, 30)
    a = rng.integers(0, 5, (6, 30))
    a[0] = b  # identical → 1
    a[1] = (b + 1) % 4  # relabelled → 1
    expected = [adjusted_rand_score(row, b) for row in a]
    np.testing.assert_allclose(adjusted_rand_rows(a, b), expected, atol=1e-12)
    assert expected[0] == expected[1] == 1.0


def test_planted_structure_is_found_and_clusterings_agree() -> None:
    delta_y, labels = clustered_world(2)
    unit = unit_rows(delta_y)
    gram = (unit @ unit.T) * np.outer(np.arange(1, 25), np.arange(1, 25))  # J-sim = ΔY-sim; norms differ
    res = run(delta_y, gram, selection="all", n_clusters=4, min_kds=5)
    assert res.metrics["pearson"] == pytest.approx(1.0, abs=1e-12)
    assert res.metrics["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert res.metrics["p_pearson"] == pytest.approx(1 / 200)
    assert res.metrics["ari"] == pytest.approx(1.0)
    assert res.metrics["p_ari"] == pytest.approx(1 / 200)
    assert adjusted_rand_score(res.tables["knockdowns"]["cluster"], labels[_order(res)]) == 1.0
    assert res.metrics["same_cluster_similarity"] - res.metrics["diff_cluster_similarity"] > 0.5
    assert res.metrics["p_ratio"] == pytest.approx(1 / 200)
    lo, hi = res.cis["pearson"]
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def _order(res) -> np.ndarray:
    return np.array([int(n[2:]) for n in res.tables["knockdowns"]["name"]])


def test_independent_jacobians_are_not_significant() -> None:
    delta_y, _ = clustered_world(3, n_clusters=4, per_cluster=8)
    rng = np.random.default_rng(11)
    jac = rng.normal(size=(delta_y.shape[0], 12))
    ps = [run(delta_y, jac @ jac.T, seed=s, selection="all", n_clusters=4, min_kds=5).metrics for s in range(3)]
    assert all(m["p_pearson"] > 0.05 for m in ps)
    assert abs(ps[0]["pearson"]) < 0.2
    assert ps[0]["p_ari"] > 0.05


def test_same_and_different_cluster_means_by_hand() -> None:
    delta_y, labels = clustered_world(4, n_clusters=3, per_cluster=4)
    rng = np.random.default_rng(6)
    jac = rng.normal(size=(12, 8))
    res = run(delta_y, jac @ jac.T, selection="all", n_clusters=3, min_kds=5)
    sim = unit_rows(jac) @ unit_rows(jac).T
    same = (labels[:, None] == labels[None]) & ~np.eye(12, dtype=bool)
    diff = labels[:, None] != labels[None]
    assert res.metrics["same_cluster_similarity"] == pytest.approx(sim[same].mean())
    assert res.metrics["diff_cluster_similarity"] == pytest.approx(sim[diff].mean())
    assert res.metrics["same_diff_ratio"] == pytest.approx(sim[same].mean() / sim[diff].mean())


def test_top_selection_keeps_the_largest_delta_y_per_cluster_ordered_by_cluster() -> None:
    delta_y, labels = clustered_world(5, n_clusters=3, per_cluster=6)
    rng = np.random.default_rng(7)
    jac = rng.normal(size=(18, 10))
    jac[0] = 0.0  # zero-norm Jacobian: excluded, counted
    res = run(delta_y, jac @ jac.T, selection="top", top_per_cluster=2, n_clusters=3, min_kds=5)
    norms = np.linalg.norm(delta_y, axis=1)
    expected = set()
    for c in range(3):
        members = [i for i in np.flatnonzero(labels == c) if i != 0]
        expected |= set(sorted(members, key=lambda i: -norms[i])[:2])
    table = res.tables["knockdowns"]
    assert set(_order(res)) == expected and res.metrics["n_kds"] == 6 and res.metrics["n_zero_norm"] == 1
    assert list(table["cluster"]) == sorted(table["cluster"])  # ordered by ΔY cluster
    for _, block in table.groupby("cluster"):
        assert list(block["delta_y_norm"]) == sorted(block["delta_y_norm"], reverse=True)
    assert res.arrays["similarity"].shape == (6, 6)
    np.testing.assert_array_equal(res.arrays["groups"], table["cluster"])


def test_a_gram_over_the_selection_alone_gives_the_full_grams_result() -> None:
    """The selection needs no Jacobian beyond which are zero: a Gram over the selected rows (and the zero one, in
    any order) gives every metric of the full Gram; a Gram that misses a selected knockdown is an error."""
    delta_y, _ = clustered_world(5, n_clusters=3, per_cluster=8)
    rng = np.random.default_rng(11)
    jac = rng.normal(size=(24, 10))
    jac[3] = 0.0
    gram = jac @ jac.T
    kw = {"selection": "top", "top_per_cluster": 3, "n_clusters": 3, "min_kds": 5}
    res = run(delta_y, gram, **kw)
    chosen = _order(res)
    rows = np.random.default_rng(0).permutation(np.append(chosen, 3))
    params = RoutingParams(**(FAST | kw))
    part = routing_coherence(delta_y=delta_y, jacobian_gram=gram[np.ix_(rows, rows)], names=names(24),
                             pert_repr=unrelated_repr(24), params=params, rng=np.random.default_rng(0),
                             gram_rows=rows)
    assert part.metrics.keys() == res.metrics.keys()
    for key, value in res.metrics.items():
        assert part.metrics[key] == pytest.approx(value, nan_ok=True, rel=1e-12, abs=1e-12), key
    assert part.metrics["n_zero_norm"] == 1 and part.metrics["n_kds"] == 9
    short = rows[rows != chosen[0]]
    with pytest.raises(ValueError, match="the selection takes 1 it does not cover"):
        routing_coherence(delta_y=delta_y, jacobian_gram=gram[np.ix_(short, short)], names=names(24),
                          pert_repr=unrelated_repr(24), params=params, rng=np.random.default_rng(0), gram_rows=short)


def test_svd_share_equals_numpy_svd_of_the_stacked_jacobians() -> None:
    rng = np.random.default_rng(8)
    delta_y, _ = clustered_world(6)
    jac = jacobians_like(delta_y, rng, noise=5.0, hidden=3)
    res = run(delta_y, gram_of(jac), selection="all", n_clusters=4, min_kds=5, svd_components=3)
    s = np.linalg.svd(jac.reshape(jac.shape[0], -1), compute_uv=False)
    assert res.metrics["svd_share"] == pytest.approx(np.sum(s[:3] ** 2) / np.sum(s**2), rel=1e-10)


def test_deterministic_under_a_seed_and_inconclusive_when_too_few() -> None:
    delta_y, _ = clustered_world(7)
    jac = np.random.default_rng(1).normal(size=(24, 6))
    first, second = (run(delta_y, jac @ jac.T, seed=3, n_clusters=4, top_per_cluster=4) for _ in range(2))
    assert dict(first.metrics) == dict(second.metrics) and dict(first.cis) == dict(second.cis)
    third = run(delta_y, jac @ jac.T, seed=4, n_clusters=4, top_per_cluster=4)
    assert dict(third.cis) != dict(first.cis)
    few = run(delta_y, jac @ jac.T, n_clusters=4, top_per_cluster=2, min_kds=10)
    assert few.inconclusive and "8 knockdowns" in few.inconclusive
    assert math.isnan(few.metrics["pearson"]) and few.metrics["n_kds"] == 8


def test_plots_render_for_the_routing_result() -> None:
    delta_y, _ = clustered_world(8)
    jac = np.random.default_rng(2).normal(size=(24, 6))
    res = run(delta_y, jac @ jac.T, selection="all", n_clusters=4, min_kds=5)
    labels = tuple(str(g) for g in res.arrays["groups"])
    rendered = dict(render_all(res, PlotInfo(title="routing", metrics=res.metrics, labels=labels)))
    assert {"similarity heatmap", "Jacobian vs ΔY", "null distribution"} <= set(rendered)
    assert res.null is not None and res.null.shape == (199,)  # the partial Mantel null of the partial r
    assert float(res.arrays["observed"][0]) == res.metrics["partial_pearson"]
    assert np.mean(res.null >= res.metrics["partial_pearson"] - 1e-10) == pytest.approx(
        res.metrics["p_partial"] * 200 / 199 - 1 / 199, abs=1e-9)
    assert all(isinstance(v, bytes) for v in rendered.values())


def difference(a, b, seed=0, **kw):
    params = DifferenceParams(**(FAST | {"selection": "all", "n_clusters": 4, "min_kds": 5} | kw))
    (dy_a, g_a), (dy_b, g_b) = a, b
    return routing_coherence_difference(
        delta_y_a=dy_a, jacobian_gram_a=g_a, names_a=names(dy_a.shape[0]), pert_repr_a=unrelated_repr(dy_a.shape[0]),
        delta_y_b=dy_b, jacobian_gram_b=g_b, names_b=names(dy_b.shape[0]), pert_repr_b=unrelated_repr(dy_b.shape[0]),
        params=params, rng=np.random.default_rng(seed))


def test_difference_of_identical_models_is_zero_with_a_ci_covering_it() -> None:
    delta_y, _ = clustered_world(9)
    jac = jacobians_like(delta_y, np.random.default_rng(3), noise=4.0)
    res = difference((delta_y, gram_of(jac)), (delta_y, gram_of(jac)))
    assert res.metrics["difference"] == 0.0 and res.metrics["spearman_difference"] == 0.0
    lo, hi = res.cis["difference"]
    assert lo < 0 < hi
    assert res.metrics["p_difference"] == 1.0 and res.cis["difference"] == pytest.approx((-hi, hi))
    assert res.metrics["pearson_a"] == res.metrics["pearson_b"]
    se = correlation_ses(*(unit_rows(m) @ unit_rows(m).T for m in (jac.reshape(24, -1), delta_y)))[0]
    assert hi == pytest.approx(stats.t.ppf(0.975, 46) * math.sqrt(2) * se)  # Welch df: 2 (K − 1)
    single = run(delta_y, gram_of(jac), selection="all", n_clusters=4, min_kds=5)
    assert res.metrics["pearson_a"] == pytest.approx(single.metrics["pearson"])


def test_difference_detects_a_planted_versus_an_unrelated_model() -> None:
    delta_y, _ = clustered_world(10, per_cluster=8)
    unit = unit_rows(delta_y)
    unrelated = np.random.default_rng(4).normal(size=(32, 10))
    res = difference((delta_y, unit @ unit.T), (delta_y, unrelated @ unrelated.T))
    assert res.metrics["difference"] > 0.5 and res.metrics["p_difference"] < 0.05
    assert res.metrics["p_a"] < 0.01 < res.metrics["p_b"]
    assert res.cis["difference"][0] > 0


def alike_case(margin: float):
    """Claim 5's "alike across models" case (a claim of absence of a difference) with margin ``margin``."""
    doc = load_yaml(ROOT / "hypotheses" / "paper" / "claim5_routing_backbone.yaml")
    (case,) = [c for hyp, base in hypotheses_from_doc(doc) if hyp.id == "routing_coherence_alike_across_models"
               for c in expand(hyp, doc, base, {"cell_line": ["hepg2"]})]
    assert case.absence and case.margin == 0.1 and case.probe.absence == "within"
    return dataclasses.replace(case, margin=margin)


def test_alike_is_an_equivalence_test_a_wide_ci_is_inconclusive_not_a_pass() -> None:
    delta_y, _ = clustered_world(9)
    jac = jacobians_like(delta_y, np.random.default_rng(3), noise=4.0)
    same = (delta_y, gram_of(jac))
    result = difference(same, same)
    lo, hi = result.cis["difference"]
    assert lo < 0 < hi and result.inconclusive is None  # the probe measures; the rule decides
    tight = judge(alike_case(max(-lo, hi) / 2), result)
    assert tight.verdict == "inconclusive" and "reaches past" in tight.reason
    assert judge(alike_case(max(-lo, hi) * 2), result).verdict == "pass"
    unit = unit_rows(delta_y)
    unrelated = np.random.default_rng(4).normal(size=(delta_y.shape[0], 10))
    clear = difference((delta_y, unit @ unit.T), (delta_y, unrelated @ unrelated.T))
    assert clear.cis["difference"][0] > 0.01
    assert judge(alike_case(0.01), clear).verdict == "fail"  # a clear difference fails, not skips


def stability(jac, ref, delta_y, **kw):
    return routing_stability(jacobians=jac, reference_jacobians=ref, delta_y=delta_y,
                             params=StabilityParams(**(FAST | {"min_kds": 5})), rng=np.random.default_rng(0), **kw)


def test_stability_against_itself_and_a_rescaled_reference() -> None:
    delta_y, _ = clustered_world(11)
    jac = jacobians_like(delta_y, np.random.default_rng(5), noise=3.0)
    same = stability(jac, jac.copy(), delta_y)
    assert same.metrics["agreement"] == pytest.approx(1.0) and same.metrics["agreement_min"] == pytest.approx(1.0)
    assert same.metrics["relative_change"] == pytest.approx(0.0, abs=1e-12)
    halved = stability(0.5 * jac, jac, delta_y)
    assert halved.metrics["agreement"] == pytest.approx(1.0) and halved.metrics["relative_change"] == pytest.approx(0.5)
    single = run(delta_y, gram_of(jac), selection="all", n_clusters=4, min_kds=5)
    assert same.metrics["pearson"] == pytest.approx(single.metrics["pearson"], abs=1e-12)
    assert same.metrics["p_pearson"] < 0.05 and same.metrics["n_kds"] == 24


def test_stability_agreement_by_hand_and_convergence_curve() -> None:
    rng = np.random.default_rng(6)
    delta_y, _ = clustered_world(12)
    ref = rng.normal(size=(24, 5, 3))
    held = ref + rng.normal(size=ref.shape)
    noisier = ref + 3 * rng.normal(size=ref.shape)
    res = stability(held, ref, delta_y, curve={256: ref, 16: noisier, 64: held})
    f, r = held.reshape(24, -1), ref.reshape(24, -1)
    cos = np.sum(f * r, axis=1) / np.linalg.norm(f, axis=1) / np.linalg.norm(r, axis=1)
    change = np.linalg.norm(f - r, axis=1) / np.linalg.norm(r, axis=1)
    assert res.metrics["agreement"] == pytest.approx(cos.mean())
    assert res.metrics["agreement_min"] == pytest.approx(cos.min())
    assert res.metrics["relative_change"] == pytest.approx(change.mean())
    lo, hi = res.cis["agreement"]
    assert lo < cos.mean() < hi
    np.testing.assert_array_equal(res.arrays["cell_counts"], [16, 64, 256])
    curve = res.arrays["convergence"]
    assert curve.shape == (3, 24)
    np.testing.assert_allclose(curve[1], cos)  # S = 64 is this case's own Jacobians
    np.testing.assert_allclose(curve[2], 1.0)  # the reference against itself
    assert curve[0].mean() < curve[1].mean()  # noisier Jacobians agree less
    rendered = dict(render_all(res, PlotInfo(title="stability", metrics=res.metrics)))
    assert {"cell-count convergence", "per-knockdown cosine", "Jacobian vs ΔY"} <= set(rendered)


# ---------------------------------------------------------------- beyond input proximity (partial Mantel)


def proximity_world(seed: int, k: int = 30, routing: float = 0.0):
    """Jacobian and ΔY similarity both falling with the distance of the pert representations (plus independent
    noise), and optionally a routing cluster structure independent of the representations."""
    rng = np.random.default_rng(seed)
    reps = rng.normal(size=(k, 3))
    dist = np.sqrt(np.sum((reps[:, None] - reps[None]) ** 2, axis=-1))
    labels = rng.integers(0, 3, k)
    same = (labels[:, None] == labels[None, :]).astype(float)

    def similarity(noise: float) -> np.ndarray:
        e = rng.normal(size=(k, k)) * noise
        m = np.exp(-dist / 2) + routing * same + (e + e.T) / 2
        np.fill_diagonal(m, 1.0)
        return m
    return reps, similarity(0.05), similarity(0.05)


def naive_partial(x_sim, y_sim, prox, degree=3):
    x, y, z = upper(x_sim), upper(y_sim), upper(prox)
    zs = (z - z.mean()) / z.std()
    basis = np.column_stack([zs**k for k in range(degree + 1)])

    def resid(v):
        return v - basis @ np.linalg.lstsq(basis, v, rcond=None)[0]
    return float(np.corrcoef(resid(x), resid(y))[0, 1]), resid(x), resid(y)


def test_partial_mantel_matches_explicit_residuals_permutations_and_leave_outs() -> None:
    reps, x_sim, y_sim = proximity_world(1, k=14, routing=0.3)
    prox = proximity_matrix(reps)
    np.testing.assert_allclose(-prox, np.sqrt(np.sum((reps[:, None] - reps[None]) ** 2, axis=-1)), atol=1e-12)
    res = partial_mantel(x_sim, y_sim, prox, np.random.default_rng(0), 99)
    expected, rx, ry = naive_partial(x_sim, y_sim, prox)
    assert res.pearson == pytest.approx(expected, abs=1e-12)
    ranks = [stats.rankdata(upper(m)) for m in (x_sim, y_sim, prox)]
    rs = naive_partial(*(_square(r, 14) for r in ranks))[0]
    assert res.spearman == pytest.approx(rs, abs=1e-12)
    assert res.proximity_x == pytest.approx(np.corrcoef(upper(x_sim), upper(prox))[0, 1])
    assert res.proximity_y == pytest.approx(np.corrcoef(upper(y_sim), upper(prox))[0, 1])
    # the null: KD labels of the Jacobian residual matrix permuted (same draws as the function's)
    perms = np.argsort(np.random.default_rng(0).random((99, 14)), axis=1)
    rx_sq = _square(rx, 14)
    null = [np.corrcoef(upper(rx_sq[np.ix_(p, p)]), ry)[0, 1] for p in perms]
    np.testing.assert_allclose(res.null_pearson, null, atol=1e-10)
    assert res.p_pearson == pytest.approx((1 + np.sum(np.array(null) >= expected - 1e-10)) / 100)
    # the jackknife refits the regression without each knockdown
    leave_out = []
    for m in range(14):
        rest = np.setdiff1d(np.arange(14), m)
        sub = np.ix_(rest, rest)
        leave_out.append(naive_partial(x_sim[sub], y_sim[sub], prox[sub])[0])
    influence = pair_influence(_square(rx / np.linalg.norm(rx - rx.mean()), 14),
                               _square(ry / np.linalg.norm(ry - ry.mean()), 14))[0]
    assert res.se_pearson == pytest.approx(jackknife_se(np.array(leave_out), influence), rel=1e-8)


def _square(values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, n))
    i, j = np.triu_indices(n, 1)
    out[i, j] = values
    out[j, i] = values
    return out


def test_proximity_alone_makes_the_plain_figure_significant_but_not_the_partial_one() -> None:
    reps, x_sim, y_sim = proximity_world(3, k=40)
    plain = mantel(x_sim, y_sim, np.random.default_rng(1), 199)
    part = partial_mantel(x_sim, y_sim, proximity_matrix(reps), np.random.default_rng(1), 199)
    assert plain.pearson > 0.5 and plain.p_pearson == pytest.approx(1 / 200)
    assert part.proximity_x > 0.5 and part.proximity_y > 0.5
    assert abs(part.pearson) < 0.1 and part.p_pearson > 0.05


def test_routing_beyond_proximity_is_found() -> None:
    reps, x_sim, y_sim = proximity_world(4, k=40, routing=0.3)
    part = partial_mantel(x_sim, y_sim, proximity_matrix(reps), np.random.default_rng(2), 199)
    assert part.pearson > 0.3 and part.p_pearson == pytest.approx(1 / 200) and part.p_spearman < 0.01
    lo, hi = fisher_ci(part.pearson, part.se_pearson, 39)
    assert 0 < lo < part.pearson < hi


def test_probe_reports_partial_beside_plain_and_its_jackknife_cis() -> None:
    delta_y, _ = clustered_world(13)
    jac = jacobians_like(delta_y, np.random.default_rng(7), noise=3.0)
    reps = unrelated_repr(24)
    res = run(delta_y, gram_of(jac), selection="all", n_clusters=4, min_kds=5)
    flat = jac.reshape(jac.shape[0], -1)
    x_sim, y_sim = unit_rows(flat) @ unit_rows(flat).T, unit_rows(delta_y) @ unit_rows(delta_y).T
    order = _order(res)
    part = partial_mantel(x_sim[np.ix_(order, order)], y_sim[np.ix_(order, order)],
                          proximity_matrix(reps[order]), np.random.default_rng(0), 199)
    assert res.metrics["partial_pearson"] == pytest.approx(part.pearson)
    assert res.metrics["partial_spearman"] == pytest.approx(part.spearman)
    assert res.cis["partial_pearson"] == pytest.approx(fisher_ci(part.pearson, part.se_pearson, df=23))
    assert res.cis["partial_spearman"] == pytest.approx(fisher_ci(part.spearman, part.se_spearman, df=23))
    # proximity unrelated to both: the partial figure is close to the plain one
    assert abs(res.metrics["partial_pearson"] - res.metrics["pearson"]) < 0.1
    assert res.metrics["p_partial"] < 0.05 and res.metrics["p_pearson"] < 0.05
    with pytest.raises(ValueError, match="pert_repr"):
        run(delta_y, gram_of(jac), pert_repr=reps[:5], selection="all", n_clusters=4, min_kds=5)


def test_difference_of_partial_coherence() -> None:
    delta_y, _ = clustered_world(10, per_cluster=8)
    unit = unit_rows(delta_y)
    unrelated = np.random.default_rng(4).normal(size=(32, 10))
    res = difference((delta_y, unit @ unit.T), (delta_y, unrelated @ unrelated.T))
    assert res.metrics["partial_difference"] == pytest.approx(res.metrics["partial_a"] - res.metrics["partial_b"])
    assert res.metrics["partial_difference"] > 0.5 and res.metrics["p_partial_difference"] < 0.05
    assert res.metrics["p_partial_a"] < 0.01 < res.metrics["p_partial_b"]
    assert res.cis["partial_difference"][0] > 0 and res.cis["partial_a"][0] > 0.5


# ---------------------------------------------------------------- attainable p-values


def _p_metrics(metrics) -> set[str]:
    return {m for m in metrics if m == "p" or m.startswith("p_")}


def test_every_p_declares_its_attainable_floor() -> None:
    delta_y, _ = clustered_world(13)
    jac = jacobians_like(delta_y, np.random.default_rng(7), noise=3.0)
    res = run(delta_y, gram_of(jac), selection="all", n_clusters=4, min_kds=5)  # 199 permutations
    assert set(res.attainable) == _p_metrics(res.metrics)
    assert all(v == pytest.approx(1 / 200) for v in res.attainable.values())
    assert all(res.metrics[m] >= res.attainable[m] for m in res.attainable)
    more = run(delta_y, gram_of(jac), selection="all", n_clusters=4, min_kds=5, permutations=999)
    assert more.attainable["p_partial"] == pytest.approx(1 / 1000)
    same = (delta_y, gram_of(jac))
    diff = difference(same, same)
    assert set(diff.attainable) == _p_metrics(diff.metrics)
    assert diff.attainable["p_difference"] == 0.0 and diff.attainable["p_partial_difference"] == 0.0  # t tests
    assert diff.attainable["p_a"] == diff.attainable["p_partial_b"] == pytest.approx(1 / 200)
    stab = stability(jac, jac, delta_y)
    assert set(stab.attainable) == _p_metrics(stab.metrics) and stab.attainable["p_pearson"] == pytest.approx(1 / 200)


def test_few_knockdowns_floor_the_permutation_p_at_one_over_k_factorial() -> None:
    assert permutation_floor(199, 4) == pytest.approx(1 / 24)
    assert permutation_floor(199, 6) == pytest.approx(1 / 200)  # 720 relabellings: the draws set the floor
    assert permutation_floor(10_000, 30) == pytest.approx(1 / 10_001)
    delta_y, _ = clustered_world(5, n_clusters=2, per_cluster=2)
    jac = jacobians_like(delta_y, np.random.default_rng(1), noise=1.0)
    res = run(delta_y, gram_of(jac), selection="all", n_clusters=2, min_kds=3)
    assert res.metrics["n_kds"] == 4 and res.attainable["p_partial"] == pytest.approx(1 / 24)
