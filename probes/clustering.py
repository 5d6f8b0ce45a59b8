"""NB01: output / SAE clustering — do knockdowns of one pathway move the model's output the same way?

Cosine ignores magnitude: knockdowns with little or no effect all share the
model's default output direction, so any set of them looks "clustered" against
uniformly drawn random sets. Both probes here therefore also draw null sets
*matched for effect magnitude* (null member *i* is drawn from a window of the
‖ΔY‖ ranking centred on set member *i*) and judge on that matched test; the uniform
test is kept beside it for comparison with the original analysis. The matched
null leaves out the knockdowns of gene sets related to the tested one (by
default every other configured set): two sets of one program share its
magnitude, and drawing one's null from the other would absorb the program.

Perturbed outputs also share a shift common to all perturbations (systematic
variation; Viñas Torné et al., "Systema", Nature Biotechnology 2025): the
*specific* metrics repeat the matched test after subtracting the mean feature
vector over all knockdowns, so only what is particular to the set's
perturbations can make it cluster.
"""

from __future__ import annotations

import numpy as np
from pydantic import ConfigDict, Field

from hypocheck.registry import ProbeResult, probe
from hypocheck.stats import empirical_p_floor

from .kinds import LayerFeatures
from .setstats import (
    MATCHED_NULL,
    MatchedNullParams,
    SetClustering,
    cosine_matrix,
    draw_matched_null,
    set_clustering_vectorised,
)

MIN_DELTA_COSINE = 0.05
"""Minimum effect of interest on ``delta_cosine`` for a claim that a set clusters: members sharing a common
direction that carries 5 % of each member's squared norm (unit vectors √c·shared + √(1 − c)·own have pairwise
cosine c) beyond what magnitude-matched sets share. Smaller gains are within what the choice of layer, SAE or
cell sentence moves."""




class OutputClusteringParams(MatchedNullParams):
    """Parameters of the output-clustering test (uniform and magnitude-matched nulls)."""

    model_config = ConfigDict(extra="forbid")
    null_sets: int = Field(5000, ge=100, description="Random knockdown sets in each null (uniform and matched).")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples of set members for the CI.")
    min_members: int = Field(5, ge=2, description="Fewer members than this → inconclusive.")
    floor_quantile: float = Field(
        0.1, gt=0, lt=1,
        description="When no no-effect floor is given: the floor is the median ‖ΔY‖ of this lowest share of KDs.",
    )


class OutputAbsenceParams(OutputClusteringParams):
    """Parameters of the absence report: the effect size whose detection power is reported beside the verdict."""

    reference_effect: float = Field(
        ..., gt=0, description="A delta_cosine of this size (e.g. the one seen in mitochondrial sets): the power "
        "to detect it and whether the CI excludes it are reported.",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="Level of the power calculation.")
    target_power: float = Field(0.8, gt=0, lt=1, description="The power minimal_detectable_effect is reported at.")


CLUSTERING_METRICS = (
    "within_mean_cosine", "null_mean_cosine", "z", "p", "delta_cosine_uniform", "matched_null_mean_cosine",
    "z_matched", "p_matched", "delta_cosine", "within_cosine_specific", "matched_null_mean_cosine_specific",
    "z_specific", "p_specific", "delta_cosine_specific", "set_magnitude", "matched_set_magnitude",
    "noeffect_floor", "magnitude_ratio", "match_neighbours", "n_members", "null_candidates", "unmatched_members",
)
ABSENCE_METRICS = (*CLUSTERING_METRICS, "reference_effect", "power", "minimal_detectable_effect",
                   "reference_excluded")
P_METRICS = ("p", "p_matched", "p_specific")
CLUSTERING_KINDS = {"p": P_METRICS, "observed": ("within_mean_cosine",),
                    "count": ("match_neighbours", "n_members", "null_candidates", "unmatched_members"),
                    "effect": ("z", "z_matched", "z_specific", "delta_cosine_uniform", "delta_cosine_specific")}
ABSENCE_KINDS = CLUSTERING_KINDS


def noeffect_floor_of(magnitude: np.ndarray, quantile: float) -> float:
    """Median ‖ΔY‖ of the lowest ``quantile`` share of knockdowns: the magnitude of 'no effect'."""
    mag = np.sort(np.asarray(magnitude, dtype=float))
    return float(np.median(mag[: max(1, round(quantile * mag.size))]))


def specific_features(features: np.ndarray) -> np.ndarray:
    """Features less the mean feature vector over all knockdowns: the shift common to every perturbation
    removed, what is specific to each one left."""
    features = np.asarray(features, dtype=float)
    return features - features.mean(axis=0, keepdims=True)


