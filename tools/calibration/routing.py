"""Calibration of the routing tests (NB05–NB10): false-positive rate on null worlds, power on planted worlds.

Every world has K knockdowns whose ΔY share a few programs (iid program labels,
log-normal magnitudes, a shared default direction that fades with magnitude,
as in real ΔY) — so ΔY clusters exist. Jacobians are rows of a feature matrix
(the Gram is their inner products):

- *null, iid Jacobians*: features drawn independently of ΔY, iid Gaussian;
- *null, structured Jacobians*: features with their own cluster structure, a
  shared direction and heterogeneous norms, all independent of ΔY;
- *planted*: features ``[s · unit(ΔY_k), noise_k]``, so the Jacobian cosine is
  an increasing function of the ΔY cosine plus noise (``planted_signal`` = s);
- *difference null*: the two halves of one planted world of 2K KDs (the same
  programs, so equal routing coherence; independent KD samples), for
  ``routing_coherence_difference`` (its plain and its partial difference);
  its power row gives the second half iid-null Jacobians.

In those worlds the pert representations (the inputs' proximity) are drawn
independently of everything. The proximity-controlled test (partial Mantel) is
checked where proximity matters, in worlds with pert representations
``r_k ~ N(0, I_H)`` and ``ΔY_k = J̄ (r_k − r_ctrl) + noise``:

- *proximity null*: nearly identical Jacobians that vary smoothly with the
  representation and carry no routing signal: ``J(r_k) = [J̄, ε Φ(r_k),
  η_k]`` (flattened), ``Φ`` the feature map of a Gaussian kernel of length
  ``smooth_length`` (so ``⟨Φ(r_a), Φ(r_b)⟩ = exp(−‖r_a − r_b‖² / 2ℓ²)``: nearby
  inputs, nearby Jacobians) and ``η_k`` an idiosyncratic part independent of
  everything. Jacobian and ΔY similarity both fall with distance, so the plain
  Mantel test rejects in almost every world; the partial one must hold alpha;
- *stress, rough field*: the same with ``Φ`` replaced by ``rough_features``
  random Fourier features (a finite random field: its similarity depends on
  where the inputs are, not only on their distance, and by chance shares
  structure with ΔY beyond proximity). Reported, not pooled: proximity is
  Euclidean distance, and a test given it cannot remove such structure;
- *planted routing beyond proximity*: the proximity-null Jacobians plus a
  component ``s · e_c(k)`` of a cluster ``c(k)`` drawn independently of the
  representations, and ΔY plus a cluster program ``2 s ‖ΔY‖ u_c(k)``: similar
  Jacobians go with similar effects beyond what proximity explains.

Each world is one call of the probe itself (vectorised permutation and
bootstrap engines), with calibration-sized permutation and bootstrap counts.
FPR: share of null runs with p < alpha; MC bound: alpha + 2 binomial SEs.

*CI coverage* (``calibrate_coverage``): fixed populations of
``coverage_population`` KDs (one planted, and per shift one whose Pearson r
over all pairs is lower by the shift; same ΔY); repeated samples of K KDs
(without replacement) from each. Coverage: share of 95 % CIs that contain the
population's r (Pearson and Spearman over all its pairs); spread ratio: the
method's mean SE (bootstrap: sd of its draws) over the sd of r across samples.
Methods: the KD bootstrap (percentile CI), the plain leave-one-KD-out
jackknife, and the corrected jackknife (``matrixstats.jackknife_se`` with the
pairs' influence: the plain jackknife counts the pair-level variance term
about twice), both with Fisher-z CIs and t quantiles (K − 1 df). Difference
test (t p with ``sqrt(SE_a² + SE_b²)`` and Welch df; bootstrap: the draws'
difference): FPR between two
samples of one population, power between the planted population and each
shifted one. The method chosen is the one whose coverage is closest to 95 %
without falling below ``COVERAGE_FLOOR`` at any K; the probes use the
corrected jackknife.

Usage::

    python -m tools.calibration.routing [--quick] [--null-worlds 600] [--out reports/calibration]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, stats
from threadpoolctl import threadpool_limits

from hypocheck.atomic import atomic_write_text
from hypocheck.probes.matrixstats import (
    bootstrap_correlations,
    cosine_from_gram,
    fisher_ci,
    jackknife_correlations,
    jackknife_se,
    pair_influence,
    percentile_ci,
    upper,
    welch_difference,
)
from hypocheck.probes.routing import DifferenceParams, RoutingParams, routing_coherence, routing_coherence_difference
from hypocheck.probes.setstats import unit_rows
from hypocheck.stats import derive_seed

from .clustering import mc_bound

FAMILIES = {"partial_pearson": "p_partial", "partial_spearman": "p_partial_spearman",
            "mantel_pearson": "p_pearson", "mantel_spearman": "p_spearman", "cluster_ratio": "p_ratio",
            "ari": "p_ari"}
PARTIAL_FAMILIES = ("partial_pearson", "partial_spearman")
DIFFERENCE_FAMILIES = ("difference", "partial_difference")
NULL_DATA = ("null: iid Jacobians", "null: structured Jacobians")


@dataclass(frozen=True)
class RoutingCalibrationConfig:
    """World sizes and how many worlds of each kind."""

    null_worlds: int = 600  # per null design
    planted_worlds: int = 300
    difference_worlds: int = 300
    n_kds: int = 60
    genes: int = 40
    jacobian_dim: int = 24
    programs: int = 5
    n_clusters: int = 5
    top_per_cluster: int = 8
    planted_signal: float = 0.6
    weak_signal: float = 0.25  # a second planted level near the original's r ≈ 0.12 (reported, not pooled)
    permutations: int = 199
    bootstrap: int = 99
    base_seed: int = 71300
    alpha: float = 0.05
    # CI coverage and the difference test: KD samples of each size from fixed populations of KDs
    coverage_population: int = 4000  # KDs per population (K / N ≤ 4 %: little finite-population excess)
    coverage_sizes: tuple[int, ...] = (40, 150)
    coverage_draws: tuple[int, ...] = (600, 300)  # KD samples per population, one count per size
    coverage_bootstrap: int = 200  # resamples of the KD bootstrap the jackknife is compared with
    coverage_shifts: tuple[float, ...] = (0.1, 0.2)  # Pearson r of the weaker populations below the first
    # worlds where the inputs' proximity drives both similarities (the partial Mantel test)
    proximity_worlds: int = 400  # proximity-null worlds; planted and stress worlds: planted_worlds each
    repr_dim: int = 8
    smooth_length: float = 1.5  # Gaussian-kernel length of the Jacobian field, in units of the representations' sd
    smooth_scale: float = 0.3  # ε: the field's share of a Jacobian (J̄ has unit norm)
    idiosyncratic: float = 0.1  # norm of η_k
    rough_features: int = 64
    routing_signal: float = 0.2  # s of the planted routing beyond proximity


QUICK = RoutingCalibrationConfig(null_worlds=120, planted_worlds=40, difference_worlds=80,
                                 coverage_population=1500, coverage_draws=(160, 24), coverage_bootstrap=99,
                                 coverage_shifts=(0.2,), proximity_worlds=160)
PLANTED = "planted: J-sim = f(ΔY-sim) + noise"
WEAK = "planted (weak): J-sim = f(ΔY-sim) + more noise"
PROXIMITY_NULL = "proximity null: smooth J(r), ΔY = J̄ (r − r_ctrl)"
ROUGH = "stress: rough J(r) field, ΔY = J̄ (r − r_ctrl)"
ROUTED = "planted: routing clusters beyond proximity"


def delta_y_world(rng: np.random.Generator, cfg: RoutingCalibrationConfig) -> np.ndarray:
    """(K, G) ΔY: program + noise directions, log-normal magnitudes, a default direction fading with magnitude."""
    programs = rng.normal(size=(cfg.programs, cfg.genes))
    labels = rng.integers(0, cfg.programs, cfg.n_kds)
    directions = unit_rows(programs[labels] + 0.8 * rng.normal(size=(cfg.n_kds, cfg.genes)))
    magnitude = rng.lognormal(0.0, 0.7, cfg.n_kds)
    default = unit_rows(rng.normal(size=(1, cfg.genes)))[0]
    return magnitude[:, None] * directions + default[None, :] / (1 + magnitude[:, None])


def null_features(rng: np.random.Generator, cfg: RoutingCalibrationConfig, structured: bool) -> np.ndarray:
    """Jacobian features independent of ΔY: iid Gaussian, or clustered with a shared direction and varied norms."""
    k, d = cfg.n_kds, cfg.jacobian_dim
    if not structured:
        return rng.normal(size=(k, d))
    centres = rng.normal(size=(cfg.programs, d))
    shared = rng.normal(size=d)
    rows = unit_rows(centres[rng.integers(0, cfg.programs, k)] + rng.normal(size=(k, d)) + 0.7 * shared)
    return rows * rng.lognormal(0.0, 1.0, k)[:, None]


def planted_features(rng: np.random.Generator, delta_y: np.ndarray, signal: float, dim: int) -> np.ndarray:
    """``[signal · unit(ΔY_k), noise_k]``: Jacobian cosine = increasing function of ΔY cosine + noise."""
    noise = unit_rows(rng.normal(size=(delta_y.shape[0], dim)))
    return np.hstack([signal * unit_rows(delta_y), noise])


def _names(k: int) -> list[str]:
    return [f"kd{i}" for i in range(k)]


def proximity_world(rng: np.random.Generator, cfg: RoutingCalibrationConfig, kind: str
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pert representations, ΔY, Jacobian features) of a world whose Jacobians vary smoothly with the
    representation: ``kind`` 'smooth' (the proximity null), 'rough' (a finite random field) or 'routed'
    (smooth plus routing clusters independent of the representations)."""
    k, h, g = cfg.n_kds, cfg.repr_dim, cfg.genes
    reps = rng.normal(size=(k, h))
    control = 0.3 * rng.normal(size=h)
    j_bar = rng.normal(size=(g, h))
    j_bar /= np.linalg.norm(j_bar)
    if kind == "rough":
        freqs = rng.normal(size=(cfg.rough_features, h)) / cfg.smooth_length
        field = np.sqrt(2.0 / cfg.rough_features) * np.cos(reps @ freqs.T
                                                          + rng.uniform(0, 2 * np.pi, cfg.rough_features))
    else:  # the Gaussian kernel's feature map on these points: ⟨Φ_a, Φ_b⟩ = exp(−‖r_a − r_b‖² / 2ℓ²)
        dist2 = np.sum((reps[:, None, :] - reps[None, :, :]) ** 2, axis=-1)
        values, vectors = np.linalg.eigh(np.exp(-dist2 / (2 * cfg.smooth_length**2)))
        field = vectors * np.sqrt(np.clip(values, 0.0, None))[None, :]
    idio = cfg.idiosyncratic * unit_rows(rng.normal(size=(k, cfg.jacobian_dim)))
    features = np.hstack([np.tile(j_bar.ravel(), (k, 1)), cfg.smooth_scale * field, idio])
    delta_y = (reps - control) @ j_bar.T
    scale = float(np.mean(np.linalg.norm(delta_y, axis=1)))
    delta_y += 0.1 * scale / np.sqrt(g) * rng.normal(size=delta_y.shape)
    if kind == "routed":
        labels = rng.integers(0, cfg.programs, k)
        features = np.hstack([features, cfg.routing_signal * np.eye(cfg.programs)[labels]])
        delta_y += 2 * cfg.routing_signal * scale * unit_rows(rng.normal(size=(cfg.programs, g)))[labels]
    return reps, delta_y, features


