"""Calibration of the probes' tests: false-positive rate on null data, power on planted data.

Null data mimic the real confound of output clustering: every knockdown's
features are ``w(m) · default + m · direction + noise`` with a shared default
direction whose weight ``w(m) = 1 / (1 + m)`` fades as the effect magnitude
``m`` grows, heterogeneous (log-normal) magnitudes and independent random
directions — no set structure. Sets are drawn either uniformly ("random sets")
or from the weakest knockdowns ("low-magnitude sets", the no-effect confound):
from the lowest 30 % and from the lowest 25 % ("off bin edges"). The names
recall the matched null this replaced, which drew member *i* of every null set
from member *i*'s ‖ΔY‖ decile: the lowest 30 % are three whole deciles, where
that null was exact, while the lowest 25 % split a decile, so the set was
weaker than the rest of its bin and the residual confound within the bin made
it reject too often (FPR 0.152 at alpha 0.05, up to 0.24 for sets of 20). The
matched null of record now draws null member *i* from a window of the ‖ΔY‖
ranking centred on set member *i* (``match_neighbours`` ranks on either side,
as many below as above, narrower at the ends of the ranking) and has no bin
edges; every low-magnitude design must hold alpha, "crowded" included: sets
from the lowest 20 %, where a set of 20 holds half of the knockdowns as weak as
its members. (Windows of the k nearest knockdowns, one-sided at the low end,
let the weakest members be matched with stronger ones: at k = 10 the crowded
design rejected 12 % of sets of 20, and neighbour purity, which turns on the
very weakest knockdowns, leaked at k = 5 too.) Planted data give a set's members a
shared program direction (``program_weight``).
"clustering_specific" is the matched test after subtracting the mean feature
vector over all knockdowns (the shift common to all perturbations).
Demo-world null data are pseudo-bulk ΔY (mean of a knockdown's cells − mean of
the controls, per line) of ``fixtures.demo.world.generate_world(seed,
null=True)``, tested on every catalog program's knockdowns; "by set size" is
then the program's size. "Demo world (planted): no-effect sets" are the
knockdowns planted without effect (``truth["no_effect"]``: proteasome, and the
unrelated genes in sets of ten) in the planted world of the same seed, where
they are the weakest knockdowns among real effects; their pseudo-bulk ΔY share
the control mean's noise (a small common direction). Neighbour purity is
tested twice on every set: labels permuted uniformly ("neighbour_purity_uniform",
the original null) and matched for ‖ΔY‖ member by member
("neighbour_purity_matched", the test of record). Rows marked "(reported)" are not expected to hold
alpha: they show the confound and the original test.

The original pair-level test (Mann–Whitney U of all within-set pairwise
cosines against random-pair cosines) lives here only, to show that it is not
calibrated: pairs sharing a member are not independent.

Related sets ("two sets of one program"): two configured sets of ``related_size``
knockdowns belong to one program, whose knockdowns share a direction and a
distinctive effect magnitude: they are drawn from the top of the ‖ΔY‖ ranking,
where they outnumber the other knockdowns ``related_dominance`` to one. A
member's rank window is then filled with the other set's knockdowns, which
share the program; the previous matched null, which drew from every knockdown
("*_all_knockdowns"), absorbs the program and loses its power. The null of
record leaves out the members of every other configured set (null_excludes:
other_sets, the default) and must find the program (power ≥ 0.9, an
inconclusive run counting as not found). The same world holds a no-effect set
(drawn from the weakest 15 %, "no-effect trap") and a low-magnitude set (from
the weakest 25 %, "off bin edges"), each tested with the other three sets left
out — the weak band thinned by the other weak set — and the program's two sets
are tested again in a world without the program's direction ("two sets of one
‖ΔY‖ band, no program"): these must hold alpha.

Cross-model agreement: "random sets" pair A with an unrelated B (null) or with
A + noise (planted, ``cross_model_signal``); "clustered set, unaligned spaces"
tests the planted program's set when B is an independent space in which the
same members cluster along B's own direction — two models that learnt the
same grouping in unshared coordinates (independent initialisations). There the
mismatched-knockdown null alone ("cross_model_mismatched_only") counts the
cluster once per member and rejects too often; the test of record
("cross_model") also needs to beat random rotations of B.

Usage::

    python -m tools.calibration.clustering [--seeds 400] [--demo-seeds 5] [--workers 2]
        [--out reports/calibration]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

from hypocheck.atomic import atomic_write_text
from hypocheck.probes.clustering import OutputClusteringParams, output_set_clustering
from hypocheck.probes.geometry import CrossModelParams, NeighbourPurityParams, cross_model_cosine, pert_neighbour_purity
from hypocheck.probes.knockout import KnockoutTransferParams, knockout_transfer
from hypocheck.stats import derive_seed
from tools.calibration.related import RelatedWorld, related_world

ALPHA = 0.05


@dataclass(frozen=True)
class CalibrationConfig:
    """How much to run: seeds × set sizes for the synthetic data, a few demo-world seeds."""

    seeds: int = 400
    sizes: tuple[int, ...] = (5, 10, 20)
    n_kds: int = 200
    dim: int = 32
    low_share: float = 0.3  # low-magnitude sets: drawn from this lowest share of KDs (= 3 ‖ΔY‖ deciles)
    off_bin_share: float | None = 0.25  # the same from a share that splits a decile; None: skip
    crowded_share: float | None = 0.2  # the same from a share so small that sets of 20 take half of it; None: skip
    program_weight: float = 1.0  # planted: member direction = unit(weight · program + own direction)
    cross_model_signal: float = 0.35  # planted: model B = model A + noise, this much of A kept (per unit norm)
    knockout_signal: float = 0.25  # planted: shared-regulator profile in line B = signal · line A + noise
    related_size: int = 10  # related-set worlds (one per seed): two program sets, a no-effect and a low set
    related_dominance: float = 8.0  # the program's knockdowns outnumber the others in its ‖ΔY‖ band this much
    demo_seeds: int = 5
    null_sets: int = 500
    permutations: int = 1000
    rotations: int = 200
    bootstrap: int = 100
    rank_sum_pairs: int = 2000
    base_seed: int = 20240
    alpha: float = ALPHA


@dataclass
class Tally:
    """Rejections at alpha out of runs, for one family under one condition."""

    runs: int = 0
    rejections: int = 0
    undefined: int = 0  # runs without a p (inconclusive): left out of the rate
    by_size: dict[int, list[int]] = field(default_factory=dict)

    def add(self, p: float, alpha: float, size: int, planted: bool = False) -> None:
        """A null run without a p is left out of the rate; a planted one counts as not found."""
        if not np.isfinite(p):
            self.undefined += 1
            if not planted:
                return
        hit = int(p < alpha)
        self.runs += 1
        self.rejections += hit
        row = self.by_size.setdefault(size, [0, 0])
        row[0] += 1
        row[1] += hit

    def merge(self, other: Tally) -> None:
        self.runs += other.runs
        self.rejections += other.rejections
        self.undefined += other.undefined
        for size, (runs, hits) in other.by_size.items():
            row = self.by_size.setdefault(size, [0, 0])
            row[0] += runs
            row[1] += hits

    @property
    def rate(self) -> float:
        return self.rejections / self.runs if self.runs else math.nan


def mc_bound(alpha: float, n: int) -> float:
    """Largest FPR consistent with a calibrated test: alpha + 2 binomial standard errors over n runs."""
    return alpha + 2 * math.sqrt(alpha * (1 - alpha) / n) if n else math.nan


# ---------------------------------------------------------------- synthetic data


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def confound_features(
    rng: np.random.Generator, n_kds: int, dim: int, members: np.ndarray | None = None, weight: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-KD features with the magnitude confound, and the measured magnitude ‖ΔY‖.

    ``features_k = default / (1 + m_k) + m_k · d_k + noise``; with ``members``
    their directions ``d_k`` share a program direction (``unit(weight · p + d_k)``).
    The measured magnitude carries 10 % log-normal measurement noise.
    """
    default = _unit(rng.normal(size=dim))
    magnitude = rng.lognormal(-0.5, 1.0, n_kds)
    directions = _unit(rng.normal(size=(n_kds, dim)))
    if members is not None and weight > 0:
        program = _unit(rng.normal(size=dim))
        directions[members] = _unit(weight * program + directions[members])
    noise = 0.05 * rng.normal(size=(n_kds, dim)) / math.sqrt(dim)
    features = default / (1 + magnitude[:, None]) + magnitude[:, None] * directions + noise
    return features, magnitude * np.exp(0.1 * rng.normal(size=n_kds))


