"""NB05–NB10: pert-Jacobian routing — do knockdowns with similar effects get routed through similar Jacobians?

For every knockdown ``k``: ``ΔY_k`` (its cell-averaged output change) and
``J_k = ∂Ȳ/∂r`` at its pert representation, given as the inner-product Gram
``⟨J_a, J_b⟩_F``. *Routing coherence* is the correlation between the upper
triangles of the Jacobian cosine matrix and the ΔY cosine matrix (Pearson and
Spearman, NB07), tested by a Mantel permutation (KD labels of one matrix are
permuted: pairs sharing a knockdown are not independent, so the knockdown is
the unit). Since ``J_k`` is taken at ``r_k`` and ``ΔY_k ≈ J̄ (r_k − r_ctrl)``,
knockdowns with nearby pert representations have similar Jacobians and similar
ΔY with no routing at all; the routing claim is therefore judged beyond input
proximity, by the partial Mantel test (both triangles residualised on a
polynomial in ``−‖r_a − r_b‖``, KD labels of the Jacobian residuals permuted),
the plain figure reported beside it. ΔY is clustered by Ward on cosine distance (Ward on the
L2-normalised rows, ``‖a − b‖² = 2(1 − cos)``); the same- vs different-cluster
Jacobian similarity ratio and the ARI between the Jacobian and the ΔY
clusterings are tested by permuting cluster labels over knockdowns. CIs
treat the knockdown as the unit, never the pair: the coherence CIs (Fisher z)
and the difference test use the leave-one-knockdown-out jackknife SE,
corrected for the pair-level term the plain jackknife counts twice
(``matrixstats.jackknife_se``; ``tools.calibration.routing`` measures its
coverage against the plain jackknife and the KD bootstrap); the cluster-ratio
CI resamples knockdowns (a resample's pairs are the pairs of distinct draws
that are different knockdowns).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from hypocheck.registry import ProbeResult, probe

from .kinds import HeldJacobians, RoutingArrays, RoutingPair
from .matrixstats import (
    Mantel,
    PartialMantel,
    correlation_ses,
    cosine_from_gram,
    fisher_ci,
    mantel,
    partial_mantel,
    svd_share,
    upper,
    welch_difference,
)
from .routing_selection import cluster_stats, select_routing
from .setstats import bootstrap_mean_ci, cosine_matrix


class RoutingParams(BaseModel):
    """Parameters of the routing-coherence analysis (NB05–NB08)."""

    model_config = ConfigDict(extra="forbid")
    n_clusters: int = Field(15, ge=2, description="Ward clusters of ΔY (cosine distance); of the Jacobians for ARI.")
    selection: Literal["top", "all"] = Field(
        "top", description="'top': the top_per_cluster KDs per ΔY cluster by ‖ΔY‖ (the original 225; only their "
                           "Jacobians are computed); 'all': every KD."
    )
    top_per_cluster: int = Field(15, ge=1, description="KDs kept per ΔY cluster with selection 'top'.")
    permutations: int = Field(1000, ge=99, description="Permutations for the Mantel and label-permutation tests.")
    bootstrap: int = Field(1000, ge=99, description="Bootstrap resamples of knockdowns for the cluster-ratio CI.")
    svd_components: int = Field(10, ge=1, description="Top singular values: their share of the squared total.")
    min_kds: int = Field(10, ge=3, description="Fewer selected knockdowns than this → inconclusive.")
    proximity_degree: int = Field(
        3, ge=1, le=6, description="Degree of the polynomial in input proximity (−‖r_a − r_b‖) that both similarity "
                                   "triangles are residualised on for the partial Mantel test (1: linear).")


class DifferenceParams(RoutingParams):
    """Routing parameters of the two models compared (claim 5); 'alike' is a claim of absence of a difference
    (``absence: true`` with a ``margin:``), judged on the difference's CI."""


class StabilityParams(BaseModel):
    """Parameters of the routing-stability comparison (NB09 cell sampling, NB10 cell count)."""

    model_config = ConfigDict(extra="forbid")
    permutations: int = Field(1000, ge=99, description="Permutations for the Mantel test of routing coherence.")
    bootstrap: int = Field(1000, ge=99, description="Bootstrap resamples of knockdowns for the agreement CI.")
    min_kds: int = Field(10, ge=3, description="Fewer knockdowns with non-zero Jacobians than this → inconclusive.")