def _world_p(cfg: RoutingCalibrationConfig, params: RoutingParams, seed_key: str, kind: str) -> dict[str, float]:
    """One world of ``kind`` ('iid', 'structured', 'planted', 'weak'; 'smooth', 'rough', 'routed'): the
    probe's p-values, Pearson and partial Pearson r."""
    rng = np.random.default_rng(derive_seed(cfg.base_seed, seed_key))
    if kind in ("smooth", "rough", "routed"):
        reps, delta_y, features = proximity_world(rng, cfg, kind)
    else:
        delta_y = delta_y_world(rng, cfg)
        if kind in ("planted", "weak"):
            signal = cfg.planted_signal if kind == "planted" else cfg.weak_signal
            features = planted_features(rng, delta_y, signal, cfg.jacobian_dim)
        else:
            features = null_features(rng, cfg, structured=kind == "structured")
        reps = rng.normal(size=(cfg.n_kds, cfg.repr_dim))  # proximity unrelated to Jacobians and ΔY
    res = routing_coherence(delta_y=delta_y, jacobian_gram=features @ features.T, names=_names(cfg.n_kds),
                            pert_repr=reps, params=params, rng=rng)
    return {family: res.metrics[metric] for family, metric in FAMILIES.items()} | {
        "r": res.metrics["pearson"], "partial_r": res.metrics["partial_pearson"],
        "proximity_jacobian_r": res.metrics["proximity_jacobian_r"],
        "proximity_delta_r": res.metrics["proximity_delta_r"]}