def original_rank_sum_p(sim: np.ndarray, members: np.ndarray, rng: np.random.Generator, n_pairs: int) -> float:
    """The ORIGINAL (pseudo-replicated) test: within-set pair cosines vs random-pair cosines, one-sided U test."""
    i, j = np.triu_indices(members.size, 1)
    within = sim[members[i], members[j]]
    n = sim.shape[0]
    a = rng.integers(0, n, n_pairs)
    b = (a + rng.integers(1, n, n_pairs)) % n
    return float(stats.mannwhitneyu(within, sim[a, b], alternative="greater").pvalue)


class _Runner:
    """Calls the probes with calibration-sized parameters and tallies p < alpha."""

    def __init__(self, cfg: CalibrationConfig) -> None:
        self.cfg = cfg
        self.clustering = OutputClusteringParams(null_sets=cfg.null_sets, bootstrap=cfg.bootstrap)
        self.purity = NeighbourPurityParams(permutations=cfg.permutations, bootstrap=cfg.bootstrap)
        self.cross = CrossModelParams(permutations=cfg.permutations, rotations=cfg.rotations, bootstrap=cfg.bootstrap)
        self.knockout = KnockoutTransferParams(permutations=cfg.permutations, bootstrap=cfg.bootstrap)
        self.tallies: dict[tuple[str, str, str], Tally] = defaultdict(Tally)

    def add(self, family: str, condition: str, data: str, p: float, size: int) -> None:
        self.tallies[(family, condition, data)].add(p, self.cfg.alpha, size, planted=condition == "planted")

    def set_tests(self, features: np.ndarray, magnitude: np.ndarray, members: np.ndarray,
                  rng: np.random.Generator, condition: str, data: str) -> None:
        """Clustering and neighbour purity (uniform, matched) and the original rank-sum on one set."""
        size = members.size
        res = output_set_clustering(features=features, members=members, magnitude=magnitude,
                                    params=self.clustering, rng=rng)
        self.add("clustering_uniform", condition, data, res.metrics["p"], size)
        self.add("clustering_matched", condition, data, res.metrics["p_matched"], size)
        self.add("clustering_specific", condition, data, res.metrics["p_specific"], size)
        pur = pert_neighbour_purity(embeddings=features, members=members, magnitude=magnitude, params=self.purity,
                                    rng=rng)
        self.add("neighbour_purity_uniform", condition, data, pur.metrics["p"], size)
        self.add("neighbour_purity_matched", condition, data, pur.metrics["p_matched"], size)
        sim = res.arrays["similarity"]
        self.add("original_rank_sum", condition, data,
                 original_rank_sum_p(sim, members, rng, self.cfg.rank_sum_pairs), size)

    def synthetic(self, seed: int) -> None:
        """One seed: for every set size, a null world (random and low-magnitude sets) and a planted world."""
        cfg = self.cfg
        rng = np.random.default_rng(derive_seed(cfg.base_seed, f"synthetic:{seed}"))
        for size in cfg.sizes:
            features, magnitude = confound_features(rng, cfg.n_kds, cfg.dim)
            self.set_tests(features, magnitude, rng.choice(cfg.n_kds, size, replace=False), rng, "null",
                           "synthetic: random sets")
            shares = [(cfg.low_share, "synthetic: low-magnitude sets")]
            if cfg.off_bin_share is not None:
                shares.append((cfg.off_bin_share, "synthetic: low-magnitude sets, off bin edges"))
            if cfg.crowded_share is not None:
                shares.append((cfg.crowded_share, "synthetic: low-magnitude sets, crowded"))
            for share, data in shares:
                low = np.argsort(magnitude)[: round(share * cfg.n_kds)]
                self.set_tests(features, magnitude, rng.choice(low, size, replace=False), rng, "null", data)
            members = rng.choice(cfg.n_kds, size, replace=False)
            features, magnitude = confound_features(rng, cfg.n_kds, cfg.dim, members, cfg.program_weight)
            self.set_tests(features, magnitude, members, rng, "planted", "synthetic: planted program")
            self._cross_model(rng, features, size, members)
            self._knockout(rng, size)
        self.related(seed)

    def related(self, seed: int) -> None:
        """One related-set world with its program (planted) and one without (null): every configured set tested
        with the null of record (other sets' members left out) and with the previous null (all knockdowns)."""
        cfg = self.cfg
        rng = np.random.default_rng(derive_seed(cfg.base_seed, f"related:{seed}"))
        for weight, condition in ((cfg.program_weight, "planted"), (0.0, "null")):
            world = related_world(rng, cfg.n_kds, cfg.dim, cfg.related_size, cfg.related_dominance, weight)
            for name in ("program_a", "program_b"):
                self._related_tests(world, name, rng, condition, RELATED[condition])
            if condition == "planted":  # the null sets beside the program, with the program's sets left out
                self._related_tests(world, "no_effect", rng, "null", NO_EFFECT_TRAP)
                self._related_tests(world, "low_magnitude", rng, "null", LOW_OFF_EDGES)

    def _related_tests(self, world: RelatedWorld, name: str, rng: np.random.Generator, condition: str,
                       data: str) -> None:
        members, size = world.sets[name], world.sets[name].size
        for excluded, suffix in ((world.others(name), ""), (None, ALL_KNOCKDOWNS)):
            res = output_set_clustering(features=world.features, members=members, magnitude=world.magnitude,
                                        null_excluded=excluded, params=self.clustering, rng=rng)
            pur = pert_neighbour_purity(embeddings=world.features, members=members, magnitude=world.magnitude,
                                        null_excluded=excluded, params=self.purity, rng=rng)
            self.add("clustering_matched" + suffix, condition, data, res.metrics["p_matched"], size)
            self.add("neighbour_purity_matched" + suffix, condition, data, pur.metrics["p_matched"], size)
            if not suffix:
                self.add("clustering_uniform", condition, data, res.metrics["p"], size)
                self.add("clustering_specific", condition, data, res.metrics["p_specific"], size)

    def _cross_model(self, rng: np.random.Generator, a: np.ndarray, size: int, program: np.ndarray) -> None:
        """Random sets: B unrelated (null) or A + noise (planted). The planted program's set in an unaligned B
        where the same members cluster too, in a direction of B's own (null: the spaces share no coordinates)."""
        cfg = self.cfg
        members = rng.choice(a.shape[0], size, replace=False)
        unit_a = _unit(a)
        unrelated = rng.normal(size=a.shape)
        noise = _unit(rng.normal(size=a.shape))
        related = cfg.cross_model_signal * unit_a + math.sqrt(1 - cfg.cross_model_signal**2) * noise
        unaligned, _ = confound_features(rng, cfg.n_kds, cfg.dim, program, cfg.program_weight)
        for condition, data, b, chosen in (("null", "synthetic: null", unrelated, members),
                                           ("planted", "synthetic: planted", related, members),
                                           ("null", "synthetic: clustered set, unaligned spaces", unaligned, program)):
            res = cross_model_cosine(embeddings_a=a, embeddings_b=b, members=chosen, params=self.cross, rng=rng)
            self.add("cross_model", condition, data, res.metrics["p"], size)
            self.add("cross_model_mismatched_only", condition, data, res.metrics["p_mismatched"], size)

    def _knockout(self, rng: np.random.Generator, size: int, n_genes: int = 60, n_out: int = 200) -> None:
        profiles_a = rng.normal(size=(n_genes, n_out))
        order = rng.permutation(n_genes)
        shared, specific = order[:size], order[size : 2 * size]
        names = [f"g{i}" for i in range(n_genes)]
        planted = rng.normal(size=(n_genes, n_out))
        planted[shared] += self.cfg.knockout_signal * profiles_a[shared]
        for condition, profiles_b in (("null", rng.normal(size=(n_genes, n_out))), ("planted", planted)):
            res = knockout_transfer(profiles_a=profiles_a, profiles_b=profiles_b, gene_names=names,
                                    shared_regulators=shared, specific_regulators=specific,
                                    params=self.knockout, rng=rng)
            self.add("knockout_shared_vs_specific", condition, f"synthetic: {condition}",
                     res.metrics["p_shared_minus_specific"], size)

    def demo_world(self, seed: int) -> None:
        """A generator null world: pseudo-bulk ΔY per line; every catalog program's set, plus cross-line cosine.
        Then the planted world of the same seed: its no-effect sets."""
        from tools.demo import catalog
        from tools.demo.world import generate_world

        adata, truth = generate_world(seed, null=True)
        kds = list(truth["knockdowns"])
        index = {k: i for i, k in enumerate(kds)}
        deltas = {line: pseudobulk_delta(adata, truth, line, kds) for line in truth["lines"]}
        rng = np.random.default_rng(derive_seed(self.cfg.base_seed, f"demo:{seed}"))
        data = "demo world (null): program sets"
        for delta in deltas.values():
            magnitude = np.linalg.norm(delta, axis=1)
            for _, names in catalog.PROGRAM_MEMBERS.values():
                members = np.array([index[n] for n in names if n in index])
                self.set_tests(delta, magnitude, members, rng, "null", data)
        first, second = (deltas[line] for line in truth["lines"][:2])
        for _, names in catalog.PROGRAM_MEMBERS.values():
            members = np.array([index[n] for n in names if n in index])
            res = cross_model_cosine(embeddings_a=first, embeddings_b=second, members=members,
                                     params=self.cross, rng=rng)
            self.add("cross_model", "null", "demo world (null): cross-line ΔY", res.metrics["p"], members.size)
            self.add("cross_model_mismatched_only", "null", "demo world (null): cross-line ΔY",
                     res.metrics["p_mismatched"], members.size)
        self._demo_no_effect(seed, rng)

    def _demo_no_effect(self, seed: int, rng: np.random.Generator, chunk: int = 10) -> None:
        """The planted world's no-effect knockdowns (each no-effect list, long ones in sets of ``chunk``)."""
        from tools.demo.world import generate_world

        adata, truth = generate_world(seed, null=False)
        kds = list(truth["knockdowns"])
        index = {k: i for i, k in enumerate(kds)}
        sets = []
        for names in truth["no_effect"].values():
            found = [index[n] for n in names if n in index]
            step = len(found) if len(found) < 2 * chunk else chunk
            sets += [np.array(found[i : i + step]) for i in range(0, len(found) - step + 1, step)]
        for line in truth["lines"]:
            delta = pseudobulk_delta(adata, truth, line, kds)
            magnitude = np.linalg.norm(delta, axis=1)
            for members in sets:
                self.set_tests(delta, magnitude, members, rng, "null", "demo world (planted): no-effect sets")


