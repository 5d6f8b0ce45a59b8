"""NB02: pert-embedding geometry — do knockdowns of one pathway point the same way in pert_encoder space?

The original compared the within-set cosine with the background over all
knockdown pairs. Knockdowns with no effect are all pulled towards the same
"do nothing" representation during training, so a set of them looks clustered
against uniformly drawn sets too; the test of record therefore draws null sets
matched for effect magnitude ‖ΔY‖ member by member (as NB01 does: null member *i*
from the knockdowns next to set member *i* in the ‖ΔY‖ ranking), with the uniform test
beside it.
"""

from __future__ import annotations

import numpy as np
from pydantic import ConfigDict, Field

from hypocheck.registry import ProbeResult, probe
from hypocheck.stats import empirical_p_floor

from .clustering import MIN_DELTA_COSINE
from .kinds import SetEmbeddings
from .setstats import (
    MATCHED_NULL,
    MatchedNullParams,
    background_mean,
    cosine_matrix,
    draw_matched_null,
    set_clustering_vectorised,
)

EMBEDDING_METRICS = (
    "within_mean_cosine", "background_mean_cosine", "null_mean_cosine", "z", "p", "delta_cosine_uniform",
    "matched_null_mean_cosine", "z_matched", "p_matched", "delta_cosine", "n_members", "null_candidates",
    "unmatched_members",
)


class EmbeddingClusteringParams(MatchedNullParams):
    """Parameters of the within-set cosine test."""

    model_config = ConfigDict(extra="forbid")
    null_sets: int = Field(1000, ge=100, description="Random knockdown sets in each null (uniform and matched).")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples of set members for the CI.")
    min_members: int = Field(5, ge=2, description="Fewer members than this → inconclusive.")


@probe(
    "pert_embedding_clustering",
    params=EmbeddingClusteringParams,
    takes=SetEmbeddings,
    axes=("model", "gene_set"),
    metrics=EMBEDDING_METRICS,
    kinds={"p": ("p", "p_matched"), "observed": ("within_mean_cosine",),
           "count": ("n_members", "null_candidates", "unmatched_members"),
           "effect": ("z", "z_matched", "delta_cosine_uniform")},
    effect="delta_cosine",
    p="p_matched",
    min_effect=MIN_DELTA_COSINE,
    absence="below",
)
def pert_embedding_clustering(
    *, embeddings: np.ndarray, members: np.ndarray, magnitude: np.ndarray | None = None,
    null_excluded: np.ndarray | None = None, params: EmbeddingClusteringParams, rng: np.random.Generator,
) -> ProbeResult:
    """Within-set mean cosine of pert representations vs size-matched and magnitude-matched random sets.

    ``embeddings`` is (knockdowns × hidden), one pert_encoder output per
    knockdown (control excluded); ``members`` indexes the set; ``magnitude``
    is each knockdown's effect size ‖ΔY‖ (without it the matched metrics are
    NaN and the case cannot be judged on them); ``null_excluded`` indexes knockdowns the matched null does
    not draw (members of related gene sets; the set's own members stay candidates). Minimum effect of interest for
    a claim of clustering: ``delta_cosine`` 0.05 (a shared direction carrying
    5 % of each member's squared norm beyond what magnitude-matched sets share).
    """
    members = np.asarray(members, dtype=int)
    sim = cosine_matrix(embeddings)
    metrics = dict.fromkeys(EMBEDDING_METRICS, float("nan")) | {
        "background_mean_cosine": background_mean(sim), "n_members": float(members.size),
    }
    attainable = {"p": float("nan"), "p_matched": float("nan")}
    if members.size < params.min_members:
        return ProbeResult(metrics=metrics, arrays={"similarity": sim}, attainable=attainable,
                           inconclusive=f"{members.size} set members found; at least {params.min_members} are needed")
    uniform = set_clustering_vectorised(sim, members, rng, params.null_sets, params.bootstrap)
    metrics |= {
        "within_mean_cosine": uniform.within, "null_mean_cosine": uniform.test.null_mean, "z": uniform.test.z,
        "p": uniform.test.p, "delta_cosine_uniform": uniform.within - uniform.test.null_mean,
    }
    attainable["p"] = empirical_p_floor(uniform.null)
    cis = {"delta_cosine_uniform": uniform.ci}
    null = uniform.null
    inconclusive = None
    if magnitude is None:
        inconclusive = "no effect magnitudes given: the magnitude-matched test cannot run"
    else:
        magnitude = np.asarray(magnitude, dtype=float)
        if magnitude.shape != (sim.shape[0],):
            raise ValueError(f"magnitude has shape {magnitude.shape}; expected ({sim.shape[0]},)")
        draw = draw_matched_null(rng, magnitude, members, params.null_sets, params, null_excluded)
        metrics |= {"null_candidates": float(draw.candidates), "unmatched_members": float(draw.unmatched)}
        if draw.sets is None:
            inconclusive = draw.reason
        else:
            matched = set_clustering_vectorised(sim, members, rng, params.null_sets, params.bootstrap,
                                                null_sets=draw.sets)
            metrics |= {"matched_null_mean_cosine": matched.test.null_mean, "z_matched": matched.test.z,
                        "p_matched": matched.test.p, "delta_cosine": matched.within - matched.test.null_mean}
            cis["delta_cosine"] = matched.ci
            null = matched.null
            attainable["p_matched"] = empirical_p_floor(matched.null)
    label = MATCHED_NULL if "p_matched" in attainable else "uniform null (random sets of the same size)"
    return ProbeResult(metrics=metrics, cis=cis, null=null, null_label=label, arrays={"similarity": sim},
                       inconclusive=inconclusive,
                       attainable=attainable)