def _difference_p(cfg: RoutingCalibrationConfig, params: DifferenceParams, seed_key: str,
                  planted_b: bool) -> tuple[float, float]:
    """p_difference and p_partial_difference of two models on independent halves of one world of 2K KDs (same
    programs, so the same population): both planted alike (equal coherence, the null), or planted vs iid-null
    Jacobians (power)."""
    rng = np.random.default_rng(derive_seed(cfg.base_seed, seed_key))
    delta_y = delta_y_world(rng, replace(cfg, n_kds=2 * cfg.n_kds))
    dy_a, dy_b = delta_y[: cfg.n_kds], delta_y[cfg.n_kds :]
    f_a = planted_features(rng, dy_a, cfg.planted_signal, cfg.jacobian_dim)
    f_b = planted_features(rng, dy_b, cfg.planted_signal, cfg.jacobian_dim) if planted_b else null_features(
        rng, cfg, structured=False)
    reps = rng.normal(size=(2 * cfg.n_kds, cfg.repr_dim))
    res = routing_coherence_difference(
        delta_y_a=dy_a, jacobian_gram_a=f_a @ f_a.T, names_a=_names(cfg.n_kds), pert_repr_a=reps[: cfg.n_kds],
        delta_y_b=dy_b, jacobian_gram_b=f_b @ f_b.T, names_b=_names(cfg.n_kds), pert_repr_b=reps[cfg.n_kds :],
        params=params, rng=rng)
    return res.metrics["p_difference"], res.metrics["p_partial_difference"]


