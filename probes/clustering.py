"""NB01: output / SAE clustering — do knockdowns of one pathway move the model's output the same way?

Cosine ignores magnitude: knockdowns with little or no effect all share the
model's default output direction, so any set of them looks "clustered" against
uniformly drawn random sets. Both probes here therefore also draw null sets
*matched for effect magnitude* (member *i* of every null set comes from the same
‖ΔY‖ quantile bin as member *i* of the set) and judge on that matched test; the
uniform test is kept beside it for comparison with the original analysis.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hypocheck.registry import ProbeResult, probe

from .setstats import SetClustering, cosine_matrix, matched_bins, set_clustering_vectorised


class OutputFeatureInputs(BaseModel):
    """How the per-knockdown output features are made."""

    model_config = ConfigDict(extra="forbid")
    layer: int | None = Field(None, ge=1, description="Backbone block (1-based); default: the SAE's layer, "
                                                        "else the middle block.")
    features: Literal["auto", "sae", "residual"] = Field(
        "auto", description="SAE features of the residual stream, or the stream itself (auto: SAE features when "
                            "an SAE for this model is configured).")


class OutputClusteringParams(BaseModel):
    """Parameters of the output-clustering test (uniform and magnitude-matched nulls)."""

    model_config = ConfigDict(extra="forbid")
    null_sets: int = Field(5000, ge=100, description="Random knockdown sets in each null (uniform and matched).")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples of set members for the CI.")
    min_members: int = Field(5, ge=2, description="Fewer members than this → inconclusive.")
    magnitude_bins: int = Field(
        10, ge=2, le=20, description="‖ΔY‖ quantile bins for the matched null; fewer are used if a bin is crowded."
    )
    min_stratum_ratio: float = Field(
        2.0, ge=1.0,
        description="Each bin must hold at least this many times as many knockdowns as the set draws from it; "
        "bins are merged (fewer bins) until it does, else the case is inconclusive.",
    )
    floor_quantile: float = Field(
        0.1, gt=0, lt=1,
        description="When no no-effect floor is given: the floor is the median ‖ΔY‖ of this lowest share of KDs.",
    )


class OutputAbsenceParams(OutputClusteringParams):
    """Parameters of the absence test: the effect size that would have had to be detected."""

    reference_effect: float = Field(
        ..., gt=0, description="A delta_cosine of this size (e.g. the one seen in mitochondrial sets) must be "
        "excluded by the CI for absence to be shown.",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="Level of the matched test and of the power calculation.")
    target_power: float = Field(0.8, gt=0, lt=1, description="Power below this → the absence is inconclusive.")


CLUSTERING_METRICS = (
    "within_mean_cosine", "null_mean_cosine", "z", "p", "delta_cosine_uniform", "matched_null_mean_cosine",
    "z_matched", "p_matched", "delta_cosine", "set_magnitude", "noeffect_floor", "magnitude_ratio",
    "n_magnitude_bins", "n_members",
)
ABSENCE_METRICS = (*CLUSTERING_METRICS, "reference_effect", "power", "minimal_detectable_effect",
                   "reference_excluded")


def noeffect_floor_of(magnitude: np.ndarray, quantile: float) -> float:
    """Median ‖ΔY‖ of the lowest ``quantile`` share of knockdowns: the magnitude of 'no effect'."""
    mag = np.sort(np.asarray(magnitude, dtype=float))
    return float(np.median(mag[: max(1, round(quantile * mag.size))]))


def _metrics(
    features: np.ndarray, members: np.ndarray, magnitude: np.ndarray, floor: float | None,
    params: OutputClusteringParams,
) -> tuple[dict[str, float], str | None, np.ndarray, np.ndarray | None]:
    """Descriptive metrics (all NaN where undefined), an inconclusive reason, the similarity and the bins."""
    nan = float("nan")
    magnitude = np.asarray(magnitude, dtype=float)
    if magnitude.shape != (features.shape[0],):
        raise ValueError(f"magnitude has shape {magnitude.shape}; expected ({features.shape[0]},)")
    floor = noeffect_floor_of(magnitude, params.floor_quantile) if floor is None else float(floor)
    set_mag = float(np.median(magnitude[members])) if members.size else nan
    metrics = dict.fromkeys(CLUSTERING_METRICS, nan) | {
        "set_magnitude": set_mag, "noeffect_floor": floor,
        "magnitude_ratio": set_mag / floor if floor > 0 else nan, "n_members": float(members.size),
    }
    sim = cosine_matrix(features)
    if members.size < params.min_members:
        return metrics, f"{members.size} set members found; at least {params.min_members} are needed", sim, None
    strata = matched_bins(magnitude, members, params.magnitude_bins, params.min_stratum_ratio)
    if strata is None:
        reason = (f"the set ({members.size} of {magnitude.size} knockdowns) is too large to draw magnitude-matched "
                  f"null sets with {params.min_stratum_ratio}× spare knockdowns per bin")
        return metrics, reason, sim, None
    return metrics, None, sim, strata


def _run_tests(
    sim: np.ndarray, members: np.ndarray, strata: np.ndarray, params: OutputClusteringParams,
    rng: np.random.Generator, metrics: dict[str, float],
) -> tuple[SetClustering, SetClustering]:
    """The uniform and the magnitude-matched test; fills their metrics in."""
    uniform = set_clustering_vectorised(sim, members, rng, params.null_sets, params.bootstrap)
    matched = set_clustering_vectorised(sim, members, rng, params.null_sets, params.bootstrap,
                                        member_strata=strata[members], pool_strata=strata)
    metrics.update(
        within_mean_cosine=uniform.within, null_mean_cosine=uniform.test.null_mean, z=uniform.test.z,
        p=uniform.test.p, delta_cosine_uniform=uniform.within - uniform.test.null_mean,
        matched_null_mean_cosine=matched.test.null_mean, z_matched=matched.test.z,
        p_matched=matched.test.p, delta_cosine=matched.within - matched.test.null_mean,
        n_magnitude_bins=float(strata.max() + 1),
    )
    return uniform, matched


@probe(
    "output_set_clustering",
    params=OutputClusteringParams,
    inputs=OutputFeatureInputs,
    axes=("model", "cell_line", "gene_set"),
    metrics=CLUSTERING_METRICS,
    effect="delta_cosine",
    p="p_matched",
)
def output_set_clustering(
    *, features: np.ndarray, members: np.ndarray, magnitude: np.ndarray, noeffect_floor: float | None = None,
    params: OutputClusteringParams, rng: np.random.Generator,
) -> ProbeResult:
    """Within-set mean cosine of per-KD output features vs uniform and magnitude-matched random KD sets.

    ``features`` is (knockdowns × d): layer activations or SAE features averaged
    over the control sentence; ``members`` indexes the set's knockdowns;
    ``magnitude`` is ‖ΔY_k‖ per knockdown; ``noeffect_floor`` the ‖ΔY‖ of a
    knockdown without effect (computed from ``magnitude`` when not given, see
    ``params.floor_quantile``). Effect: ``delta_cosine`` = within − matched-null
    mean, with a bootstrap CI over members; p: the matched test's.
    """
    features = np.asarray(features, dtype=float)
    members = np.asarray(members, dtype=int)
    metrics, reason, sim, strata = _metrics(features, members, magnitude, noeffect_floor, params)
    if strata is None:
        return ProbeResult(metrics=metrics, inconclusive=reason)
    uniform, matched = _run_tests(sim, members, strata, params, rng, metrics)
    return ProbeResult(
        metrics=metrics,
        cis={"delta_cosine": matched.ci, "delta_cosine_uniform": uniform.ci},
        null=matched.null,
        arrays={"uniform_null": uniform.null, "matched_null": matched.null, "similarity": sim},
    )


def detection_power(null: np.ndarray, shift: float, alpha: float) -> float:
    """Share of null draws that a location shift by ``shift`` lifts above the null's (1 − alpha) quantile."""
    null = np.asarray(null, dtype=float)
    return float(np.mean(null + shift > np.quantile(null, 1 - alpha)))


