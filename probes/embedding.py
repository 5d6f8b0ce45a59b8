"""NB02: pert-embedding geometry — do knockdowns of one pathway point the same way in pert_encoder space?"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hypocheck.registry import ProbeResult, probe

from .setstats import background_mean, cosine_matrix, set_clustering


class EmbeddingClusteringParams(BaseModel):
    """Parameters of the within-set cosine test."""

    model_config = ConfigDict(extra="forbid")
    null_sets: int = Field(1000, ge=100, description="Size-matched random knockdown sets in the null.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples of set members for the CI.")
    min_members: int = Field(5, ge=2, description="Fewer members than this → inconclusive.")


@probe(
    "pert_embedding_clustering",
    params=EmbeddingClusteringParams,
    axes=("model", "gene_set"),
    metrics=("within_mean_cosine", "background_mean_cosine", "null_mean_cosine", "delta_cosine", "z", "p",
             "n_members"),
    effect="delta_cosine",
    p="p",
)
def pert_embedding_clustering(
    *, embeddings: np.ndarray, members: np.ndarray, params: EmbeddingClusteringParams, rng: np.random.Generator
) -> ProbeResult:
    """Within-set mean cosine of pert representations vs size-matched random knockdown sets.

    ``embeddings`` is (knockdowns × hidden) — one pert_encoder output per
    knockdown, control excluded; ``members`` indexes the set's knockdowns.
    """
    members = np.asarray(members, dtype=int)
    sim = cosine_matrix(embeddings)
    background = background_mean(sim)
    if members.size < params.min_members:
        nan = float("nan")
        return ProbeResult(
            metrics={"within_mean_cosine": nan, "background_mean_cosine": background, "null_mean_cosine": nan,
                     "delta_cosine": nan, "z": nan, "p": nan, "n_members": members.size},
            inconclusive=f"{members.size} set members found; at least {params.min_members} are needed",
        )
    res = set_clustering(sim, members, rng, params.null_sets, params.bootstrap)
    return ProbeResult(
        metrics={
            "within_mean_cosine": res.within,
            "background_mean_cosine": background,
            "null_mean_cosine": res.test.null_mean,
            "delta_cosine": res.within - res.test.null_mean,
            "z": res.test.z,
            "p": res.test.p,
            "n_members": members.size,
        },
        cis={"delta_cosine": res.ci},
        null=res.null,
        arrays={"similarity": sim},
    )