def _metrics(
    features: np.ndarray, members: np.ndarray, magnitude: np.ndarray, floor: float | None,
    excluded: np.ndarray | None, params: OutputClusteringParams, rng: np.random.Generator,
) -> tuple[dict[str, float], str | None, np.ndarray, np.ndarray | None]:
    """Descriptive metrics (all NaN where undefined), an inconclusive reason, the similarity, the matched
    null sets."""
    nan = float("nan")
    magnitude = np.asarray(magnitude, dtype=float)
    if magnitude.shape != (features.shape[0],):
        raise ValueError(f"magnitude has shape {magnitude.shape}; expected ({features.shape[0]},)")
    floor = noeffect_floor_of(magnitude, params.floor_quantile) if floor is None else float(floor)
    set_mag = float(np.median(magnitude[members])) if members.size else nan
    metrics = dict.fromkeys(CLUSTERING_METRICS, nan) | {
        "set_magnitude": set_mag, "noeffect_floor": floor, "match_neighbours": float(params.match_neighbours),
        "magnitude_ratio": set_mag / floor if floor > 0 else nan, "n_members": float(members.size),
    }
    sim = cosine_matrix(features)
    if members.size < params.min_members:
        return metrics, f"{members.size} set members found; at least {params.min_members} are needed", sim, None
    spread = float(np.abs(features - features[:1]).max()) if features.size else 0.0
    if spread <= 1e-9 * max(float(np.abs(features).max()), 1e-30):
        return metrics, (f"all {features.shape[0]} knockdowns have the same features (the model predicts one change "
                         "for every knockdown): no set can cluster apart from the rest"), sim, None
    directed = int((np.linalg.norm(features[members], axis=1) > 0).sum())
    if directed < params.min_members:
        return metrics, (f"{members.size - directed} of the {members.size} set members have all-zero features (no "
                         "predicted change): their directions, and so their clustering, are undefined"), sim, None
    draw = draw_matched_null(rng, magnitude, members, params.null_sets, params, excluded)
    metrics.update(null_candidates=float(draw.candidates), unmatched_members=float(draw.unmatched))
    if draw.sets is None:
        return metrics, draw.reason, sim, None
    metrics["matched_set_magnitude"] = float(np.median(np.median(magnitude[draw.sets], axis=1)))
    return metrics, None, sim, draw.sets


def _run_tests(
    features: np.ndarray, sim: np.ndarray, members: np.ndarray, null_sets: np.ndarray,
    params: OutputClusteringParams, rng: np.random.Generator, metrics: dict[str, float],
) -> tuple[SetClustering, SetClustering, SetClustering, np.ndarray]:
    """The uniform, the magnitude-matched and the specific (common shift removed, same matched null sets)
    tests; fills their metrics in."""
    uniform = set_clustering_vectorised(sim, members, rng, params.null_sets, params.bootstrap)
    matched = set_clustering_vectorised(sim, members, rng, params.null_sets, params.bootstrap, null_sets=null_sets)
    sim_specific = cosine_matrix(specific_features(features))
    specific = set_clustering_vectorised(sim_specific, members, rng, params.null_sets, params.bootstrap,
                                         null_sets=null_sets)
    metrics.update(
        within_mean_cosine=uniform.within, null_mean_cosine=uniform.test.null_mean, z=uniform.test.z,
        p=uniform.test.p, delta_cosine_uniform=uniform.within - uniform.test.null_mean,
        matched_null_mean_cosine=matched.test.null_mean, z_matched=matched.test.z,
        p_matched=matched.test.p, delta_cosine=matched.within - matched.test.null_mean,
        within_cosine_specific=specific.within, matched_null_mean_cosine_specific=specific.test.null_mean,
        z_specific=specific.test.z, p_specific=specific.test.p,
        delta_cosine_specific=specific.within - specific.test.null_mean,
    )
    return uniform, matched, specific, sim_specific


def _attainable(uniform: SetClustering, matched: SetClustering, specific: SetClustering) -> dict[str, float]:
    return {"p": empirical_p_floor(uniform.null), "p_matched": empirical_p_floor(matched.null),
            "p_specific": empirical_p_floor(specific.null)}


def _attainable_nan() -> dict[str, float]:
    return dict.fromkeys(P_METRICS, float("nan"))


