"""Sketched Jacobian Grams: routing error against k on the demo worlds, and time per knockdown at real sizes.

Part 1, accuracy (the bundled demo world and its null world; model fewshot, HepG2, 254 knockdowns, H = 64,
``--cells`` control cells per sentence): the Gram from the first k rows of one random orthogonal basis, for
k in ``--ks`` and ``--seeds`` seeds, against the exact Gram. Reported per k: |Δ r| of the routing probe's Mantel
r and partial r (``selection: all``), whether its verdict (partial-Mantel p < 0.05) agrees, the median |Δ cosine|
of the Gram and the median standard error the sketch reported for the cosines.

Part 2, time (a randomly initialised arc-state ST model at ST-HVG-Replogle sizes, built as in
``tools/bench/jacobian_bench.py``, ``--real-cells`` cells, ``--threads`` torch threads): one 32-direction chunk of
:meth:`Artifacts.gram_chunk`'s kind (one JVP call per knockdown) on ``--pilot-kds`` knockdowns gives the seconds
per (knockdown, direction) column, and as a pilot the k that ``target_error`` needs on these random weights;
one ``(K, G) @ (G, K)`` product at K = 2023 gives the Gram-matmul seconds per direction. Projected: the
all-knockdown (2,023) Gram of one model, exact (328 directions) and sketched (k), on 2 cores running one
single-thread chunk each.

Usage::

    python -m tools.bench.sketch_bench                    # ~5 min on a 2-core CPU; writes reports/bench/sketch.json
    python -m tools.bench.sketch_bench --skip-real        # accuracy only

Every record carries the device, threads, the 1-minute load average before and after and ``under_load``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from hypocheck.atomic import atomic_write_text
from tools.bench.jacobian_bench import (
    ALL_KDS,
    HIDDEN,
    N_BATCHES,
    N_GENES,
    UNDER_LOAD_RULE,
    build_adapter,
    device_name,
    under_load,
)

OUT = Path("reports/bench/sketch.json")
ROOT = Path(__file__).resolve().parents[2]
TARGET_ERROR = 0.02
CHUNK = 32


def _loadavg() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# ------------------------------------------------------------------ accuracy
def _demo_context(world: str, cells: int, tmp: Path) -> Any:
    """The demo suite (its models) on ``world``'s data, on the CPU, exact Grams."""
    import yaml

    from hypocheck.fixtures.config import SuiteConfig
    from hypocheck.fixtures.context import SuiteContext

    base = yaml.safe_load((ROOT / "suite.yaml").read_text())
    for spec in base["models"].values():
        spec["run_dir"] = str(ROOT / spec["run_dir"])
    base["data"]["path"] = str(ROOT / "tools" / "demo" / world / "demo.h5ad")
    base["truth"] = str(ROOT / "tools" / "demo" / world / "truth.json")
    base.pop("sae", None)
    base.update(device="cpu", gram={"method": "exact"})
    base["control_sentence"]["cells"] = cells
    path = tmp / world / "suite.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(base))
    return SuiteContext(SuiteConfig.load(path))


def _cosine(gram: np.ndarray) -> np.ndarray:
    n = np.sqrt(np.clip(np.diag(gram), 1e-300, None))
    return gram / np.outer(n, n)


