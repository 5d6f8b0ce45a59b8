"""NB02, the rest: nearest-neighbour pathway purity of pert representations, and cross-model agreement.

Units are knockdowns: the purity null permutes set labels across knockdowns
(a random set of the same size), CIs resample members; the cross-model null
pairs each knockdown with a random *other* knockdown of the second model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from hypocheck.registry import ProbeResult, probe
from hypocheck.stats import compare_to_null, random_sets

from .setstats import CHUNK_ELEMENTS, bootstrap_mean_ci, cosine_matrix


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


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
    for start in range(0, n_sets, step):
        block = sets[start : start + step]
        inside = np.zeros((block.shape[0], n), dtype=bool)
        np.put_along_axis(inside, block, True, axis=1)
        hits = np.take_along_axis(inside, neighbours[block].reshape(block.shape[0], m * k), axis=1)
        out[start : start + step] = hits.mean(axis=1)
    return out


class NeighbourPurityParams(BaseModel):
    """Parameters of the nearest-neighbour purity test."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(5, ge=1, description="Nearest neighbours (by cosine, self excluded) per knockdown.")
    permutations: int = Field(2000, ge=1000, description="Label permutations (random sets of the same size).")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples of set members for the CI.")
    min_members: int = Field(5, ge=2, description="Fewer members than this → inconclusive.")


PURITY_METRICS = ("mean_purity", "null_mean_purity", "chance_purity", "delta_purity", "z", "p", "k", "n_members")


@probe(
    "pert_neighbour_purity",
    params=NeighbourPurityParams,
    axes=("model", "gene_set"),
    metrics=PURITY_METRICS,
    effect="delta_purity",
    p="p",
)
def pert_neighbour_purity(
    *, embeddings: np.ndarray, members: np.ndarray, names: Sequence[str] | None = None,
    params: NeighbourPurityParams, rng: np.random.Generator,
) -> ProbeResult:
    """Share of each member's k nearest neighbours (cosine) that are in the same set, vs permuted labels.

    ``embeddings`` is (knockdowns × hidden); ``members`` indexes the set;
    ``names`` labels the rows of the ``neighbours`` table (row indices when
    absent). Effect: ``delta_purity`` = mean purity − permutation-null mean, CI
    by bootstrap over members; ``chance_purity`` = (m − 1)/(n − 1).
    """
    members = np.asarray(members, dtype=int)
    sim = cosine_matrix(embeddings)
    n, m = sim.shape[0], members.size
    k = min(params.k, n - 1)
    nbrs = nearest_neighbours(sim, k)
    labels = [str(x) for x in (range(n) if names is None else names)]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} names for {n} knockdowns")
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
    }
    if m < params.min_members or m >= n or params.k >= n:
        reason = (f"{m} set members found; at least {params.min_members} are needed" if m < params.min_members
                  else f"{m} members of {n} knockdowns with k = {params.k}: no room for a permutation null")
        return ProbeResult(metrics=metrics, tables={"neighbours": table}, inconclusive=reason)
    purity = in_set[nbrs[members]].mean(axis=1)
    null = set_purity(nbrs, random_sets(rng, np.arange(n), m, params.permutations))
    test = compare_to_null(float(purity.mean()), null)
    lo, hi = bootstrap_mean_ci(purity, rng, params.bootstrap)
    metrics.update(mean_purity=test.observed, null_mean_purity=test.null_mean,
                   delta_purity=test.observed - test.null_mean, z=test.z, p=test.p)
    return ProbeResult(
        metrics=metrics,
        cis={"mean_purity": (lo, hi), "delta_purity": (lo - test.null_mean, hi - test.null_mean)},
        arrays={"purity": purity, "neighbours": nbrs},
        null=null,
        tables={"neighbours": table},
    )


class CrossModelParams(BaseModel):
    """Parameters of the cross-model same-knockdown cosine test."""

    model_config = ConfigDict(extra="forbid")
    permutations: int = Field(2000, ge=1000, description="Null draws pairing each KD with a random other KD.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples of knockdowns for the CI.")
    min_members: int = Field(5, ge=2, description="Fewer knockdowns than this → inconclusive.")


CROSS_METRICS = ("mean_cosine", "null_mean_cosine", "delta_cosine", "z", "p", "n_kds")


@probe("cross_model_cosine", params=CrossModelParams, axes=(), metrics=CROSS_METRICS, effect="mean_cosine", p="p")
def cross_model_cosine(
    *, embeddings_a: np.ndarray, embeddings_b: np.ndarray, members: np.ndarray | None = None,
    params: CrossModelParams, rng: np.random.Generator,
) -> ProbeResult:
    """Cosine of each knockdown's representation in model A with the same knockdown's in model B.

    Rows of ``embeddings_a`` and ``embeddings_b`` are the same knockdowns, in
    the same order, in the same hidden space; ``members`` restricts to a set
    (all knockdowns when absent). The null pairs KD *i* of A with a uniformly
    drawn other KD (of all) of B; CI by bootstrap over knockdowns.
    """
    a, b = _unit_rows(embeddings_a), _unit_rows(embeddings_b)
    if a.shape != b.shape:
        raise ValueError(f"embeddings of the two models differ in shape: {a.shape} vs {b.shape}")
    n = a.shape[0]
    idx = np.arange(n) if members is None else np.asarray(members, dtype=int)
    per_kd = np.einsum("ij,ij->i", a[idx], b[idx])
    nan = float("nan")
    metrics = dict.fromkeys(CROSS_METRICS, nan) | {"n_kds": float(idx.size)}
    if idx.size < params.min_members or n < 2:
        return ProbeResult(metrics=metrics, arrays={"cosine": per_kd},
                           inconclusive=f"{idx.size} knockdowns; at least {params.min_members} are needed")
    cross = a[idx] @ b.T  # (m × n): KD idx[i] of A against every KD of B
    partners = (idx[None, :] + rng.integers(1, n, size=(params.permutations, idx.size))) % n
    null = cross[np.arange(idx.size)[None, :], partners].mean(axis=1)
    test = compare_to_null(float(per_kd.mean()), null)
    lo, hi = bootstrap_mean_ci(per_kd, rng, params.bootstrap)
    metrics.update(mean_cosine=test.observed, null_mean_cosine=test.null_mean,
                   delta_cosine=test.observed - test.null_mean, z=test.z, p=test.p)
    return ProbeResult(
        metrics=metrics,
        cis={"mean_cosine": (lo, hi), "delta_cosine": (lo - test.null_mean, hi - test.null_mean)},
        arrays={"cosine": per_kd},
        null=null,
    )