ROUTING_METRICS = (
    "n_kds", "n_clusters", "partial_pearson", "partial_spearman", "p_partial", "p_partial_spearman",
    "proximity_jacobian_r", "proximity_delta_r", "pearson", "spearman", "p_pearson", "p_spearman",
    "same_cluster_similarity", "diff_cluster_similarity", "same_diff_ratio", "p_ratio", "ari", "p_ari", "svd_share",
    "n_zero_norm",
)
DIFFERENCE_METRICS = (
    "pearson_a", "pearson_b", "spearman_a", "spearman_b", "difference", "spearman_difference", "p_difference",
    "p_spearman_difference", "p_a", "p_b", "partial_a", "partial_b", "partial_difference", "p_partial_difference",
    "p_partial_a", "p_partial_b", "n_kds_a", "n_kds_b",
)
MIN_PARTIAL_R = 0.1
"""Default minimum effect of a routing presence claim, on ``partial_pearson``: r = 0.1, the conventional 'small'
correlation (1 % of the variance of the pair similarities), a floor fixed before any data."""
STABILITY_METRICS = (
    "agreement", "agreement_min", "relative_change", "pearson", "spearman", "p_pearson", "p_spearman", "n_kds",
    "n_zero_norm",
)


# ---------------------------------------------------------------- probes


@dataclass(frozen=True)
class Coherence:
    """Routing coherence of one set of knockdowns: Mantel correlations and their corrected-jackknife SEs, and
    (with the inputs' proximity) the partial Mantel correlations beyond proximity."""

    mantel: Mantel
    se_pearson: float
    se_spearman: float
    df: int  # K − 1, for the t quantiles
    partial: PartialMantel | None = None
    permutations: int = 0

    def cis(self) -> dict[str, tuple[float, float]]:
        """Fisher-z CIs of ``pearson`` and ``spearman`` (and of the partial ones), t quantile with K − 1 df."""
        cis = {"pearson": fisher_ci(self.mantel.pearson, self.se_pearson, self.df),
               "spearman": fisher_ci(self.mantel.spearman, self.se_spearman, self.df)}
        if self.partial is not None:
            cis |= {"partial_pearson": fisher_ci(self.partial.pearson, self.partial.se_pearson, self.df),
                    "partial_spearman": fisher_ci(self.partial.spearman, self.partial.se_spearman, self.df)}
        return cis

    @property
    def floor(self) -> float:
        """Smallest p a KD-label permutation test of these knockdowns can attain: ``1/(P + 1)`` for ``P``
        permutations, and never below ``1/K!`` (the number of distinct relabellings)."""
        return permutation_floor(self.permutations, self.df + 1)


def permutation_floor(permutations: int, n_units: int) -> float:
    """``max(1/(P + 1), 1/n!)``: the smallest p of a Monte Carlo permutation test over ``n`` exchangeable units."""
    distinct = math.factorial(n_units) if n_units <= 20 else math.inf
    return max(1.0 / (permutations + 1), 1.0 / distinct)


def coherence(
    jac_sim: np.ndarray, dy_sim: np.ndarray, rng: np.random.Generator, permutations: int,
    proximity: np.ndarray | None = None, degree: int = 3,
) -> Coherence:
    """Mantel test and corrected KD jackknife SEs of the correlation between Jacobian and ΔY cosine; with
    ``proximity``, the partial Mantel test of the same beyond input proximity."""
    partial = None if proximity is None else partial_mantel(jac_sim, dy_sim, proximity, rng, permutations, degree)
    return Coherence(mantel(jac_sim, dy_sim, rng, permutations), *correlation_ses(jac_sim, dy_sim),
                     df=jac_sim.shape[0] - 1, partial=partial, permutations=permutations)


def _too_few(n: int, params: RoutingParams | StabilityParams) -> str | None:
    if n >= params.min_kds:
        return None
    return f"{n} knockdowns with a non-zero Jacobian selected; at least {params.min_kds} are needed"


