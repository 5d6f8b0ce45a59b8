"""NB02, the rest: nearest-neighbour pathway purity of pert representations, and cross-model agreement.

Units are knockdowns: the purity null permutes set labels across knockdowns
(a random set of the same size), CIs resample members; the cross-model nulls
pair each knockdown with a random *other* knockdown of the second model, and
turn the second model's space by a random rotation (a set that clusters in
both models moves as one unit: see ``cross_model_cosine``).

Purity has the magnitude confound of cosine clustering: knockdowns
with little effect all share the default direction, so they are each other's
nearest neighbours and a set of weak knockdowns looks "pure" against uniformly
permuted labels. The test of record therefore matches labels for effect
magnitude (‖ΔY‖) member by member — null member *i* is drawn from the
knockdowns next to set member *i* in the ‖ΔY‖ ranking, as in the matched clustering
nulls — with the uniform test reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from hypocheck.progress import stage
from hypocheck.registry import ProbeResult, probe
from hypocheck.stats import compare_to_null, empirical_p_floor, random_sets

from .kinds import PairedEmbeddings, SetEmbeddings
from .setstats import (
    CHUNK_ELEMENTS,
    MATCHED_NULL,
    MatchedNullParams,
    bootstrap_mean_ci,
    cosine_matrix,
    draw_matched_null,
    unit_rows,
)

MIN_DELTA_PURITY = 0.1
"""Minimum effect of interest on ``delta_purity`` for a claim that a set is pure: one in ten of a member's
nearest neighbours in the set beyond the matched null (with k = 5, one more in-set neighbour for every other
member). Less leaves each member's neighbourhood essentially that of a matched random set."""
MIN_CROSS_MODEL_COSINE = 0.1
"""Minimum effect of interest on ``mean_cosine`` for a claim that two models agree: a knockdown's two
representations share at least cos² = 1 % of their direction on average. Below that they do not "point the same
way" in any sense that carries over from one model to the other, however many knockdowns make it significant."""