def accuracy(world: str, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Per (k, seed): the routing statistics and Gram cosines of the sketch against the exact Gram."""
    from hypocheck.fixtures import grams
    from hypocheck.fixtures.jacobian_artifacts import GramSpec
    from hypocheck.fixtures.routing_inputs import routing_arrays
    from hypocheck.models import ModelRef
    from hypocheck.probes.kinds import RoutingInputs
    from hypocheck.probes.routing import RoutingParams
    from hypocheck.registry import get_probe

    ctx = _demo_context(world, args.cells, tmp)
    art = ctx.artifacts
    model, line = "fewshot", "hepg2"
    case = SimpleNamespace(axes={"model": model, "cell_line": line}, model=ModelRef(model), inputs=RoutingInputs(),
                           location=None)
    params = RoutingParams(selection="all", permutations=args.permutations, bootstrap=99)
    start = time.perf_counter()
    exact_in = routing_arrays(art, case)  # type: ignore[arg-type]
    exact_s = time.perf_counter() - start
    exact = get_probe("routing_coherence").run(exact_in, params=params, rng=np.random.default_rng(0)).metrics
    exact_cos = _cosine(exact_in.jacobian_gram)
    basis = art.jacobians.gram_spec_params(model, False)[1]
    off = ~np.eye(exact_cos.shape[0], dtype=bool)
    sentence = ("random", None)
    records = []
    for seed in range(args.seeds):
        shares: list[grams.GramShare] = []
        done = 0
        for k in sorted(k for k in args.ks if k <= basis):
            spec = GramSpec("sketch", k, seed, "fp32")
            for a in range(done, k, CHUNK):
                shares.append(art.jacobians.gram_chunk(model, line, False, sentence, spec, a, min(a + CHUNK, k)))
            done = k
            est = grams.estimate_gram(grams.reduce_gram_shares(shares), method="sketch", basis=basis)
            gram = est.gram.numpy()
            metrics = get_probe("routing_coherence").run(dataclasses.replace(exact_in, jacobian_gram=gram),
                                                         params=params, rng=np.random.default_rng(0)).metrics
            cos_err = np.abs(_cosine(gram) - exact_cos)[off]
            records.append({
                "world": world, "k": k, "seed": seed, "basis": basis,
                "d_pearson": abs(metrics["pearson"] - exact["pearson"]),
                "d_partial": abs(metrics["partial_pearson"] - exact["partial_pearson"]),
                "verdict_agrees": bool((metrics["p_partial"] < 0.05) == (exact["p_partial"] < 0.05)),
                "median_cos_err": float(np.median(cos_err)), "max_cos_err": float(cos_err.max()),
                "median_cos_se": est.median_cosine_se(),
                "exact_pearson": exact["pearson"], "exact_partial": exact["partial_pearson"],
                "exact_seconds": exact_s,
            })
            print(f"  {world:<10} k={k:>3} seed={seed}: |Δr| {records[-1]['d_pearson']:.4f}  |Δpartial r| "
                  f"{records[-1]['d_partial']:.4f}  median |Δcos| {records[-1]['median_cos_err']:.4f}  "
                  f"median SE {records[-1]['median_cos_se']:.4f}", flush=True)
    return records


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (world, k): the worst |Δ r| over seeds, the mean cosine error and SE, verdict agreement."""
    rows = []
    for world in dict.fromkeys(r["world"] for r in records):
        for k in sorted({r["k"] for r in records if r["world"] == world}):
            sel = [r for r in records if r["world"] == world and r["k"] == k]
            rows.append({
                "world": world, "k": k, "basis": sel[0]["basis"], "seeds": len(sel),
                "max_d_pearson": max(r["d_pearson"] for r in sel),
                "max_d_partial": max(r["d_partial"] for r in sel),
                "verdicts_agree": sum(r["verdict_agrees"] for r in sel),
                "median_cos_err": float(np.mean([r["median_cos_err"] for r in sel])),
                "median_cos_se": float(np.mean([r["median_cos_se"] for r in sel])),
            })
    return rows


# ---------------------------------------------------------------------- time
def real_size(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per (knockdown, direction) column and per Gram-matmul direction at ST-HVG sizes; the pilot's k."""
    from hypocheck.fixtures import grams, jacobians

    with tempfile.TemporaryDirectory() as tmp:
        print(f"building the ST-HVG-sized model ({args.real_cells} cells) ...", flush=True)
        adapter = build_adapter(Path(tmp) / "st_hvg_sized", args.real_cells, "cpu")
    gen = torch.Generator().manual_seed(42)
    basal = torch.rand(args.real_cells, N_GENES, generator=gen) * 2
    batch = torch.randint(0, N_BATCHES, (args.real_cells,), generator=gen)
    n_perts = len(adapter.pert_names)
    kds = [adapter.pert_names[1 + i * (n_perts - 1) // args.pilot_kds] for i in range(args.pilot_kds)]
    reps = adapter.encode_perturbation(adapter.onehot(kds)).detach()

    def f(r: torch.Tensor) -> torch.Tensor:
        return adapter.forward_from_repr(r[None], basal, batch)[0].mean(0)

    dirs = grams.gram_directions(HIDDEN, sketch=CHUNK, seed=0)
    plan = jacobians.ChunkPlan(items=1, tangents=CHUNK)
    grams.gram_share(f, reps[:1], dirs[:8], plan=jacobians.ChunkPlan(items=1, tangents=8))  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    share = grams.gram_share(f, reps, dirs, plan=plan)
    per_column = (time.perf_counter() - start) / (len(kds) * CHUNK)
    cpu_per_column = (time.process_time() - cpu_start) / (len(kds) * CHUNK)
    pilot = grams.estimate_gram(share, method="sketch", basis=HIDDEN)
    k = grams.directions_for_target(pilot, TARGET_ERROR, step=CHUNK)
    x = torch.randn(ALL_KDS, N_GENES, generator=gen)
    x @ x.T
    start = time.perf_counter()
    for _ in range(3):
        x @ x.T
    per_matmul = (time.perf_counter() - start) / 3

    def project(directions: int, column: float = per_column) -> float:
        """Hours for all 2,023 knockdowns' Gram on 2 cores, one single-thread chunk each."""
        return (ALL_KDS * directions * column + directions * per_matmul) / 2 / 3600

    return {
        "cells": args.real_cells, "pilot_kds": len(kds), "pilot_directions": CHUNK,
        "seconds_per_column": per_column, "seconds_per_gram_matmul_direction": per_matmul,
        "cpu_seconds_per_column": cpu_per_column,
        "note": "seconds_per_column is wall time; cpu_seconds_per_column the process's CPU time (one thread), "
                "closer to an idle core's wall time when the machine is shared",
        "pilot_median_cos_se": pilot.median_cosine_se(), "target_error": TARGET_ERROR, "k_for_target": k,
        "seconds_per_kd_exact": HIDDEN * per_column, "seconds_per_kd_sketch": k * per_column,
        "projected_hours_all_kds_2_cores": {"exact": project(HIDDEN), "sketch": project(k),
                                            **{f"sketch_k{n}": project(n) for n in (32, 64)}},
        "projected_hours_all_kds_2_idle_cores": {"exact": project(HIDDEN, cpu_per_column),
                                                 **{f"sketch_k{n}": project(n, cpu_per_column) for n in (32, 64)}},
    }


# ------------------------------------------------------------------- output
def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'world':<11}{'k':>4}{'/H':>4}  {'max|Δr|':>8}  {'max|Δpartial|':>13}  {'verdicts':>8}  " \
           f"{'med|Δcos|':>9}  {'med SE':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['world']:<11}{r['k']:>4}{r['basis']:>4}  {r['max_d_pearson']:>8.4f}  "
                     f"{r['max_d_partial']:>13.4f}  {r['verdicts_agree']:>4}/{r['seeds']:<3}  "
                     f"{r['median_cos_err']:>9.4f}  {r['median_cos_se']:>7.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--cells", type=int, default=8, help="control cells per sentence on the demo worlds")
    parser.add_argument("--permutations", type=int, default=199)
    parser.add_argument("--worlds", nargs="+", default=["world", "null_world"])
    parser.add_argument("--real-cells", type=int, default=64)
    parser.add_argument("--pilot-kds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true",
                        help="time only; keep the accuracy part of an existing --out file")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = [_loadavg()]
    records: list[dict[str, Any]] = []
    previous = json.loads(args.out.read_text()) if args.skip_accuracy and args.out.is_file() else None
    with tempfile.TemporaryDirectory() as tmp:
        for world in [] if args.skip_accuracy else args.worlds:
            print(f"accuracy on the demo {world} ({args.cells} cells per sentence) ...", flush=True)
            records += accuracy(world, args, Path(tmp))
    rows = summarise(records)
    real = None if args.skip_real else real_size(args)
    load.append(_loadavg())
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "device": device_name(torch.device("cpu")),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "load_avg_1min": load,
        "under_load": under_load(load, args.threads, os.cpu_count()), "under_load_rule": UNDER_LOAD_RULE,
        "demo": {"model": "fewshot", "cell_line": "hepg2", "cells": args.cells, "seeds": args.seeds,
                 "permutations": args.permutations, "summary": rows, "records": records},
        "real_size": real,
    }
    if previous is not None and previous.get("demo"):
        report["demo"] = {**previous["demo"], "from_run": {k: previous.get(k) for k in (
            "date", "load_avg_1min", "under_load")}}
        rows = report["demo"]["summary"]
    print(table(rows))
    if real is not None:
        hours = real["projected_hours_all_kds_2_cores"]
        print(f"real size ({real['cells']} cells, {args.threads} thread): {real['seconds_per_column']:.3f} s per "
              f"(knockdown, direction); exact {real['seconds_per_kd_exact']:.1f} s per knockdown, sketch "
              f"k={real['k_for_target']} {real['seconds_per_kd_sketch']:.1f} s (pilot median cosine SE "
              f"{real['pilot_median_cos_se']:.2g} at {CHUNK} directions); CPU time "
              f"{real['cpu_seconds_per_column']:.3f} s per column")
        idle = real["projected_hours_all_kds_2_idle_cores"]
        print(f"  at CPU time (an idle core): exact {idle['exact']:.2f} h, k=32 {idle['sketch_k32']:.2f} h, "
              f"k=64 {idle['sketch_k64']:.2f} h")
        print(f"projected all-{ALL_KDS}-knockdown Gram on 2 cores: exact {hours['exact']:.2f} h, sketch "
              f"{hours['sketch']:.2f} h (k=32: {hours['sketch_k32']:.2f} h, k=64: {hours['sketch_k64']:.2f} h)")
    if report["under_load"]:
        print(f"under load: 1-minute load average {load} on {os.cpu_count()} cores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