@probe(
    "routing_coherence",
    params=RoutingParams,
    takes=RoutingArrays,
    axes=("model", "cell_line"),
    metrics=ROUTING_METRICS,
    kinds={"p": ("p_partial", "p_partial_spearman", "p_pearson", "p_spearman", "p_ratio", "p_ari"),
           "count": ("n_kds", "n_clusters", "n_zero_norm"),
           "effect": ("partial_spearman", "pearson", "spearman", "same_diff_ratio", "ari")},
    effect="partial_pearson",
    p="p_partial",
    min_effect=MIN_PARTIAL_R,
    absence="below",
)
def routing_coherence(
    *, delta_y: np.ndarray, jacobian_gram: np.ndarray, names: Sequence[str], pert_repr: np.ndarray,
    params: RoutingParams, rng: np.random.Generator, gram_rows: np.ndarray | None = None,
) -> ProbeResult:
    """Correlation of Jacobian and ΔY cosine similarities over knockdowns beyond input proximity, beside the plain one.

    ``delta_y`` is (K, G) cell-averaged ΔY per knockdown, ``jacobian_gram`` the
    (K, K) inner-product Gram ``⟨J_a, J_b⟩_F`` of ``J_k = ∂Ȳ/∂r`` at ``r_k``,
    ``pert_repr`` the (K, H) pert representations ``r_k``, ``names`` the K
    knockdowns. ΔY is Ward-clustered (cosine) over all K; KDs with a zero-norm
    Jacobian are dropped (``n_zero_norm``); ``selection`` 'top' keeps the
    ``top_per_cluster`` largest-‖ΔY‖ KDs per cluster. ``gram_rows``: the rows
    the Gram covers when it covers fewer than all K (it must cover the
    selection; ``n_zero_norm`` then counts among them).

    Effect: ``partial_pearson``, the routing coherence that input proximity
    does not explain. Nearby inputs have nearby Jacobians, and (ΔY ≈ J̄ (r_k −
    r_ctrl)) nearby ΔY, so the plain correlation is positive without any
    routing; the partial Mantel test residualises both similarity triangles on
    a degree-``proximity_degree`` polynomial in the proximity ``−‖r_a − r_b‖``
    and correlates the residuals (``partial_spearman``: on ranks), one-sided p
    by permuting the KD labels of the Jacobian residual matrix (``p_partial``,
    ``p_partial_spearman``). ``proximity_jacobian_r`` / ``proximity_delta_r``:
    Pearson r of each similarity with proximity. The plain figure beside it:
    ``pearson`` / ``spearman`` of the upper triangles with one-sided Mantel p.
    All four correlations carry Fisher-z CIs with the corrected
    leave-one-knockdown-out jackknife SE and a t quantile (K − 1 df).
    ``same_diff_ratio``: mean Jacobian cosine of same- over different-ΔY-cluster
    pairs, ``p_ratio`` by cluster-label permutation, CI by KD bootstrap;
    ``ari``: Ward clusters of the Jacobians vs of ΔY, ``p_ari`` by label
    permutation; ``svd_share``: top ``svd_components`` squared singular values
    of the stacked selected Jacobians over their total. Every p is a
    permutation p, attainable down to ``1/(permutations + 1)``. Default minimum
    effect of a presence claim: partial r 0.1 (``MIN_PARTIAL_R``).
    """
    sel = select_routing(delta_y, jacobian_gram, names, params, pert_repr, gram_rows)
    n = int(sel.index.size)
    base = dict.fromkeys(ROUTING_METRICS, float("nan")) | {
        "n_kds": n, "n_clusters": sel.n_clusters, "n_zero_norm": sel.n_zero_norm}
    reason = _too_few(n, params)
    if reason is not None:
        return ProbeResult(metrics=base, inconclusive=reason)
    coh = coherence(sel.jacobian_similarity, sel.delta_y_similarity, rng, params.permutations, sel.proximity,
                    params.proximity_degree)
    clus = cluster_stats(sel.jacobian_similarity, sel.clusters, params.n_clusters, rng, params)
    part = coh.partial
    assert part is not None
    metrics = base | {
        "partial_pearson": part.pearson, "partial_spearman": part.spearman, "p_partial": part.p_pearson,
        "p_partial_spearman": part.p_spearman, "proximity_jacobian_r": part.proximity_x,
        "proximity_delta_r": part.proximity_y,
        "pearson": coh.mantel.pearson, "spearman": coh.mantel.spearman, "p_pearson": coh.mantel.p_pearson,
        "p_spearman": coh.mantel.p_spearman, "same_cluster_similarity": clus.same,
        "diff_cluster_similarity": clus.diff, "same_diff_ratio": clus.ratio, "p_ratio": clus.p_ratio,
        "ari": clus.ari, "p_ari": clus.p_ari, "svd_share": svd_share(sel.gram, params.svd_components),
    }
    cis = coh.cis() | {"same_diff_ratio": clus.ratio_ci}
    table = pd.DataFrame({
        "name": [names[i] for i in sel.index], "cluster": sel.clusters, "delta_y_norm": sel.magnitude,
        "jacobian_cluster": clus.jacobian_clusters,
    })
    arrays = {"similarity": sel.jacobian_similarity, "groups": sel.clusters,
              "jacobian": upper(sel.jacobian_similarity), "delta_y": upper(sel.delta_y_similarity),
              "proximity": upper(sel.proximity), "observed": np.array([part.pearson])}
    floor = coh.floor
    attainable = dict.fromkeys(("p_partial", "p_partial_spearman", "p_pearson", "p_spearman", "p_ratio", "p_ari"),
                               floor)
    return ProbeResult(metrics=metrics, cis=cis, arrays=arrays, null=part.null_pearson,
                       null_label="partial Mantel null (knockdown labels permuted, proximity controlled)",
                       tables={"knockdowns": table}, attainable=attainable)