def pseudobulk_delta(adata: Any, truth: dict[str, Any], line: str, kds: list[str]) -> np.ndarray:
    """Per knockdown in ``line``: mean expression of its cells − mean of the line's control cells."""
    keys = truth["keys"]
    obs = adata.obs
    x = np.asarray(adata.obsm[keys["expression"]], dtype=np.float64)
    in_line = (obs[keys["cell_line"]] == line).to_numpy()
    labels = obs[keys["pert"]].astype(str).to_numpy()
    control = x[in_line & (labels == truth["control_label"])].mean(axis=0)
    return np.stack([x[in_line & (labels == k)].mean(axis=0) for k in kds]) - control


# ---------------------------------------------------------------- the run and its report

RELATED = {"planted": "synthetic: two sets of one program", "null": "synthetic: two sets of one ‖ΔY‖ band, no program"}
NO_EFFECT_TRAP = "synthetic: no-effect trap, other sets left out"
LOW_OFF_EDGES = "synthetic: low-magnitude sets, off bin edges, other sets left out"
RELATED_NULLS = (RELATED["null"], NO_EFFECT_TRAP, LOW_OFF_EDGES)
ALL_KNOCKDOWNS = "_all_knockdowns"
"""Family suffix of the previous matched null, which drew from every knockdown (null_excludes: none)."""
MIN_POWER = {("clustering_matched", RELATED["planted"]): 0.9, ("neighbour_purity_matched", RELATED["planted"]): 0.9}
"""Planted rows that must reach this power (inconclusive runs count as not found)."""