def nearest_neighbours(sim: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most similar other rows of each row, most similar first (ties: lower index first)."""
    s = np.array(sim, dtype=np.float64)
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def set_purity(neighbours: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """Mean over each set's members of the share of their neighbours inside the set, for every row of ``sets``."""
    sets = np.atleast_2d(sets)
    n, k = neighbours.shape
    n_sets, m = sets.shape
    out = np.empty(n_sets)
    step = max(1, CHUNK_ELEMENTS // max(n, m * k))
    with stage("null sets (purity)", total=n_sets) as shown:
        for start in range(0, n_sets, step):
            block = sets[start : start + step]
            inside = np.zeros((block.shape[0], n), dtype=bool)
            np.put_along_axis(inside, block, True, axis=1)
            hits = np.take_along_axis(inside, neighbours[block].reshape(block.shape[0], m * k), axis=1)
            out[start : start + step] = hits.mean(axis=1)
            shown.update(block.shape[0])
    return out


class NeighbourPurityParams(MatchedNullParams):
    """Parameters of the nearest-neighbour purity test (uniform and magnitude-matched label draws)."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(5, ge=1, description="Nearest neighbours (by cosine, self excluded) per knockdown.")
    permutations: int = Field(2000, ge=1000, description="Label permutations in each null (uniform and matched).")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples of set members for the CI.")
    min_members: int = Field(5, ge=2, description="Fewer members than this → inconclusive.")


PURITY_METRICS = (
    "mean_purity", "null_mean_purity", "chance_purity", "z", "p", "delta_purity_uniform",
    "matched_null_mean_purity", "z_matched", "p_matched", "delta_purity", "match_neighbours", "k", "n_members",
    "null_candidates", "unmatched_members",
)


@probe(
    "pert_neighbour_purity",
    params=NeighbourPurityParams,
    takes=SetEmbeddings,
    axes=("model", "gene_set"),
    metrics=PURITY_METRICS,
    kinds={"p": ("p", "p_matched"), "observed": ("mean_purity",),
           "count": ("match_neighbours", "k", "n_members", "null_candidates", "unmatched_members"),
           "effect": ("z", "z_matched", "delta_purity_uniform")},
    effect="delta_purity",
    p="p_matched",
    min_effect=MIN_DELTA_PURITY,
    absence="below",
)
def pert_neighbour_purity(
    *, embeddings: np.ndarray, members: np.ndarray, magnitude: np.ndarray | None = None,
    names: Sequence[str] | None = None, null_excluded: np.ndarray | None = None, params: NeighbourPurityParams,
    rng: np.random.Generator,
) -> ProbeResult:
    """Share of each member's k nearest neighbours (cosine) that are in the same set, vs permuted labels.

    ``embeddings`` is (knockdowns × hidden); ``members`` indexes the set;
    ``magnitude`` is each knockdown's effect size ‖ΔY‖ (without it the matched
    metrics are NaN and the case is inconclusive); ``names`` labels the rows of
    the ``neighbours`` table (row indices when absent); ``null_excluded`` indexes knockdowns the matched
    labels are not drawn from (members of related gene sets; the set's own members stay candidates). Two nulls: labels
    permuted uniformly (``z``, ``p``, ``delta_purity_uniform``) and matched
    for ‖ΔY‖ member by member (``z_matched``, ``p_matched``, ``delta_purity``,
    the effect and p of record). Deltas are mean purity − the null's mean, CIs
    by bootstrap over members; ``chance_purity`` = (m − 1)/(n − 1). Minimum
    effect of interest for a claim of purity: ``delta_purity`` 0.1 (one in ten
    of a member's neighbours in the set beyond the matched null).
    """
    members = np.asarray(members, dtype=int)
    sim = cosine_matrix(embeddings)
    n, m = sim.shape[0], members.size
    k = min(params.k, n - 1)
    nbrs = nearest_neighbours(sim, k)
    labels = [str(x) for x in (range(n) if names is None else names)]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} names for {n} knockdowns")
    if magnitude is not None and np.shape(magnitude) != (n,):
        raise ValueError(f"magnitude has shape {np.shape(magnitude)}; expected ({n},)")
    in_set = np.zeros(n, dtype=bool)
    in_set[members] = True
    rows = np.repeat(np.arange(n), k)
    table = pd.DataFrame({
        "knockdown": np.asarray(labels, dtype=object)[rows], "rank": np.tile(np.arange(1, k + 1), n),
        "neighbour": np.asarray(labels, dtype=object)[nbrs.ravel()], "cosine": sim[rows, nbrs.ravel()],
        "knockdown_in_set": in_set[rows], "neighbour_in_set": in_set[nbrs.ravel()],
    })
    nan = float("nan")
    metrics = dict.fromkeys(PURITY_METRICS, nan) | {
        "k": float(k), "n_members": float(m), "chance_purity": (m - 1) / (n - 1) if n > 1 else nan,
        "match_neighbours": float(params.match_neighbours),
    }
    attainable = {"p": nan, "p_matched": nan}
    if m < params.min_members or m >= n or params.k >= n:
        too_few = (f"{m} set members found; at least {params.min_members} are needed" if m < params.min_members
                   else f"{m} members of {n} knockdowns with k = {params.k}: no room for a permutation null")
        return ProbeResult(metrics=metrics, tables={"neighbours": table}, inconclusive=too_few,
                           attainable=attainable)
    purity = in_set[nbrs[members]].mean(axis=1)
    lo, hi = bootstrap_mean_ci(purity, rng, params.bootstrap)
    uniform_null = set_purity(nbrs, random_sets(rng, np.arange(n), m, params.permutations))
    uniform = compare_to_null(float(purity.mean()), uniform_null)
    metrics.update(mean_purity=uniform.observed, null_mean_purity=uniform.null_mean, z=uniform.z, p=uniform.p,
                   delta_purity_uniform=uniform.observed - uniform.null_mean)
    cis = {"mean_purity": (lo, hi), "delta_purity_uniform": (lo - uniform.null_mean, hi - uniform.null_mean)}
    arrays = {"purity": purity, "neighbours": nbrs, "uniform_null": uniform_null}
    attainable["p"] = empirical_p_floor(uniform_null)
    null: np.ndarray = uniform_null
    reason: str | None = None
    draw = None if magnitude is None else draw_matched_null(
        rng, np.asarray(magnitude, dtype=float), members, params.permutations, params, null_excluded)
    if draw is not None:
        metrics.update(null_candidates=float(draw.candidates), unmatched_members=float(draw.unmatched))
    if draw is None:
        reason = "no effect magnitudes given: the magnitude-matched test cannot run"
    elif draw.sets is None:
        reason = draw.reason
    else:
        null_sets = draw.sets
        null = set_purity(nbrs, null_sets)
        matched = compare_to_null(uniform.observed, null)
        metrics.update(matched_null_mean_purity=matched.null_mean, z_matched=matched.z, p_matched=matched.p,
                       delta_purity=matched.observed - matched.null_mean)
        cis["delta_purity"] = (lo - matched.null_mean, hi - matched.null_mean)
        arrays["matched_null"] = null
        arrays["matched_sets"] = null_sets
        attainable["p_matched"] = empirical_p_floor(null)
    label = MATCHED_NULL if "matched_null" in arrays else "uniform null (random sets of the same size)"
    return ProbeResult(metrics=metrics, cis=cis, arrays=arrays, null=null, null_label=label,
                       tables={"neighbours": table}, inconclusive=reason, attainable=attainable)


class CrossModelParams(BaseModel):
    """Parameters of the cross-model same-knockdown cosine test."""

    model_config = ConfigDict(extra="forbid")
    permutations: int = Field(2000, ge=1000, description="Null draws pairing each KD with a random other KD.")
    rotations: int = Field(
        1000, ge=100, description="Null draws rotating model B's space by a uniformly random rotation (Haar)."
    )
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples of knockdowns for the CI.")
    min_members: int = Field(5, ge=2, description="Fewer knockdowns than this → inconclusive.")


CROSS_METRICS = (
    "mean_cosine", "null_mean_cosine", "delta_cosine", "z", "p_mismatched", "rotation_null_mean_cosine",
    "z_rotation", "p_rotation", "p", "n_kds",
)
ROTATION_CHUNK = 256


def rotation_null(a: np.ndarray, b: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of ``a_i · Q b_i`` over rows for ``n`` uniformly random (Haar) orthogonal ``Q`` (rows of unit length).

    Only ``U_aᵀ Q U_b`` matters, for orthonormal bases ``U_a``, ``U_b`` of the rows' spans (k = min(m, d)
    columns each), and for Haar ``Q`` it is distributed as the leading k × k block of a Haar matrix: the first
    k rows of a uniformly random k-frame, the Q factor of a d × k Gaussian (signs fixed by R's diagonal).
    Cost O(n·d·k²) instead of n full d × d rotations.
    """
    m, dim = a.shape
    if dim < 2:
        return np.full(n, np.nan)
    basis_a, basis_b = np.linalg.qr(a.T)[0], np.linalg.qr(b.T)[0]  # d × k
    k = basis_a.shape[1]
    alpha, beta = a @ basis_a, b @ basis_b  # m × k coordinates
    out = np.empty(n)
    with stage("rotation null draws", total=n) as shown:
        for start in range(0, n, ROTATION_CHUNK):
            size = min(ROTATION_CHUNK, n - start)
            frame, r = np.linalg.qr(rng.normal(size=(size, dim, k)))
            frame = frame * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
            out[start : start + size] = np.einsum("ia,rab,ib->r", alpha, frame[:, :k, :], beta) / m
            shown.update(size)
    return out


@probe("cross_model_cosine", params=CrossModelParams, takes=PairedEmbeddings, axes=(), metrics=CROSS_METRICS,
       kinds={"p": ("p_mismatched", "p_rotation", "p"), "observed": ("mean_cosine",), "count": ("n_kds",),
              "effect": ("delta_cosine", "z", "z_rotation")},
       effect="mean_cosine", p="p", min_effect=MIN_CROSS_MODEL_COSINE, absence="below")
def cross_model_cosine(
    *, embeddings_a: np.ndarray, embeddings_b: np.ndarray, members: np.ndarray | None = None,
    params: CrossModelParams, rng: np.random.Generator,
) -> ProbeResult:
    """Cosine of each knockdown's representation in model A with the same knockdown's in model B.

    Rows of ``embeddings_a`` and ``embeddings_b`` are the same knockdowns, in
    the same order, in the same hidden space; ``members`` restricts to a set
    (all knockdowns when absent). Two nulls, both one-sided:

    - *mismatched* (``z``, ``p_mismatched``): KD *i* of A paired with a
      uniformly drawn other KD (of all) of B — is a knockdown closer to itself
      than to other knockdowns?
    - *rotation* (``z_rotation``, ``p_rotation``): B's space turned by a
      uniformly random rotation — do the two spaces share coordinates at all?
      Members of a set that cluster in both models move together, so against
      the mismatched null alone a set is one unit counted m times: two
      clusters that happen to lie a little closer than the average pair of
      unrelated directions (unaligned spaces, e.g. models trained from
      independent initialisations) beat it. A rotation moves the whole set at
      once, so the set's own structure is in this null.

    ``p`` = max(``p_mismatched``, ``p_rotation``) (an intersection–union test:
    agreement must beat both nulls); CI of ``mean_cosine`` by bootstrap over
    knockdowns. Its smallest attainable value is the larger of the two nulls'
    floors. Minimum effect of interest for a claim of agreement: ``mean_cosine``
    0.1 (cos² = 1 % of a knockdown's direction shared between the models).
    """
    a, b = unit_rows(embeddings_a), unit_rows(embeddings_b)
    if a.shape != b.shape:
        raise ValueError(f"embeddings of the two models differ in shape: {a.shape} vs {b.shape}")
    n = a.shape[0]
    idx = np.arange(n) if members is None else np.asarray(members, dtype=int)
    per_kd = np.einsum("ij,ij->i", a[idx], b[idx])
    nan = float("nan")
    metrics = dict.fromkeys(CROSS_METRICS, nan) | {"n_kds": float(idx.size)}
    if idx.size < params.min_members or n < 2:
        return ProbeResult(metrics=metrics, arrays={"cosine": per_kd},
                           inconclusive=f"{idx.size} knockdowns; at least {params.min_members} are needed",
                           attainable=dict.fromkeys(("p", "p_mismatched", "p_rotation"), nan))
    cross = a[idx] @ b.T  # (m × n): KD idx[i] of A against every KD of B
    partners = (idx[None, :] + rng.integers(1, n, size=(params.permutations, idx.size))) % n
    null = cross[np.arange(idx.size)[None, :], partners].mean(axis=1)
    test = compare_to_null(float(per_kd.mean()), null)
    rotated = rotation_null(a[idx], b[idx], params.rotations, rng)
    rotation = compare_to_null(test.observed, rotated)
    lo, hi = bootstrap_mean_ci(per_kd, rng, params.bootstrap)
    metrics.update(mean_cosine=test.observed, null_mean_cosine=test.null_mean,
                   delta_cosine=test.observed - test.null_mean, z=test.z, p_mismatched=test.p,
                   rotation_null_mean_cosine=rotation.null_mean, z_rotation=rotation.z, p_rotation=rotation.p,
                   p=max(test.p, rotation.p))
    return ProbeResult(
        metrics=metrics,
        cis={"mean_cosine": (lo, hi), "delta_cosine": (lo - test.null_mean, hi - test.null_mean)},
        arrays={"cosine": per_kd, "rotation_null": rotated},
        null=null,
        null_label="mismatched-partner null (each knockdown paired with another knockdown of the other model)",
        attainable={"p_mismatched": empirical_p_floor(null), "p_rotation": empirical_p_floor(rotated),
                    "p": max(empirical_p_floor(null), empirical_p_floor(rotated))},
    )