@probe(
    "routing_coherence_difference",
    params=DifferenceParams,
    takes=RoutingPair,
    axes=(),
    metrics=DIFFERENCE_METRICS,
    kinds={"p": ("p_difference", "p_spearman_difference", "p_a", "p_b", "p_partial_difference", "p_partial_a",
                 "p_partial_b"),
           "count": ("n_kds_a", "n_kds_b"), "effect": ("spearman_difference", "partial_difference")},
    effect="difference",
    p="p_difference",
    absence="within",
)
def routing_coherence_difference(
    *, delta_y_a: np.ndarray, jacobian_gram_a: np.ndarray, names_a: Sequence[str], pert_repr_a: np.ndarray,
    delta_y_b: np.ndarray, jacobian_gram_b: np.ndarray, names_b: Sequence[str], pert_repr_b: np.ndarray,
    params: DifferenceParams, rng: np.random.Generator, gram_rows_a: np.ndarray | None = None,
    gram_rows_b: np.ndarray | None = None,
) -> ProbeResult:
    """Routing coherence of model A minus model B ("a backbone property": fewshot and zeroshot alike).

    Each model's knockdowns are selected as in ``routing_coherence`` with the
    same parameters (``gram_rows_a`` / ``gram_rows_b`` as its ``gram_rows``).
    ``difference`` = pearson_a − pearson_b (and
    ``spearman_difference``), with ``SE = sqrt(SE_a² + SE_b²)`` from each
    model's corrected leave-one-knockdown-out jackknife (its knockdowns taken
    as an independent sample): CI ``difference ± q · SE`` and two-sided
    ``p_difference`` from the t distribution with Welch–Satterthwaite degrees
    of freedom (each SE's: K − 1), on the r scale, the scale of the
    equivalence margin; ``pearson_a`` … ``spearman_b`` carry Fisher-z CIs.
    This needs no pairing, so it is valid whether the selections share
    knockdowns or not; where they share knockdowns and the two estimates are
    positively correlated, ignoring that correlation overstates the variance of
    the difference, so the test errs conservative. ``tools.calibration.routing``
    measures the CI coverage and the test's FPR under equal coherence and its
    power (the plain jackknife and the KD bootstrap it replaced overstate the
    spread about 1.2–1.3× and 1.4–1.5×). ``p_a`` / ``p_b``: each model's
    one-sided Mantel p for its own coherence. The same beyond input proximity
    (``pert_repr_a`` / ``pert_repr_b``, as in ``routing_coherence``):
    ``partial_a`` / ``partial_b`` (partial Pearson r, Fisher-z CIs),
    ``partial_difference`` with its CI and two-sided ``p_partial_difference``
    (same Welch construction), ``p_partial_a`` / ``p_partial_b`` (partial
    Mantel). "Alike" is a claim of absence (``absence: true``, ``margin: m``): the engine passes it when the CI
    of ``difference`` lies within ± m, fails it beyond, and leaves it inconclusive when it reaches past ± m.
    """
    sel_a = select_routing(delta_y_a, jacobian_gram_a, names_a, params, pert_repr_a, gram_rows_a)
    sel_b = select_routing(delta_y_b, jacobian_gram_b, names_b, params, pert_repr_b, gram_rows_b)
    metrics = dict.fromkeys(DIFFERENCE_METRICS, float("nan")) | {
        "n_kds_a": sel_a.index.size, "n_kds_b": sel_b.index.size}
    reasons = [f"model {which}: {r}" for which, sel in (("A", sel_a), ("B", sel_b))
               if (r := _too_few(int(sel.index.size), params)) is not None]
    if reasons:
        return ProbeResult(metrics=metrics, inconclusive="; ".join(reasons))
    a, b = (coherence(sel.jacobian_similarity, sel.delta_y_similarity, rng, params.permutations, sel.proximity,
                      params.proximity_degree) for sel in (sel_a, sel_b))
    assert a.partial is not None and b.partial is not None
    diff = welch_difference(a.mantel.pearson, a.se_pearson, a.df, b.mantel.pearson, b.se_pearson, b.df)
    spearman = welch_difference(a.mantel.spearman, a.se_spearman, a.df, b.mantel.spearman, b.se_spearman, b.df)
    partial = welch_difference(a.partial.pearson, a.partial.se_pearson, a.df, b.partial.pearson,
                               b.partial.se_pearson, b.df)
    metrics |= {
        "pearson_a": a.mantel.pearson, "pearson_b": b.mantel.pearson, "spearman_a": a.mantel.spearman,
        "spearman_b": b.mantel.spearman, "difference": diff.estimate, "spearman_difference": spearman.estimate,
        "p_difference": diff.p, "p_spearman_difference": spearman.p,
        "p_a": a.mantel.p_pearson, "p_b": b.mantel.p_pearson,
        "partial_a": a.partial.pearson, "partial_b": b.partial.pearson, "partial_difference": partial.estimate,
        "p_partial_difference": partial.p, "p_partial_a": a.partial.p_pearson, "p_partial_b": b.partial.p_pearson,
    }
    cis = {"difference": diff.ci, "spearman_difference": spearman.ci, "partial_difference": partial.ci} | {
        f"{metric}_{which}": ci for which, coh in (("a", a), ("b", b)) for metric, ci in coh.cis().items()
        if metric in ("pearson", "spearman")} | {
        "partial_a": a.cis()["partial_pearson"], "partial_b": b.cis()["partial_pearson"]}
    # t-test p-values are continuous (no floor); the Mantel p's floor is set by each model's permutations
    attainable = {"p_difference": 0.0, "p_spearman_difference": 0.0, "p_partial_difference": 0.0,
                  "p_a": a.floor, "p_b": b.floor, "p_partial_a": a.floor, "p_partial_b": b.floor}
    return ProbeResult(metrics=metrics, cis=cis, attainable=attainable)