CALIBRATED = {"clustering_uniform": ("synthetic: random sets", "demo world (null): program sets"),
              "clustering_matched": ("synthetic: random sets", "synthetic: low-magnitude sets",
                                     "synthetic: low-magnitude sets, off bin edges",
                                     "synthetic: low-magnitude sets, crowded",
                                     "demo world (null): program sets", "demo world (planted): no-effect sets",
                                     *RELATED_NULLS),
              "clustering_specific": ("synthetic: random sets", "synthetic: low-magnitude sets",
                                      "synthetic: low-magnitude sets, off bin edges",
                                      "synthetic: low-magnitude sets, crowded",
                                      "demo world (null): program sets", "demo world (planted): no-effect sets",
                                      *RELATED_NULLS),
              "neighbour_purity_uniform": ("synthetic: random sets", "demo world (null): program sets"),
              "neighbour_purity_matched": ("synthetic: random sets", "synthetic: low-magnitude sets",
                                           "synthetic: low-magnitude sets, off bin edges",
                                           "synthetic: low-magnitude sets, crowded",
                                           "demo world (null): program sets", "demo world (planted): no-effect sets",
                                           *RELATED_NULLS),
              "cross_model": ("synthetic: null", "synthetic: clustered set, unaligned spaces",
                              "demo world (null): cross-line ΔY"),
              "knockout_shared_vs_specific": ("synthetic: null",)}