@probe(
    "output_set_clustering",
    params=OutputClusteringParams,
    takes=LayerFeatures,
    axes=("model", "cell_line", "gene_set"),
    metrics=CLUSTERING_METRICS,
    kinds=CLUSTERING_KINDS,
    effect="delta_cosine",
    p="p_matched",
    min_effect=MIN_DELTA_COSINE,
    absence="below",
)
def output_set_clustering(
    *, features: np.ndarray, members: np.ndarray, magnitude: np.ndarray, noeffect_floor: float | None = None,
    null_excluded: np.ndarray | None = None, params: OutputClusteringParams, rng: np.random.Generator,
) -> ProbeResult:
    """Within-set mean cosine of per-KD output features vs uniform and magnitude-matched random KD sets.

    ``features`` is (knockdowns × d): layer activations or SAE features averaged
    over the control sentence; ``members`` indexes the set's knockdowns;
    ``magnitude`` is ‖ΔY_k‖ per knockdown; ``noeffect_floor`` the ‖ΔY‖ of a
    knockdown without effect (computed from ``magnitude`` when not given, see
    ``params.floor_quantile``); ``null_excluded`` indexes knockdowns the matched null does not draw (members of
    related gene sets; the set's own members stay candidates). Effect: ``delta_cosine`` = within − matched-null
    mean, with a bootstrap CI over members; p: the matched test's. Minimum
    effect of interest for a claim of clustering: ``delta_cosine`` 0.05 (a
    shared direction carrying 5 % of each member's squared norm beyond what
    magnitude-matched sets share). ``*_specific``: the same matched test after
    subtracting the mean feature vector over all knockdowns (the shift every
    perturbation shares).
    """
    features = np.asarray(features, dtype=float)
    members = np.asarray(members, dtype=int)
    metrics, reason, sim, null_sets = _metrics(features, members, magnitude, noeffect_floor, null_excluded, params, rng)
    if null_sets is None:
        return ProbeResult(metrics=metrics, inconclusive=reason, attainable=_attainable_nan())
    uniform, matched, specific, sim_specific = _run_tests(features, sim, members, null_sets, params, rng, metrics)
    return ProbeResult(
        metrics=metrics,
        cis={"delta_cosine": matched.ci, "delta_cosine_uniform": uniform.ci, "delta_cosine_specific": specific.ci},
        null=matched.null,
        null_label=MATCHED_NULL,
        arrays={"uniform_null": uniform.null, "matched_null": matched.null, "specific_null": specific.null,
                "matched_sets": null_sets, "similarity": sim, "similarity_specific": sim_specific},
        attainable=_attainable(uniform, matched, specific),
    )


def detection_power(null: np.ndarray, shift: float, alpha: float) -> float:
    """Share of null draws that a location shift by ``shift`` lifts above the null's (1 − alpha) quantile
    (0 when the null has too few draws for any p below ``alpha``)."""
    null = np.asarray(null, dtype=float)
    if not empirical_p_floor(null) < alpha:
        return 0.0
    return float(np.mean(null + shift > np.quantile(null, 1 - alpha)))


def minimal_detectable_effect(null: np.ndarray, alpha: float, power: float) -> float:
    """The smallest location shift detected with ``power`` at ``alpha``: q(1 − alpha) − q(1 − power) of the null."""
    null = np.asarray(null, dtype=float)
    return float(np.quantile(null, 1 - alpha) - np.quantile(null, 1 - power))


@probe(
    "output_set_absence",
    params=OutputAbsenceParams,
    takes=LayerFeatures,
    axes=("model", "cell_line", "gene_set"),
    metrics=ABSENCE_METRICS,
    kinds=ABSENCE_KINDS,
    effect="delta_cosine",
    p="p_matched",
    min_effect=MIN_DELTA_COSINE,
    absence="below",
)
def output_set_absence(
    *, features: np.ndarray, members: np.ndarray, magnitude: np.ndarray, noeffect_floor: float | None = None,
    null_excluded: np.ndarray | None = None, params: OutputAbsenceParams, rng: np.random.Generator,
) -> ProbeResult:
    """Is output clustering *absent*? The clustering test, with its power against a reference effect beside it.

    Inputs and effect as ``output_set_clustering`` (``delta_cosine`` beyond the magnitude-matched null, its
    bootstrap CI). A claim of absence (``absence: true``) is decided by the engine's rule on that CI against
    the margin (default: the minimum effect of interest, as for presence), never by the point null's p.
    Reported beside it: ``power``, the chance that an effect of ``reference_effect`` (the size the
    mitochondrial sets show) would be detected; ``minimal_detectable_effect``, the delta detected with
    ``target_power``; ``reference_excluded`` (1 when the CI lies below ``reference_effect``).
    """
    features = np.asarray(features, dtype=float)
    members = np.asarray(members, dtype=int)
    metrics, reason, sim, null_sets = _metrics(features, members, magnitude, noeffect_floor, null_excluded, params, rng)
    metrics.update(reference_effect=params.reference_effect, power=float("nan"),
                   minimal_detectable_effect=float("nan"), reference_excluded=float("nan"))
    if null_sets is None:
        return ProbeResult(metrics=metrics, inconclusive=reason, attainable=_attainable_nan())
    uniform, matched, specific, sim_specific = _run_tests(features, sim, members, null_sets, params, rng, metrics)
    ci = matched.ci
    power = detection_power(matched.null, params.reference_effect, params.alpha)
    metrics.update(power=power, reference_excluded=float(ci[1] < params.reference_effect),
                   minimal_detectable_effect=minimal_detectable_effect(matched.null, params.alpha,
                                                                       params.target_power))
    return ProbeResult(
        metrics=metrics,
        cis={"delta_cosine": ci, "delta_cosine_uniform": uniform.ci, "delta_cosine_specific": specific.ci},
        null=matched.null,
        null_label=MATCHED_NULL,
        arrays={"uniform_null": uniform.null, "matched_null": matched.null, "specific_null": specific.null,
                "matched_sets": null_sets, "similarity": sim, "similarity_specific": sim_specific},
        attainable=_attainable(uniform, matched, specific),
    )
