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
- *difference null*: two independent planted worlds with the same signal
  (equal routing coherence), for ``routing_coherence_difference``; its power
  row pairs a planted with an iid-null world.

Each world is one call of the probe itself (vectorised permutation and
bootstrap engines), with calibration-sized permutation and bootstrap counts.
FPR: share of null runs with p < alpha; MC bound: alpha + 2 binomial SEs.

The KD bootstrap behind the CIs and ``p_difference`` is conservative: its
spread also carries the pair-level noise of the resample's row means
(about 1.4× the sampling sd of Pearson r measured over repeated draws of 40
and 150 KDs from one fixed population in these worlds), so the difference
test rejects far less often than alpha under its null and CIs are wider than
nominal — the safe direction for "alike" and "below a threshold" claims.

Usage::

    python -m probes.routing_calibration [--quick] [--null-worlds 600] [--out reports/calibration]
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
from threadpoolctl import threadpool_limits

from hypocheck.stats import derive_seed

from .calibration import mc_bound
from .matrixstats import unit_rows
from .routing import DifferenceParams, RoutingParams, routing_coherence, routing_coherence_difference

FAMILIES = {"mantel_pearson": "p_pearson", "mantel_spearman": "p_spearman", "cluster_ratio": "p_ratio",
            "ari": "p_ari"}
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


QUICK = RoutingCalibrationConfig(null_worlds=120, planted_worlds=40, difference_worlds=80)
PLANTED = "planted: J-sim = f(ΔY-sim) + noise"
WEAK = "planted (weak): J-sim = f(ΔY-sim) + more noise"


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


def _world_p(cfg: RoutingCalibrationConfig, params: RoutingParams, seed_key: str, kind: str) -> dict[str, float]:
    """One world of ``kind`` ('iid', 'structured', 'planted', 'weak'): the probe's p-values and Pearson r."""
    rng = np.random.default_rng(derive_seed(cfg.base_seed, seed_key))
    delta_y = delta_y_world(rng, cfg)
    if kind in ("planted", "weak"):
        signal = cfg.planted_signal if kind == "planted" else cfg.weak_signal
        features = planted_features(rng, delta_y, signal, cfg.jacobian_dim)
    else:
        features = null_features(rng, cfg, structured=kind == "structured")
    res = routing_coherence(delta_y=delta_y, jacobian_gram=features @ features.T, names=_names(cfg.n_kds),
                            params=params, rng=rng)
    return {family: res.metrics[metric] for family, metric in FAMILIES.items()} | {"r": res.metrics["pearson"]}


def _difference_p(cfg: RoutingCalibrationConfig, params: DifferenceParams, seed_key: str, planted_b: bool) -> float:
    """p_difference of two independent worlds: both planted alike (null), or planted vs iid null (power)."""
    rng = np.random.default_rng(derive_seed(cfg.base_seed, seed_key))
    dy_a, dy_b = delta_y_world(rng, cfg), delta_y_world(rng, cfg)
    f_a = planted_features(rng, dy_a, cfg.planted_signal, cfg.jacobian_dim)
    f_b = planted_features(rng, dy_b, cfg.planted_signal, cfg.jacobian_dim) if planted_b else null_features(
        rng, cfg, structured=False)
    res = routing_coherence_difference(
        delta_y_a=dy_a, jacobian_gram_a=f_a @ f_a.T, names_a=_names(cfg.n_kds), delta_y_b=dy_b,
        jacobian_gram_b=f_b @ f_b.T, names_b=_names(cfg.n_kds), params=params, rng=rng)
    return res.metrics["p_difference"]


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
                              (PLANTED, "planted", cfg.planted_worlds), (WEAK, "weak", cfg.planted_worlds)):
            runs[data] = [_world_p(cfg, params, f"{kind}:{s}", kind) for s in range(n)]
        diff_null = [_difference_p(cfg, params, f"difference-null:{s}", True) for s in range(cfg.difference_worlds)]
        diff_power = [_difference_p(cfg, params, f"difference-planted:{s}", False)
                      for s in range(cfg.difference_worlds)]
    rows: list[dict[str, Any]] = []
    for family in FAMILIES:
        for data, results in runs.items():
            rows.append(_row(family, data, [r[family] for r in results], cfg.alpha))
    rows.append(_row("difference", "null: two planted worlds, equal coherence", diff_null, cfg.alpha))
    rows.append(_row("difference", "planted: planted vs iid-null world", diff_power, cfg.alpha))
    families = [_family(f, rows, cfg.alpha) for f in (*FAMILIES, "difference")]
    mean_r = {data: float(np.nanmean([r["r"] for r in runs[data]])) if runs[data] else math.nan
              for data in (PLANTED, WEAK)}
    return {"alpha": cfg.alpha, "config": asdict(cfg), "seconds": time.perf_counter() - start,
            "planted_mean_pearson": mean_r[PLANTED], "weak_mean_pearson": mean_r[WEAK],
            "families": families, "rows": rows}


def _row(family: str, data: str, ps: list[float], alpha: float) -> dict[str, Any]:
    n, hits, undefined = _rate(ps, alpha)
    row: dict[str, Any] = {"family": family, "data": data, "condition": data.split(":")[0], "n_runs": n,
                           "rejections": hits, "undefined": undefined, "rate": hits / n if n else math.nan}
    if row["condition"] == "null":
        row["bound"] = mc_bound(alpha, n)
        row["within_bound"] = row["rate"] <= row["bound"]
    return row


def _family(family: str, rows: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """FPR pooled over the family's null rows (with the MC bound), power pooled over its planted rows."""
    null = [r for r in rows if r["family"] == family and r["condition"] == "null"]
    planted = [r for r in rows if r["family"] == family and r["condition"] == "planted"]
    n_null, n_planted = sum(r["n_runs"] for r in null), sum(r["n_runs"] for r in planted)
    fpr = sum(r["rejections"] for r in null) / n_null if n_null else math.nan
    bound = mc_bound(alpha, n_null)
    return {"family": family, "n_null": n_null, "fpr": fpr, "bound": bound, "calibrated": fpr <= bound,
            "n_planted": n_planted,
            "power": sum(r["rejections"] for r in planted) / n_planted if n_planted else math.nan}


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
        "Power: share of planted runs with p < alpha.", "", "## Per family", "",
        "| family | null runs | FPR | MC bound | calibrated | planted runs | power |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for f in result["families"]:
        lines.append(f"| {f['family']} | {f['n_null']} | {f['fpr']:.3f} | {f['bound']:.3f} | "
                     f"{'yes' if f['calibrated'] else 'NO'} | {f['n_planted']} | {f['power']:.3f} |")
    lines += ["", "## Per family and data", "", "| family | data | runs | rate | MC bound | within |",
              "|---|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        bound = f"{r['bound']:.3f}" if "bound" in r else ""
        within = ("yes" if r["within_bound"] else "NO") if "within_bound" in r else ""
        lines.append(f"| {r['family']} | {r['data']} | {r['n_runs']} | {r['rate']:.3f} | {bound} | {within} |")
    lines += ["", (__doc__ or "").split("Usage::")[0].strip(), ""]
    return "\n".join(lines)


def write_reports(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``routing.json`` and ``routing.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "routing.md").write_text(markdown(result))
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