# ---------------------------------------------------------------- CI coverage: jackknife vs KD bootstrap

METHODS = ("corrected jackknife", "jackknife", "bootstrap")
JACKKNIFES = {"corrected jackknife": "se_corrected", "jackknife": "se_plain"}
METRICS = ("pearson", "spearman")
COVERAGE_FLOOR = 0.93  # a method undercovers below this at any K or metric


@dataclass(frozen=True)
class Population:
    """A fixed population of KDs: Jacobian and ΔY cosine matrices, and Pearson and Spearman r over all pairs."""

    name: str
    jacobian: np.ndarray
    delta_y: np.ndarray
    truth: tuple[float, float]


def _pair_correlations(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    return float(np.corrcoef(x, y)[0, 1]), float(stats.spearmanr(x, y).statistic)


def _signal_squared(target: float, y: np.ndarray, noise: np.ndarray) -> float:
    """``t`` with Pearson r of ``t · y + noise`` against ``y`` equal to ``target`` (it rises from ≈ 0 to 1)."""
    def gap(t: float) -> float:
        return float(np.corrcoef(t * y + noise, y)[0, 1]) - target
    return float(optimize.brentq(gap, 0.0, 1e6, xtol=1e-10))


def coverage_populations(cfg: RoutingCalibrationConfig) -> list[Population]:
    """One planted population (``planted_signal``) and, per shift, one whose Pearson r is lower by the shift.

    Same ΔY population throughout; each has its own Jacobian noise. Features
    ``[s · unit(ΔY_k), noise_k]`` have cosine ``(s² cos ΔY + cos noise) / (1 + s²)``,
    so a population's r is set exactly by solving for ``s²``.
    """
    rng = np.random.default_rng(derive_seed(cfg.base_seed, "coverage-population"))
    delta_y = delta_y_world(rng, replace(cfg, n_kds=cfg.coverage_population))
    unit = unit_rows(delta_y)
    y_sim = unit @ unit.T
    y = upper(y_sim)
    first = planted_features(rng, delta_y, cfg.planted_signal, cfg.jacobian_dim)
    x_sim = cosine_from_gram(first @ first.T)[0]
    pops = [Population("planted", x_sim, y_sim, _pair_correlations(upper(x_sim), y))]
    for shift in cfg.coverage_shifts:
        noise = planted_features(rng, delta_y, 0.0, cfg.jacobian_dim)
        noise_sim = cosine_from_gram(noise @ noise.T)[0]
        t = _signal_squared(pops[0].truth[0] - shift, y, upper(noise_sim))
        x_sim = (t * y_sim + noise_sim) / (1 + t)
        pops.append(Population(f"planted − {shift:g}", x_sim, y_sim, _pair_correlations(upper(x_sim), y)))
    return pops


def _samples(pop: Population, k: int, draws: int, n_boot: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``draws`` samples of ``k`` KDs (without replacement): estimates, jackknife SEs and CIs, bootstrap draws.

    Axis 1 is the metric (Pearson, Spearman)."""
    out = {name: np.empty((draws, 2)) for name in ("estimate", "se_plain", "se_corrected")}
    boot = np.empty((draws, 2, n_boot))
    for d in range(draws):
        index = rng.choice(pop.jacobian.shape[0], size=k, replace=False)
        block = np.ix_(index, index)
        x_sim, y_sim = pop.jacobian[block], pop.delta_y[block]
        out["estimate"][d] = _pair_correlations(upper(x_sim), upper(y_sim))
        influences = pair_influence(x_sim, y_sim)
        for m, leave_out in enumerate(jackknife_correlations(x_sim, y_sim)):
            out["se_plain"][d, m] = jackknife_se(leave_out)
            out["se_corrected"][d, m] = jackknife_se(leave_out, influences[m])
        boot[d] = bootstrap_correlations(x_sim, y_sim, rng, n_boot)
    for method, se in JACKKNIFES.items():
        out[f"ci_{method}"] = np.array([[fisher_ci(float(out["estimate"][d, m]), float(out[se][d, m]), k - 1)
                                         for m in range(2)] for d in range(draws)])
    out["ci_bootstrap"] = np.array([[percentile_ci(boot[d, m]) for m in range(2)] for d in range(draws)])
    return out | {"bootstrap": boot}


def two_sided_bootstrap_p(draws: np.ndarray) -> float:
    """Two-sided p of 'the statistic is 0' from its bootstrap draws: 2 · min tail share, +1-corrected, ≤ 1."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return float("nan")
    tail = min(np.count_nonzero(draws <= 0), np.count_nonzero(draws >= 0))
    return float(min(1.0, 2 * (1 + tail) / (draws.size + 1)))


def _difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], da: int, db: int, m: int,
                method: str, k: int) -> tuple[float, float]:
    """(p, CI width) of the difference of metric ``m`` between sample ``da`` of ``a`` and ``db`` of ``b``
    (``k`` KDs each)."""
    if method in JACKKNIFES:
        se = JACKKNIFES[method]
        res = welch_difference(float(a["estimate"][da, m]), float(a[se][da, m]), k - 1,
                               float(b["estimate"][db, m]), float(b[se][db, m]), k - 1)
        return res.p, res.ci[1] - res.ci[0]
    draws = a["bootstrap"][da, m] - b["bootstrap"][db, m]
    low, high = percentile_ci(draws)
    return two_sided_bootstrap_p(draws), high - low