"""Where a family must hold alpha; other null rows are reported (the confound, the original test)."""
COMPARED = {"original_rank_sum": CALIBRATED["clustering_uniform"],
            "cross_model_mismatched_only": CALIBRATED["cross_model"],
            "clustering_matched" + ALL_KNOCKDOWNS: RELATED_NULLS,
            "neighbour_purity_matched" + ALL_KNOCKDOWNS: RELATED_NULLS}
"""The original test, on the same null data as the uniform clustering test it is compared with; the cross-model
test with its mismatched-knockdown null alone, on the cross-model null data; the previous matched null (every
knockdown a candidate) on the related-set worlds."""


def _run_chunk(cfg: CalibrationConfig, tasks: list[tuple[str, int]]) -> dict[tuple[str, str, str], Tally]:
    """Run (kind, seed) tasks in one process; its tallies."""
    runner = _Runner(cfg)
    with threadpool_limits(1):  # small matrices: BLAS threads only contend
        for kind, seed in tasks:
            runner.demo_world(seed) if kind == "demo" else runner.synthetic(seed)
    return dict(runner.tallies)


def calibrate(cfg: CalibrationConfig | None = None, workers: int | None = None) -> dict[str, Any]:
    """Run every family on null and planted data; rows of FPR (with the MC bound) and power.

    Seeds are split over ``workers`` processes (default: the CPU count, at most 4); the
    result does not depend on it, each seed having its own generator.
    """
    cfg = cfg or CalibrationConfig()
    workers = workers or min(4, os.cpu_count() or 1)
    tasks = [("demo", s) for s in range(cfg.demo_seeds)] + [("synthetic", s) for s in range(cfg.seeds)]
    chunks = [tasks[i::workers] for i in range(workers)]
    start = time.perf_counter()
    if workers == 1:
        parts = [_run_chunk(cfg, tasks)]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_run_chunk, [cfg] * workers, chunks))
    tallies: dict[tuple[str, str, str], Tally] = defaultdict(Tally)
    for part in parts:
        for key, tally in part.items():
            tallies[key].merge(tally)
    rows = []
    for (family, condition, data), tally in sorted(tallies.items()):
        row: dict[str, Any] = {"family": family, "condition": condition, "data": data, "n_runs": tally.runs,
                               "rejections": tally.rejections, "undefined": tally.undefined, "rate": tally.rate,
                               "by_size": {str(k): v[1] / v[0] for k, v in sorted(tally.by_size.items())}}
        if condition == "null":
            row["bound"] = mc_bound(cfg.alpha, tally.runs)
            row["within_bound"] = tally.rate <= row["bound"]
            row["must_hold"] = data in CALIBRATED.get(family, ())
        elif (family, data) in MIN_POWER:
            row["min_power"] = MIN_POWER[(family, data)]
            row["within_bound"] = tally.rate >= row["min_power"]
        rows.append(row)
    families = [_family_summary(f, datas, rows, cfg.alpha) for f, datas in (CALIBRATED | COMPARED).items()]
    return {"alpha": cfg.alpha, "config": asdict(cfg), "seconds": time.perf_counter() - start,
            "workers": workers, "families": families, "rows": rows}


