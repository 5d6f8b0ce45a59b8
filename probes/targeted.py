"""NB03: targeted Jacobian — do pathway-concordant knockdowns raise a regulator → target derivative?

For a panel of regulators and targets, ``∂Ȳ[target]/∂X[regulator]`` (the
regulator's input expression moved in every control cell) is computed under
each knockdown. The knockdown is the unit: each is summarised by the mean over
the panel's (regulator, target) pairs, and the concordant knockdowns are
compared with the control knockdowns by a one-sided Mann–Whitney U test (the
original ran a paired Wilcoxon on unpaired groups).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from hypocheck.registry import ProbeResult, probe

from .kinds import InputDerivatives
from .setstats import bootstrap_difference_ci

TARGETED_METRICS = (
    "difference", "p", "u_statistic", "rank_biserial", "mean_concordant", "mean_control", "n_concordant",
    "n_control", "n_pairs", "min_attainable_p",
)




class TargetedParams(BaseModel):
    """Parameters of the targeted-Jacobian group test."""

    model_config = ConfigDict(extra="forbid")
    statistic: Literal["mean", "mean_abs"] = Field(
        "mean", description="Per knockdown: mean of the derivatives over the pairs ('mean') or of their absolute "
        "values ('mean_abs')."
    )
    pairs: list[tuple[str, str]] | None = Field(
        None, description="[regulator, target] pairs to average over; all regulator × target pairs when omitted."
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="Inconclusive when the smallest p the group sizes allow is above this."
    )
    bootstrap: int = Field(1000, ge=99, description="Bootstrap resamples (each group resampled) for the CI.")


MIN_DERIVATIVE_DIFFERENCE = 0.01
"""Default minimum effect of a presence claim on ``difference`` (dimensionless derivative, output per input
expression): 1 % of the regulator's change."""


def min_attainable_p(n_a: int, n_b: int) -> float:
    """Smallest one-sided exact Mann–Whitney p for groups of these sizes: 1 / C(n_a + n_b, n_a)."""
    return 1.0 / math.comb(n_a + n_b, n_a)


def _pair_mask(regulators: Sequence[str], targets: Sequence[str], pairs: list[tuple[str, str]] | None) -> np.ndarray:
    """(regulators × targets) mask of the pairs to average over."""
    if pairs is None:
        return np.ones((len(regulators), len(targets)), dtype=bool)
    reg_index = {r: i for i, r in enumerate(regulators)}
    tgt_index = {t: i for i, t in enumerate(targets)}
    mask = np.zeros((len(regulators), len(targets)), dtype=bool)
    for regulator, target in pairs:
        if regulator not in reg_index or target not in tgt_index:
            raise ValueError(f"pair [{regulator}, {target}]: regulators are {list(regulators)}, "
                             f"targets are {list(targets)}")
        mask[reg_index[regulator], tgt_index[target]] = True
    return mask