def calibrate_coverage(cfg: RoutingCalibrationConfig) -> dict[str, Any]:
    """Coverage of the 95 % CIs of Pearson and Spearman r (jackknife, Fisher z; KD bootstrap, percentile) over
    KD samples of each size from fixed populations; FPR of the difference test between two samples of one
    population and its power between populations whose Pearson r differs by each shift."""
    if len(cfg.coverage_draws) != len(cfg.coverage_sizes):
        raise ValueError("coverage_draws needs one count per coverage size")
    start = time.perf_counter()
    pops = coverage_populations(cfg)
    coverage: list[dict[str, Any]] = []
    difference: list[dict[str, Any]] = []
    for k, draws in zip(cfg.coverage_sizes, cfg.coverage_draws, strict=True):
        samples = [_samples(pop, k, draws, cfg.coverage_bootstrap,
                            np.random.default_rng(derive_seed(cfg.base_seed, f"coverage:{pop.name}:{k}")))
                   for pop in pops]
        for method in METHODS:
            for m, metric in enumerate(METRICS):
                covered, spread = 0, []
                for pop, sample in zip(pops, samples, strict=True):
                    ci = sample[f"ci_{method}"][:, m]
                    covered += int(np.count_nonzero((ci[:, 0] <= pop.truth[m]) & (pop.truth[m] <= ci[:, 1])))
                    claimed = (sample[JACKKNIFES[method]][:, m] if method in JACKKNIFES
                               else sample["bootstrap"][:, m].std(axis=1))
                    spread.append(float(np.mean(claimed) / np.std(sample["estimate"][:, m], ddof=1)))
                n = draws * len(pops)
                coverage.append({"method": method, "metric": metric, "k": k, "n_samples": n,
                                 "coverage": covered / n, "spread_ratio": float(np.mean(spread))})
                pairs = {"null": [(samples[0], 2 * d, samples[0], 2 * d + 1) for d in range(draws // 2)]}
                for shift, sample in zip(cfg.coverage_shifts, samples[1:], strict=True):
                    pairs[f"shift {shift:g}"] = [(samples[0], d, sample, d) for d in range(draws)]
                for condition, items in pairs.items():
                    results = np.array([_difference(a, b, da, db, m, method, k) for a, da, b, db in items])
                    row = {"method": method, "metric": metric, "k": k, "condition": condition,
                           "n_runs": len(results), "rate": float(np.mean(results[:, 0] < cfg.alpha)),
                           "mean_width": float(np.mean(results[:, 1]))}
                    if condition == "null":
                        row["bound"] = mc_bound(cfg.alpha, len(results))
                    difference.append(row)
    return {"populations": [{"name": p.name, "pearson": p.truth[0], "spearman": p.truth[1]} for p in pops],
            "coverage": coverage, "difference": difference, "choice": choose_method(coverage),
            "seconds": time.perf_counter() - start}


def choose_method(coverage: list[dict[str, Any]], level: float = 0.95) -> dict[str, Any]:
    """The method whose coverage is closest to ``level`` (worst case over K and metric) among those that never
    fall below ``COVERAGE_FLOOR``; None when neither qualifies (the bootstrap stays)."""
    summary = {}
    for method in METHODS:
        values = [r["coverage"] for r in coverage if r["method"] == method]
        summary[method] = {"min_coverage": min(values), "max_distance": max(abs(v - level) for v in values),
                           "adequate": min(values) >= COVERAGE_FLOOR}
    adequate = [m for m in METHODS if summary[m]["adequate"]]
    chosen = min(adequate, key=lambda m: summary[m]["max_distance"]) if adequate else None
    return {"chosen": chosen, "floor": COVERAGE_FLOOR, "level": level, "methods": summary}


def _rate(ps: Iterable[float], alpha: float) -> tuple[int, int, int]:
    """(runs with a p, rejections, runs without a p)."""
    values = np.asarray(list(ps), dtype=float)
    finite = values[np.isfinite(values)]
    return int(finite.size), int(np.count_nonzero(finite < alpha)), int(values.size - finite.size)


def calibrate_routing(cfg: RoutingCalibrationConfig | None = None) -> dict[str, Any]:
    """Run every routing test on null and planted worlds; per family: FPR (with the MC bound) and power."""
    cfg = cfg or RoutingCalibrationConfig()
    params = DifferenceParams(n_clusters=cfg.n_clusters, top_per_cluster=cfg.top_per_cluster,
                              permutations=cfg.permutations, bootstrap=cfg.bootstrap, min_kds=10)
    start = time.perf_counter()
    runs: dict[str, list[dict[str, float]]] = {}
    with threadpool_limits(1):
        for data, kind, n in (("null: iid Jacobians", "iid", cfg.null_worlds),
                              ("null: structured Jacobians", "structured", cfg.null_worlds),
                              (PLANTED, "planted", cfg.planted_worlds), (WEAK, "weak", cfg.planted_worlds),
                              (PROXIMITY_NULL, "smooth", cfg.proximity_worlds), (ROUGH, "rough", cfg.planted_worlds),
                              (ROUTED, "routed", cfg.planted_worlds)):
            runs[data] = [_world_p(cfg, params, f"{kind}:{s}", kind) for s in range(n)]
        diff_null = [_difference_p(cfg, params, f"difference-null:{s}", True) for s in range(cfg.difference_worlds)]
        diff_power = [_difference_p(cfg, params, f"difference-planted:{s}", False)
                      for s in range(cfg.difference_worlds)]
        coverage = calibrate_coverage(cfg)
    rows: list[dict[str, Any]] = []
    for family in FAMILIES:
        for data, results in runs.items():
            rows.append(_row(family, data, [r[family] for r in results], cfg.alpha))
    for k, name in enumerate(DIFFERENCE_FAMILIES):
        rows.append(_row(name, "null: two KD samples of one planted world, equal coherence",
                         [p[k] for p in diff_null], cfg.alpha))
        rows.append(_row(name, "planted: planted vs iid-null Jacobians", [p[k] for p in diff_power], cfg.alpha))
    families = [_family(f, rows, cfg.alpha) for f in (*FAMILIES, *DIFFERENCE_FAMILIES)]
    mean_r = {data: float(np.nanmean([r["r"] for r in runs[data]])) if runs[data] else math.nan
              for data in (PLANTED, WEAK)}
    world_means = {data: {key: float(np.nanmean([r[key] for r in runs[data]])) if runs[data] else math.nan
                          for key in ("r", "partial_r", "proximity_jacobian_r", "proximity_delta_r")}
                   for data in runs}
    return {"alpha": cfg.alpha, "config": asdict(cfg), "seconds": time.perf_counter() - start,
            "planted_mean_pearson": mean_r[PLANTED], "weak_mean_pearson": mean_r[WEAK],
            "world_means": world_means, "families": families, "rows": rows, "coverage": coverage}


def _row(family: str, data: str, ps: list[float], alpha: float) -> dict[str, Any]:
    n, hits, undefined = _rate(ps, alpha)
    row: dict[str, Any] = {"family": family, "data": data, "condition": data.split(":")[0], "n_runs": n,
                           "rejections": hits, "undefined": undefined, "rate": hits / n if n else math.nan}
    if row["condition"] in ("null", "proximity null", "stress"):
        row["bound"] = mc_bound(alpha, n)
        row["within_bound"] = row["rate"] <= row["bound"]
    return row


def _family(family: str, rows: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """FPR pooled over the family's null rows (with the MC bound), power on the planted design; the FPR on the
    proximity null and the power on routing beyond proximity beside them (the proximity-controlled tests must
    hold that FPR, the plain ones need not)."""
    mine = [r for r in rows if r["family"] == family]
    null = [r for r in mine if r["condition"] == "null"]
    planted = [r for r in mine if r["condition"] == "planted" and r["data"] != ROUTED]
    n_null, n_planted = sum(r["n_runs"] for r in null), sum(r["n_runs"] for r in planted)
    fpr = sum(r["rejections"] for r in null) / n_null if n_null else math.nan
    bound = mc_bound(alpha, n_null)
    proximity = [r for r in mine if r["condition"] == "proximity null"]
    routed = [r for r in mine if r["data"] == ROUTED]
    out = {"family": family, "n_null": n_null, "fpr": fpr, "bound": bound, "calibrated": fpr <= bound,
           "n_planted": n_planted,
           "power": sum(r["rejections"] for r in planted) / n_planted if n_planted else math.nan}
    if proximity:
        out |= {"n_proximity_null": proximity[0]["n_runs"], "proximity_fpr": proximity[0]["rate"],
                "proximity_bound": proximity[0]["bound"], "proximity_calibrated": proximity[0]["within_bound"]}
    if routed:
        out["power_beyond_proximity"] = routed[0]["rate"]
    return out


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown: per family, then per family and data."""
    cfg = result["config"]
    lines = [
        "# Calibration of the routing tests", "",
        f"alpha = {result['alpha']}; {cfg['null_worlds']} worlds per null design, {cfg['planted_worlds']} planted, "
        f"{cfg['difference_worlds']} per difference condition; K = {cfg['n_kds']} KDs, {cfg['n_clusters']} ΔY "
        f"clusters × top {cfg['top_per_cluster']}; {cfg['permutations']} permutations, {cfg['bootstrap']} "
        f"bootstrap resamples; {result['seconds']:.0f} s. Planted signal {cfg['planted_signal']} (mean Pearson r "
        f"{result['planted_mean_pearson']:.3f}); weak planted signal {cfg['weak_signal']} (mean Pearson r "
        f"{result['weak_mean_pearson']:.3f}, reported per row, not in the family power).",
        "FPR: share of null runs with p < alpha; MC bound: alpha + 2·sqrt(alpha(1 − alpha)/n). "
        "Power: share of planted runs with p < alpha (the planted design; the weak one per row only).",
        f"Proximity worlds: {cfg['proximity_worlds']} proximity-null worlds, {cfg['planted_worlds']} each of "
        f"the rough-field stress and the planted routing beyond proximity; representations in "
        f"{cfg['repr_dim']} dimensions, Gaussian-kernel length {cfg['smooth_length']}, field scale "
        f"{cfg['smooth_scale']}, idiosyncratic part {cfg['idiosyncratic']}, routing signal "
        f"{cfg['routing_signal']}.", "", "## Per family", "",
        "| family | null runs | FPR | MC bound | calibrated | proximity-null FPR (bound) | holds it | planted runs "
        "| power | power beyond proximity |",
        "|---|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for f in result["families"]:
        prox = (f"{f['proximity_fpr']:.3f} ({f['proximity_bound']:.3f})", "yes" if f["proximity_calibrated"] else
                "NO") if "proximity_fpr" in f else ("", "")
        beyond = f"{f['power_beyond_proximity']:.3f}" if "power_beyond_proximity" in f else ""
        lines.append(f"| {f['family']} | {f['n_null']} | {f['fpr']:.3f} | {f['bound']:.3f} | "
                     f"{'yes' if f['calibrated'] else 'NO'} | {prox[0]} | {prox[1]} | {f['n_planted']} | "
                     f"{f['power']:.3f} | {beyond} |")
    lines += ["", "Mean correlations per design (plain Pearson r, partial r beyond proximity, and each "
              "similarity's r with proximity):", "", "| data | pearson | partial | proximity–Jacobian | "
              "proximity–ΔY |", "|---|---:|---:|---:|---:|"]
    for data, means in result.get("world_means", {}).items():
        lines.append(f"| {data} | {means['r']:.3f} | {means['partial_r']:.3f} | {means['proximity_jacobian_r']:.3f} "
                     f"| {means['proximity_delta_r']:.3f} |")
    lines += ["", "## Per family and data", "", "| family | data | runs | rate | MC bound | within |",
              "|---|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        bound = f"{r['bound']:.3f}" if "bound" in r else ""
        within = ("yes" if r["within_bound"] else "NO") if "within_bound" in r else ""
        lines.append(f"| {r['family']} | {r['data']} | {r['n_runs']} | {r['rate']:.3f} | {bound} | {within} |")
    lines += coverage_markdown(result["coverage"], result["alpha"])
    lines += ["", (__doc__ or "").split("Usage::")[0].strip(), ""]
    return "\n".join(lines)


def coverage_markdown(coverage: dict[str, Any], alpha: float) -> list[str]:
    """The coverage section: populations, coverage per method / metric / K, the difference test, the choice."""
    pops = "; ".join(f"{p['name']}: Pearson {p['pearson']:.3f}, Spearman {p['spearman']:.3f}"
                     for p in coverage["populations"])
    choice = coverage["choice"]
    lines = ["", "## CI coverage and the difference test: jackknife vs KD bootstrap", "",
             f"Populations (r over all pairs): {pops}. {coverage['seconds']:.0f} s.", "",
             "| method | metric | K | samples | coverage of 95 % CI | spread ratio |", "|---|---|---:|---:|---:|---:|"]
    for r in coverage["coverage"]:
        lines.append(f"| {r['method']} | {r['metric']} | {r['k']} | {r['n_samples']} | {r['coverage']:.3f} | "
                     f"{r['spread_ratio']:.2f} |")
    lines += ["", f"Difference test (alpha {alpha}): rejection rate, mean width of the difference's 95 % CI.", "",
              "| method | metric | K | condition | runs | rate | MC bound | mean CI width |",
              "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in coverage["difference"]:
        bound = f"{r['bound']:.3f}" if "bound" in r else ""
        lines.append(f"| {r['method']} | {r['metric']} | {r['k']} | {r['condition']} | {r['n_runs']} | "
                     f"{r['rate']:.3f} | {bound} | {r['mean_width']:.3f} |")
    summary = ", ".join(f"{m}: min coverage {v['min_coverage']:.3f}, max |coverage − {choice['level']}| "
                        f"{v['max_distance']:.3f}" for m, v in choice["methods"].items())
    lines += ["", f"Chosen (closest to {choice['level']} without falling below {choice['floor']}): "
              f"**{choice['chosen'] or 'none adequate'}** ({summary}).", ""]
    return lines


def write_reports(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``routing.json`` and ``routing.md`` into ``out_dir``."""
    out = Path(out_dir)
    atomic_write_text(out / "routing.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / "routing.md", markdown(result))
    return out


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small configuration the tests use")
    parser.add_argument("--null-worlds", type=int, default=None, help="worlds per null design")
    parser.add_argument("--out", default="reports/calibration")
    args = parser.parse_args(None if argv is None else list(argv))
    cfg = QUICK if args.quick else RoutingCalibrationConfig()
    if args.null_worlds is not None:
        cfg = replace(cfg, null_worlds=args.null_worlds)
    result = calibrate_routing(cfg)
    print(markdown(result))
    print(f"wrote {write_reports(result, args.out)}")


if __name__ == "__main__":
    main()