def minimal_detectable_effect(null: np.ndarray, alpha: float, power: float) -> float:
    """The smallest location shift detected with ``power`` at ``alpha``: q(1 − alpha) − q(1 − power) of the null."""
    null = np.asarray(null, dtype=float)
    return float(np.quantile(null, 1 - alpha) - np.quantile(null, 1 - power))


@probe(
    "output_set_absence",
    params=OutputAbsenceParams,
    inputs=OutputFeatureInputs,
    axes=("model", "cell_line", "gene_set"),
    metrics=ABSENCE_METRICS,
    effect="delta_cosine",
    p="p_matched",
)
def output_set_absence(
    *, features: np.ndarray, members: np.ndarray, magnitude: np.ndarray, noeffect_floor: float | None = None,
    params: OutputAbsenceParams, rng: np.random.Generator,
) -> ProbeResult:
    """Is output clustering *absent*? The matched test plus the CI and power against a reference effect.

    Inputs as ``output_set_clustering``. Absence is shown only when the matched
    test is not significant, the CI of ``delta_cosine`` lies below
    ``reference_effect`` (``reference_excluded`` = 1) and an effect of that size
    would have been detected (``power`` ≥ ``target_power``); when the test is not
    significant but either of the other two fails, the result is inconclusive.
    ``minimal_detectable_effect`` is the delta detected with ``target_power``.
    """
    features = np.asarray(features, dtype=float)
    members = np.asarray(members, dtype=int)
    metrics, reason, sim, strata = _metrics(features, members, magnitude, noeffect_floor, params)
    metrics.update(reference_effect=params.reference_effect, power=float("nan"),
                   minimal_detectable_effect=float("nan"), reference_excluded=float("nan"))
    if strata is None:
        return ProbeResult(metrics=metrics, inconclusive=reason)
    uniform, matched = _run_tests(sim, members, strata, params, rng, metrics)
    ci = matched.ci
    power = detection_power(matched.null, params.reference_effect, params.alpha)
    excluded = bool(ci[1] < params.reference_effect)
    metrics.update(power=power, reference_excluded=float(excluded),
                   minimal_detectable_effect=minimal_detectable_effect(matched.null, params.alpha,
                                                                       params.target_power))
    reason = None
    if not metrics["p_matched"] < params.alpha:
        gaps = []
        if not excluded:
            gaps.append(f"the 95% CI of delta_cosine [{ci[0]:.3g}, {ci[1]:.3g}] reaches the reference effect "
                        f"{params.reference_effect:g}")
        if power < params.target_power:
            gaps.append(f"an effect of {params.reference_effect:g} would be detected with power {power:.2f} "
                        f"< {params.target_power:g}")
        reason = "; ".join(gaps) or None
    return ProbeResult(
        metrics=metrics,
        cis={"delta_cosine": ci, "delta_cosine_uniform": uniform.ci},
        null=matched.null,
        arrays={"uniform_null": uniform.null, "matched_null": matched.null, "similarity": sim},
        inconclusive=reason,
    )