@probe(
    "targeted_jacobian",
    params=TargetedParams,
    takes=InputDerivatives,
    axes=("model", "cell_line"),
    metrics=TARGETED_METRICS,
    kinds={"count": ("n_concordant", "n_control", "n_pairs"), "effect": ("rank_biserial",)},
    effect="difference",
    p="p",
    min_effect=MIN_DERIVATIVE_DIFFERENCE,
    absence="below",
)
def targeted_jacobian(
    *, derivatives: np.ndarray, kd_names: Sequence[str], concordant: Sequence[int], control: Sequence[int],
    regulators: Sequence[str], targets: Sequence[str], params: TargetedParams, rng: np.random.Generator,
) -> ProbeResult:
    """Concordant vs control knockdowns on a regulator → target derivative panel: one-sided Mann–Whitney U.

    ``derivatives`` is (knockdowns × regulators × targets) of
    ``∂Ȳ[target]/∂X[regulator]`` under each knockdown; ``concordant`` and
    ``control`` index its knockdowns. Per knockdown, the mean (or mean absolute)
    derivative over the panel's pairs (``params.pairs``, default all). Effect:
    ``difference`` = mean(concordant) − mean(control) with a bootstrap CI (each
    group resampled); ``p``: one-sided U test concordant > control (exact for
    small groups without ties); ``rank_biserial`` = 2U / (n₁n₂) − 1. When even
    a complete separation could not reach ``alpha`` with these group sizes
    (e.g. 2 vs 2: p ≥ 1/6), the result is inconclusive. The smallest
    attainable p, ``1/C(n₁ + n₂, n₁)`` (``min_attainable_p``), is declared for
    ``p`` so that the engine also judges it after correcting for the claim's
    cases. Default minimum effect 0.01 (``MIN_DERIVATIVE_DIFFERENCE``): input
    and output are on one expression scale (the state models map expression
    to expression), so the derivative is dimensionless, the share of a change
    in the regulator's input that reaches the target's output; a knockdown
    that moves that share by less than 1 % of the regulator's change is not a
    modulation worth claiming. A model on other scales sets its own with
    ``min_effect:``.
    """
    deriv = np.asarray(derivatives, dtype=np.float64)
    if deriv.ndim != 3 or deriv.shape[1:] != (len(regulators), len(targets)):
        raise ValueError(f"derivatives has shape {deriv.shape}; expected (knockdowns, {len(regulators)} "
                         f"regulators, {len(targets)} targets)")
    if len(kd_names) != deriv.shape[0]:
        raise ValueError(f"{len(kd_names)} knockdown names for {deriv.shape[0]} knockdowns")
    conc, ctrl = np.asarray(concordant, dtype=int), np.asarray(control, dtype=int)
    if np.intersect1d(conc, ctrl).size:
        raise ValueError(f"knockdowns {sorted(set(conc.tolist()) & set(ctrl.tolist()))} are both concordant "
                         "and control")
    mask = _pair_mask(regulators, targets, params.pairs)
    values = np.abs(deriv) if params.statistic == "mean_abs" else deriv
    per_kd = np.nanmean(np.where(mask[None], values, np.nan), axis=(1, 2))
    x, y = per_kd[conc], per_kd[ctrl]
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    nan = float("nan")
    n_x, n_y = int(x.size), int(y.size)
    floor = min_attainable_p(n_x, n_y) if n_x and n_y else nan
    metrics: dict[str, float] = dict.fromkeys(TARGETED_METRICS, nan) | {
        "n_concordant": n_x, "n_control": n_y, "n_pairs": int(mask.sum()), "min_attainable_p": floor,
        "mean_concordant": float(x.mean()) if n_x else nan, "mean_control": float(y.mean()) if n_y else nan,
    }
    cis: dict[str, tuple[float, float]] = {}
    if n_x and n_y:
        test = stats.mannwhitneyu(x, y, alternative="greater", method="auto")
        metrics |= {"difference": float(x.mean() - y.mean()), "p": float(test.pvalue),
                    "u_statistic": float(test.statistic),
                    "rank_biserial": float(2 * test.statistic / (n_x * n_y) - 1)}
    if n_x >= 2 and n_y >= 2:
        cis["difference"] = bootstrap_difference_ci(x, y, rng, params.bootstrap)
    reason = None
    if not n_x or not n_y:
        reason = f"{n_x} concordant and {n_y} control knockdowns with a derivative; both groups are needed"
    elif floor > params.alpha:
        reason = (f"with {n_x} concordant and {n_y} control knockdowns the smallest attainable p is {floor:.3g} "
                  f"> alpha = {params.alpha:g}: no outcome could be significant")
    group = np.full(deriv.shape[0], "", dtype=object)
    group[ctrl] = "control"
    group[conc] = "concordant"
    k, r, t = (axis.ravel() for axis in np.meshgrid(
        np.arange(deriv.shape[0]), np.arange(len(regulators)), np.arange(len(targets)), indexing="ij"))
    names = {key: np.asarray(list(seq), dtype=object) for key, seq in
             (("knockdown", kd_names), ("regulator", regulators), ("target", targets))}
    table = pd.DataFrame({
        "knockdown": names["knockdown"][k], "group": group[k], "regulator": names["regulator"][r],
        "target": names["target"][t], "derivative": deriv[k, r, t], "in_panel": mask[r, t],
    })
    per_kd_table = pd.DataFrame({"knockdown": list(kd_names), "group": group, "value": per_kd})
    return ProbeResult(metrics=metrics, cis=cis, arrays={"per_kd": per_kd},
                       tables={"derivatives": table, "per_knockdown": per_kd_table}, inconclusive=reason,
                       attainable={"p": floor} if n_x and n_y else {})