def _row_cosines(jacobians: np.ndarray, flat_ref: np.ndarray) -> np.ndarray:
    """Cosine of each KD's Jacobian with its reference (NaN where either is zero)."""
    flat = np.asarray(jacobians, dtype=np.float64).reshape(flat_ref.shape)
    denom = np.linalg.norm(flat, axis=1) * np.linalg.norm(flat_ref, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, np.einsum("ij,ij->i", flat, flat_ref) / denom, np.nan)


@probe(
    "routing_stability",
    params=StabilityParams,
    takes=HeldJacobians,
    axes=("model", "cell_line"),
    metrics=STABILITY_METRICS,
    kinds={"p": ("p_pearson", "p_spearman"), "count": ("n_kds", "n_zero_norm")},
    effect="agreement",
)
def routing_stability(
    *, jacobians: np.ndarray, reference_jacobians: np.ndarray, delta_y: np.ndarray, params: StabilityParams,
    rng: np.random.Generator, curve: Mapping[int, np.ndarray] | None = None,
) -> ProbeResult:
    """Agreement of held Jacobians with those at a reference cell sample / count, and routing coherence here.

    ``jacobians`` and ``reference_jacobians`` are (k, G, H) for the same
    knockdowns at this case's setting and at the reference; ``delta_y`` (k, G)
    at this setting. ``agreement``: mean over KDs of the cosine between ``J_k``
    and ``J_k^ref`` (``agreement_min`` the smallest; CI bootstraps KDs);
    ``relative_change``: mean ``‖J_k − J_k^ref‖_F / ‖J_k^ref‖_F``. ``pearson`` /
    ``spearman`` / ``p_pearson``: routing coherence of these KDs at this setting
    (as ``routing_coherence``, without selection; Fisher-z CIs with the
    corrected jackknife SE). KDs with a zero-norm Jacobian
    at either setting are left out (``n_zero_norm``). ``curve`` (NB10): held
    Jacobians of the same KDs at several cell counts S; each KD's cosine with
    the reference at every S becomes ``arrays['convergence']`` (counts × KDs)
    beside ``arrays['cell_counts']``, drawn as the convergence curve. The Mantel
    p's floor is ``1/(permutations + 1)``. No default minimum effect: the effect
    (agreement) is judged against a stated level (``agreement_ci_low >= 0.9``),
    not by a presence test; a hypothesis that tests ``p_pearson`` names its own
    ``effect:`` and ``min_effect:``.
    """
    held = np.asarray(jacobians, dtype=np.float64)
    ref = np.asarray(reference_jacobians, dtype=np.float64)
    dy = np.asarray(delta_y, dtype=np.float64)
    if held.shape != ref.shape or held.ndim < 2 or dy.ndim != 2 or dy.shape[0] != held.shape[0]:
        raise ValueError(f"jacobians {held.shape}, reference_jacobians {ref.shape} and delta_y {dy.shape} "
                         "do not describe the same knockdowns")
    flat, flat_ref = held.reshape(held.shape[0], -1), ref.reshape(ref.shape[0], -1)
    cosines = _row_cosines(flat, flat_ref)
    keep = np.isfinite(cosines)  # both Jacobians non-zero
    n = int(keep.sum())
    agreement = cosines[keep]
    change = np.linalg.norm(flat[keep] - flat_ref[keep], axis=1) / np.linalg.norm(flat_ref[keep], axis=1)
    metrics = dict.fromkeys(STABILITY_METRICS, float("nan")) | {"n_kds": n, "n_zero_norm": held.shape[0] - n}
    arrays: dict[str, np.ndarray] = {"cosine": agreement}
    if curve:
        counts = sorted(curve)
        arrays |= {"cell_counts": np.asarray(counts, dtype=float),
                   "convergence": np.stack([_row_cosines(curve[s], flat_ref) for s in counts])}
    floor = permutation_floor(params.permutations, n)
    attainable = {"p_pearson": floor, "p_spearman": floor}
    reason = _too_few(n, params)
    if reason is not None:
        return ProbeResult(metrics=metrics, arrays=arrays, inconclusive=reason, attainable=attainable)
    gram = flat[keep] @ flat[keep].T
    jac_sim, _ = cosine_from_gram(gram)
    dy_sim = cosine_matrix(dy[keep])
    coh = coherence(jac_sim, dy_sim, rng, params.permutations)
    metrics |= {
        "agreement": float(agreement.mean()), "agreement_min": float(agreement.min()),
        "relative_change": float(change.mean()), "pearson": coh.mantel.pearson, "spearman": coh.mantel.spearman,
        "p_pearson": coh.mantel.p_pearson, "p_spearman": coh.mantel.p_spearman,
    }
    cis = {"agreement": bootstrap_mean_ci(agreement, rng, params.bootstrap)} | coh.cis()
    arrays |= {"jacobian": upper(jac_sim), "delta_y": upper(dy_sim)}
    return ProbeResult(metrics=metrics, cis=cis, arrays=arrays, attainable=attainable)