def _family_summary(
    family: str, null_data: tuple[str, ...], rows: list[dict[str, Any]], alpha: float
) -> dict[str, Any]:
    """One family: FPR pooled over its null data sets (with the MC bound), power pooled over planted data."""
    null = [r for r in rows if r["family"] == family and r["data"] in null_data]
    planted = [r for r in rows if r["family"] == family and r["condition"] == "planted"]
    n_null, n_planted = sum(r["n_runs"] for r in null), sum(r["n_runs"] for r in planted)
    fpr = sum(r["rejections"] for r in null) / n_null if n_null else math.nan
    return {"family": family, "null_data": list(null_data), "n_null": n_null, "fpr": fpr,
            "bound": mc_bound(alpha, n_null), "calibrated": fpr <= mc_bound(alpha, n_null), "n_planted": n_planted,
            "power": sum(r["rejections"] for r in planted) / n_planted if n_planted else math.nan}


def family_table(result: dict[str, Any]) -> str:
    """Per family, as Markdown: null runs, FPR, MC bound, calibrated, planted runs, power."""
    lines = ["| family | null runs | FPR | MC bound | calibrated | planted runs | power |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for f in result["families"]:
        lines.append(f"| {f['family']} | {f['n_null']} | {f['fpr']:.3f} | {f['bound']:.3f} | "
                     f"{'yes' if f['calibrated'] else 'NO'} | {f['n_planted']} | {f['power']:.3f} |")
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    """The result as a Markdown table: one line per family × data."""
    lines = ["| family | data | runs | inconclusive | FPR | MC bound | calibrated | power | by set size |",
             "|---|---|---:|---:|---:|---:|---|---:|---|"]
    for row in result["rows"]:
        sizes = ", ".join(f"{k}: {v:.2f}" for k, v in row["by_size"].items())
        start = f"| {row['family']} | {row['data']} | {row['n_runs']} | {row['undefined']} |"
        if row["condition"] == "null":
            verdict = ("yes" if row["within_bound"] else "NO") + ("" if row["must_hold"] else " (reported)")
            lines.append(f"{start} {row['rate']:.3f} | {row['bound']:.3f} | {verdict} | | {sizes} |")
        else:
            verdict = (f"{'yes' if row['within_bound'] else 'NO'} (power ≥ {row['min_power']:g})"
                       if "min_power" in row else "")
            lines.append(f"{start} | | {verdict} | {row['rate']:.3f} | {sizes} |")
    return "\n".join(lines)


def write_reports(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``calibration.json`` and ``calibration.md`` into ``out_dir``."""
    out = Path(out_dir)
    atomic_write_text(out / "calibration.json", json.dumps(result, indent=1) + "\n")
    cfg = result["config"]
    text = (f"# Calibration of the probes' tests\n\nalpha = {result['alpha']}; {cfg['seeds']} synthetic seeds × "
            f"set sizes {cfg['sizes']}, and per seed two related-set worlds (sets of {cfg['related_size']}); "
            f"{cfg['demo_seeds']} demo null worlds; {result['seconds']:.0f} s on {result.get('workers', '?')} "
            f"process(es). Regenerate with `{COMMAND}`.\n"
            f"FPR: share of null runs with p < alpha (runs the probe found inconclusive are left out and counted "
            f"apart); MC bound: alpha + 2·sqrt(alpha(1 − alpha)/n). Power: share of planted runs with p < alpha "
            f"(an inconclusive run counts as not found); rows with a power bound must reach it.\n\n"
            f"## Per family\n\nFPR pooled over the null data "
            f"where the family must hold alpha (the original rank-sum test: the uniform test's null data).\n\n"
            f"{family_table(result)}\n\n## Per family and data set\n\n{table(result)}\n\n"
            + __doc__.split("Usage::")[0].split("\n\n", 1)[1].strip() + "\n")
    atomic_write_text(out / "calibration.md", text)
    return out


COMMAND = "OMP_NUM_THREADS=1 python -m tools.calibration.clustering --workers 1"
"""The command that wrote reports/calibration/calibration.md (the defaults: 400 seeds, 5 demo worlds)."""


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=CalibrationConfig.seeds)
    parser.add_argument("--demo-seeds", type=int, default=CalibrationConfig.demo_seeds)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 4)")
    parser.add_argument("--out", default="reports/calibration")
    args = parser.parse_args(None if argv is None else list(argv))
    result = calibrate(CalibrationConfig(seeds=args.seeds, demo_seeds=args.demo_seeds), workers=args.workers)
    print(family_table(result), table(result), sep="\n\n")
    print(f"wrote {write_reports(result, args.out)}")


if __name__ == "__main__":
    main()
