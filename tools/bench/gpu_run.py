"""The real-size GPU run, in one command that fits 8 minutes: engine vs notebook, every knockdown in three
precisions, and the five paper claims through the suite's own path; one JSON record per figure.

What it does (``bash tools/bench/gpu_run.sh`` installs the bundle first, then runs this):

1. ``setup``: a world at ST-HVG-Replogle sizes (2,000 genes, 2,024 perturbations, four lines; one perturbed
   cell per knockdown and line: the claims read the model, not those cells) and two ST models of real size
   (hidden 328, 8 layers) with random weights, the planted pert_encoder of ``make scale-world`` and no
   training (``tools.demo.scale.build_untrained``); a suite config per precision (``gram: exact``).
2. ``engine_vs_notebook``: ``∂Ȳ/∂r`` of the fewshot model on HepG2's 64-cell sentence for a few knockdowns,
   by the notebooks' ``torch.autograd.functional.jacobian`` (all output rows, one knockdown at a time) and by
   the engine (``pert_jacobians``) on the same knockdowns: seconds per knockdown, ratio, max relative error;
   the engine also under tf32 and bf16 (their time per knockdown budgets the next stage).
3. ``all_knockdowns``: for fp32, tf32 and bf16, through the suite's artifacts: ΔY of all 2,023 knockdowns, the
   exact Gram of ``∂Ȳ/∂r`` and the exact one-hot Gram; time, peak GPU memory (``max_memory_allocated``) and
   routing coherence r (the claim-5 probe) against fp32.
4. ``suite``: every case of ``hypotheses/paper`` (config → context → provider → probe → judge, as
   ``tools/bench/suite_bench.py``), in one process whose artifacts are shared, as a run shares them (the fp32
   fewshot Gram and ΔY of stage 3 are reused); per claim wall time, peak GPU memory, verdicts. Control twins
   (``controls:``) are not run.

Budget. Each stage (and each Gram) is estimated before it starts, from its floating-point operations (the
model's sizes, ``tools.bench.flops``) at the rate measured in stage 2, and is cut, with the estimate and the
time left in its record, when it would overrun ``--budget-s``. Order: setup, stage 2, fp32, suite, tf32, bf16.

Usage::

    bash tools/bench/gpu_run.sh                         # on the GPU machine, records under $OUT
    python -m tools.bench.gpu_run --dry-run --out DIR   # tiny sizes on CPU in seconds (tests/test_gpu_run.py)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tools.bench import flops, imports
from tools.bench.gpu_bundle import DEVICE_HAS
from tools.bench.jacobian_bench import _status_kb, device_name, rel_err
from tools.demo.scale import SCALE_LINES, SCALE_SPEC, SCALE_TEMPLATES, ScaleTrainConfig, build_untrained
from tools.demo.world import WorldSpec

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "hypotheses" / "paper"
PRECISIONS = ("fp32", "tf32", "bf16")
MODEL, LINE = "fewshot", "hepg2"
TARGETS = {"all_knockdowns_exact_s": 120.0, "suite_s": 600.0, "peak_gpu_bytes": 20e9, "routing_r_vs_fp32": 1e-3}
GRAM_OVERHEAD = 1.3  # a Gram's JVP columns cost more than pert_jacobians' (blocks, products, float64 sums)
CLAIM_OVERHEAD_S = 15.0  # a claim's probes and nulls on the host (5,000 null sets, 1,000 bootstraps)
DRY_SPEC = WorldSpec(lines=SCALE_LINES, templates=SCALE_TEMPLATES, n_control=32, n_per_kd=1, n_genes=256,
                     n_knockdowns=254)
DRY_CFG = ScaleTrainConfig(hidden=16, layers=2, heads=2, head_dim=8, intermediate=32, cell_set_len=8)
DRY_KEEP = 40  # knockdowns of the dry run: the 16 mitoribosome members and random others (other sets: a few)
DRY_SETS = ["mitoribosome"]
DRY_LINES = ["hepg2", "jurkat"]  # the lines the paper claims name
DRY_RESAMPLES = {"null_sets": 200, "bootstrap": 99, "permutations": 99}  # the dry run's probes: seconds, not minutes
PROBE_PERMUTATIONS = 99  # routing r is the plain correlation; its permutation p is not what is compared


# ------------------------------------------------------------------------------------------------- records
class Run:
    """The run's budget, common fields and records (each written to ``out`` as soon as it changes)."""

    def __init__(self, out: Path, budget_s: float, device: torch.device, dry_run: bool) -> None:
        self.out, self.budget_s, self.device, self.dry_run = out, budget_s, device, dry_run
        self.start = time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        self.base = {"device": device.type, "device_name": device_name(device), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "python": platform.python_version(), "dry_run": dry_run,
                     "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "budget_s": budget_s}
        self.records: dict[str, dict[str, Any]] = {}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def fits(self, estimate_s: float) -> tuple[bool, str]:
        """Whether a stage estimated at ``estimate_s`` fits the time left, and the note when it does not."""
        left = self.left()
        return estimate_s <= left, f"cut: estimated {estimate_s:.0f} s, {left:.0f} s of the budget left"

    def record(self, name: str, **fields: Any) -> dict[str, Any]:
        rec = self.records.setdefault(name, {"record": name, **self.base})
        rec.update(fields)
        self.save(name)
        return rec

    def save(self, name: str) -> None:
        path = self.out / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.records[name], indent=1, default=_plain) + "\n")
        tmp.replace(path)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


@contextmanager
def stage(run: Run, name: str) -> Iterator[None]:
    """Run a stage: its record says done or error (with the traceback's end); the run goes on after an error."""
    start = time.monotonic()
    run.record(name, status="running")
    try:
        yield
    except Exception as exc:
        run.record(name, status="error", error=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc()[-3000:], wall_s=time.monotonic() - start)
        print(f"[{name}] ERROR {type(exc).__name__}: {exc}", flush=True)
        return
    rec = run.records[name]
    if rec["status"] == "running":
        rec["status"] = "done"
    run.record(name, wall_s=time.monotonic() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float, int | None]:
    """``fn()``, its wall seconds and, on CUDA, the peak GPU memory allocated while it ran (absolute bytes)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return value, time.perf_counter() - start, peak


# -------------------------------------------------------------------------------------------------- setup
def write_config(world: Path, device: str, precision: str, lines: list[str] | None = None) -> Path:
    """The world's suite config with ``device``, ``precision``, exact Grams (and ``lines`` only, when given), as
    ``suite-<precision>.yaml``."""
    data = yaml.safe_load((world / "suite.yaml").read_text())
    data.update(device=device, precision=precision, gram={"method": "exact"})
    if lines:
        data["cell_lines"] = lines
    path = world / f"suite-{precision}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def context(config_path: Path, keep: int | None = None) -> Any:
    """A suite context on ``config_path`` (artifacts kept in memory for the process: shared across claims);
    with ``keep``, on the claims' gene-set members and seeded random others, ``keep`` knockdowns in all."""
    from hypocheck.cache import ArtifactCache
    from hypocheck.fixtures.artifacts import Artifacts
    from hypocheck.fixtures.config import SuiteConfig
    from hypocheck.fixtures.context import SuiteContext
    from tools.bench.suite_bench import _subset_suite

    config = SuiteConfig.load(config_path)
    ctx = SuiteContext(config, ArtifactCache("", enabled=False))
    if keep is not None:
        ctx.suite = _subset_suite(config, keep, DRY_SETS)
        ctx.artifacts = Artifacts(ctx.suite, ArtifactCache("", enabled=False))
    return ctx


def setup(run: Run, work: Path, per_kd: int) -> dict[str, Path]:
    spec = DRY_SPEC if run.dry_run else WorldSpec(**{**SCALE_SPEC.__dict__, "n_per_kd": per_kd})
    cfg = DRY_CFG if run.dry_run else ScaleTrainConfig()
    cells = 16 if run.dry_run else 64
    seconds = build_untrained(work, spec, cfg, sentence_cells=cells)
    configs = {p: write_config(work, run.device.type, p, DRY_LINES if run.dry_run else None) for p in PRECISIONS}
    sizes = flops.Sizes(genes=spec.n_genes or 0, hidden=cfg.hidden, layers=cfg.layers,
                        attention=cfg.heads * cfg.head_dim, mlp=cfg.intermediate, cells=cells)
    dry = {"dry_sizes": {"knockdowns": DRY_KEEP, "cell_lines": DRY_LINES, "probe_resamples": DRY_RESAMPLES}}
    world = {"genes": spec.n_genes, "knockdowns": spec.n_knockdowns, "lines": list(spec.lines),
             "cells_per_knockdown": spec.n_per_kd, "control_cells": spec.n_control}
    run.record("setup", **(dry if run.dry_run else {}), world=world,
               model={"hidden": cfg.hidden, "layers": cfg.layers, "heads": cfg.heads, "head_dim": cfg.head_dim,
                      "mlp": cfg.intermediate, "weights": "random, planted pert_encoder, not trained"},
               sentence_cells=cells, sizes=sizes.__dict__, **seconds)
    return configs


# --------------------------------------------------------------------------------------- engine vs notebook
def engine_vs_notebook(run: Run, ctx: Any, sizes: flops.Sizes, kds: int, notebook_kds: int) -> dict[str, float]:
    """Stage 2; returns the engine's seconds per knockdown per precision (the budget's rates)."""
    from hypocheck.fixtures.jacobians import pert_jacobians
    from hypocheck.fixtures.precision import matmul_precision, with_precision

    adapter = ctx.suite.model(MODEL)
    names = ctx.suite.knockdowns(MODEL)
    chosen = [names[i * len(names) // kds] for i in range(kds)]
    with torch.no_grad():
        reps = adapter.encode_perturbation(adapter.onehot(chosen)).detach()
    f = ctx.artifacts.outputs.mean_output(MODEL, LINE, ("random", None))
    pert_jacobians(f, reps[:1], progress=False)  # warm-up: kernels, handles, the chunk plan's probe
    device = reps.device
    nb_rows: list[torch.Tensor] = []
    nb_s: list[float] = []
    for r in reps[:notebook_kds]:
        if nb_s and run.left() < 3 * nb_s[0] + 60:  # keep time for the rest of the run
            break
        jac, seconds, _ = timed(device, partial(torch.autograd.functional.jacobian, f, r))
        nb_rows.append(jac)
        nb_s.append(seconds)
    rates: dict[str, float] = {}
    engine: dict[str, Any] = {}
    reference: torch.Tensor | None = None
    for precision in PRECISIONS:
        g = with_precision(f, precision, device)
        with matmul_precision(precision, device):
            jac, seconds, peak = timed(device, partial(pert_jacobians, g, reps, progress=False))
        rates[precision] = seconds / kds
        reference = jac if reference is None else reference
        engine[precision] = {"s_per_kd": seconds / kds, "peak_gpu_bytes": peak,
                             "tflop_per_s": kds * sizes.hidden * sizes.jvp_column() / seconds / 1e12,
                             "max_rel_err_vs_fp32_engine": max(rel_err(jac[k], reference[k]) for k in range(kds))}
    notebook = sum(nb_s) / len(nb_s)
    assert reference is not None
    error = max(rel_err(reference[k], nb_rows[k]) for k in range(len(nb_rows)))
    run.record("engine_vs_notebook", model=MODEL, cell_line=LINE, knockdowns=chosen,
               notebook={"method": "torch.autograd.functional.jacobian per knockdown, all output rows (the "
                                   "notebooks' call)", "kds": len(nb_s), "s_per_kd": notebook, "each_s": nb_s},
               engine=engine, ratio=notebook / rates["fp32"], max_rel_err_engine_vs_notebook=error,
               flop_per_kd=sizes.hidden * sizes.jvp_column())
    return rates


# ------------------------------------------------------------------------------------------ all knockdowns
def routing_r(delta_y: np.ndarray, gram: np.ndarray, names: list[str], reps: np.ndarray) -> dict[str, float]:
    """The claim-5 probe's plain and partial routing coherence on these arrays (seed 0)."""
    from hypocheck.probes.routing import RoutingParams
    from hypocheck.registry import get_probe

    params = RoutingParams(permutations=PROBE_PERMUTATIONS, bootstrap=PROBE_PERMUTATIONS)
    result = get_probe("routing_coherence").run(
        {"delta_y": delta_y, "jacobian_gram": gram, "names": names, "pert_repr": reps}, params=params,
        rng=np.random.default_rng(0))
    return {k: float(result.metrics[k]) for k in ("pearson", "spearman", "partial_pearson")}


def _cosine(gram: np.ndarray) -> np.ndarray:
    norm = np.sqrt(np.clip(np.diag(gram), 1e-300, None))
    return gram / norm[:, None] / norm[None, :]


def all_knockdowns(run: Run, ctx: Any, precision: str, sizes: flops.Sizes, s_per_kd: float,
                   fp32: dict[str, Any]) -> None:
    """Stage 3 for one precision: ΔY, exact Gram, one-hot Gram of every knockdown; r against fp32."""
    art = ctx.artifacts
    names = ctx.suite.knockdowns(MODEL)
    k = len(names)
    _, reps = art.embeddings.pert_embeddings(MODEL)
    rec: dict[str, Any] = {"knockdowns": k, "cells": sizes.cells}
    delta_y, rec["delta_y_s"], peak_dy = timed(run.device, lambda: art.outputs.delta_y(MODEL, LINE))
    peaks = [p for p in (peak_dy,) if p is not None]
    for onehot, key in ((False, "gram"), (True, "onehot_gram")):
        estimate = GRAM_OVERHEAD * k * s_per_kd
        rec[f"{key}_estimate_s"] = estimate
        rec[f"{key}_flop"] = k * sizes.hidden * sizes.jvp_column() + sizes.gram_accumulation(k, sizes.hidden)
        ok, note = run.fits(estimate)
        if not ok:
            rec[f"{key}_note"] = note
            continue
        est, seconds, peak = timed(run.device, partial(art.jacobians.jacobian_gram_estimate, MODEL, LINE, onehot))
        rec[f"{key}_s"] = seconds
        rec[f"{key}_tflop_per_s"] = rec[f"{key}_flop"] / seconds / 1e12
        peaks += [peak] if peak is not None else []
        rec[f"{key}_method"] = f"{est['method']} ({est['directions']} of {est['basis']} directions)"
        r = routing_r(delta_y, est["gram"], names, reps)
        rec[f"{key}_routing_r"] = r
        if precision == "fp32":
            fp32[key] = (r, _cosine(est["gram"]))
        elif key in fp32:
            r0, cos0 = fp32[key]
            rec[f"{key}_routing_r_diff_vs_fp32"] = {m: abs(r[m] - r0[m]) for m in r}
            rec[f"{key}_max_cosine_diff_vs_fp32"] = float(np.abs(_cosine(est["gram"]) - cos0).max())
        run.record(f"all_knockdowns_{precision}", **rec)
    rec["peak_gpu_bytes"] = max(peaks) if peaks else None
    rec["peak_rss_bytes"] = (_status_kb("VmHWM") or 0) * 1024
    if "gram_s" in rec:
        rec["exact_all_knockdowns_s"] = rec["delta_y_s"] + rec["gram_s"]
    run.record(f"all_knockdowns_{precision}", **rec)


# -------------------------------------------------------------------------------------------------- suite
CLAIM_WORK = {  # forward passes (ΔY or layer features) of all knockdowns, and new exact Grams, per claim
    "claim1_pert_encoder_clustering": (4, 0),  # ‖ΔY‖ in every line for the magnitude-matched null (fewshot)
    "claim2_mito_output_clustering": (4, 0),  # features, 2 models × 2 lines
    "claim3_er_no_output_clustering": (0, 0),  # the same features as claim 2
    "claim4_knockout_transfer": (1, 0),  # 200 knockouts × 2 lines × 2 models: under one ΔY's worth
    "claim5_routing_backbone": (1, 1),  # zeroshot ΔY and Gram (fewshot's come from the fp32 stage)
}


def dry_params(params: Any) -> Any:
    """A case's probe parameters with the dry run's small resampling counts (``DRY_RESAMPLES``)."""
    update = {k: v for k, v in DRY_RESAMPLES.items() if k in type(params).model_fields}
    return params.model_copy(update=update)


def suite(run: Run, ctx: Any, config_path: Path, forward_s: float, gram_s: float) -> None:
    """Stage 4: every paper claim's cases through the suite's path, artifacts shared with the fp32 stage."""
    from hypocheck.verdict import judge
    from tools.bench.suite_bench import _case_models, claim_cases

    claims: list[dict[str, Any]] = []
    for path in sorted(PAPER.glob("*.yaml")):
        forwards, grams_new = CLAIM_WORK.get(path.stem, (4, 1))
        estimate = forwards * forward_s + grams_new * gram_s + CLAIM_OVERHEAD_S
        rec: dict[str, Any] = {"claim": path.stem, "estimate_s": estimate}
        claims.append(rec)
        ok, note = run.fits(estimate)
        if not ok:
            rec["note"] = note
            run.record("suite", claims=claims)
            continue
        cases = claim_cases(path, config_path)

        def run_cases(cases: list[Any] = cases) -> list[dict[str, Any]]:
            out = []
            for case in cases:
                start = time.perf_counter()
                inputs = ctx.prepare(case)
                params = dry_params(case.params) if run.dry_run else case.params
                result = case.probe.run(inputs, params=params, rng=np.random.default_rng(case.seed))
                out.append({"case": case.name, "verdict": judge(case, result).verdict,
                            "models": _case_models(case), "s": time.perf_counter() - start})
            return out

        rec["cases"], rec["wall_s"], rec["peak_gpu_bytes"] = timed(run.device, run_cases)
        rec["verdicts"] = {c["case"]: c["verdict"] for c in rec["cases"]}
        print(f"[suite] {path.stem}: {rec['wall_s']:.1f} s", flush=True)
        run.record("suite", claims=claims)
    done = [c for c in claims if "wall_s" in c]
    total = sum(c["wall_s"] for c in done)
    peaks = [c["peak_gpu_bytes"] for c in done if c.get("peak_gpu_bytes") is not None]
    run.record("suite", claims=claims, total_s=total, complete=len(done) == len(claims),
               peak_gpu_bytes=max(peaks) if peaks else None, peak_rss_bytes=(_status_kb("VmHWM") or 0) * 1024,
               shared_artifacts="one process: the fp32 stage's fewshot ΔY and Grams (HepG2) are reused, and "
                                "claims reuse each other's, as in a run",
               controls="control twins (controls: randomized, shuffled_perts) not run, as tools/bench/suite_bench.py")


# --------------------------------------------------------------------------------------------------- main
def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in ("hypocheck", "arc-state", "transformers", "lightning", "anndata", "numpy", "scipy", "pandas",
                 "pydantic", "scikit-learn"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def imported_distributions() -> dict[str, Any]:
    """The distributions this run needs beyond the device image (imported by anything but the image's own
    packages) and each imported distribution's importers; empty when not started through ``gpu_run.sh``."""
    recorder = imports.current()
    if recorder is None:
        return {}
    needed, importers = recorder.needed(DEVICE_HAS)
    return {"needed": needed, "importers": importers}


def targets(run: Run) -> None:
    """Each target beside what was measured (not judged on a dry run: its sizes are not real)."""
    recs = run.records
    fp32 = recs.get("all_knockdowns_fp32", {})
    peaks = [int(r["peak_gpu_bytes"]) for n, r in recs.items()
             if (n.startswith("all_knockdowns") or n == "suite") and r.get("peak_gpu_bytes") is not None]
    diffs = {p: recs.get(f"all_knockdowns_{p}", {}).get("gram_routing_r_diff_vs_fp32", {}).get("pearson")
             for p in ("tf32", "bf16")}
    measured = {"all_knockdowns_exact_s": fp32.get("exact_all_knockdowns_s"), "suite_s": recs.get("suite", {}).get(
        "total_s") if recs.get("suite", {}).get("complete") else None, "peak_gpu_bytes": max(peaks) if peaks else None,
        "routing_r_vs_fp32": max((float(d) for d in diffs.values() if d is not None), default=None)}
    table = {}
    for key, target in TARGETS.items():
        value = measured[key]
        met = None if run.dry_run or value is None else bool(value <= target)
        table[key] = {"target": target, "measured": value, "met": met}
    run.record("env", targets=table, routing_r_diff_pearson=diffs, total_s=time.monotonic() - run.start,
               imported_distributions=imported_distributions())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "reports/bench/gpu"))
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: every stage, in seconds")
    parser.add_argument("--device", default="auto", help="auto (cuda when there is one), cuda or cpu")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stages that would end later are cut")
    parser.add_argument("--kds", type=int, default=8, help="knockdowns for the engine's timing (stage 2)")
    parser.add_argument("--notebook-kds", type=int, default=2, help="of those, timed with the notebooks' call")
    parser.add_argument("--per-kd", type=int, default=1, help="perturbed cells per knockdown and line in the world")
    parser.add_argument("--work", type=Path, default=None, help="where the world is written (default: a temp dir)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" or args.dry_run else args.device)
    if args.dry_run:
        torch.set_num_threads(1)
    run = Run(args.out, args.budget_s, device, args.dry_run)
    run.record("env", status="done", versions=versions(), bundle_installed=os.environ.get("GPU_BUNDLE_INSTALLED"),
               executable=sys.executable, cpu_threads=torch.get_num_threads(),
               gpu_memory_bytes=torch.cuda.get_device_properties(device).total_memory if device.type == "cuda"
               else None, order="setup, engine_vs_notebook, fp32, suite, tf32, bf16", targets_s=TARGETS)
    with tempfile.TemporaryDirectory(prefix="gpu-run-") as tmp:
        work = args.work or Path(tmp)
        configs: dict[str, Path] = {}
        with stage(run, "setup"):
            configs = setup(run, work, args.per_kd)
        if not configs:
            targets(run)
            raise SystemExit("setup failed: see setup.json")
        sizes = flops.Sizes(**run.records["setup"]["sizes"])
        keep = DRY_KEEP if args.dry_run else None
        n_kds = keep or int(run.records["setup"]["world"]["knockdowns"])
        contexts = {p: context(configs[p], keep) for p in PRECISIONS}
        # until stage 2 measures it: an assumed rate (10 TFLOP/s on a GPU, 20 GFLOP/s on a CPU core)
        assumed = sizes.hidden * sizes.jvp_column() / (10e12 if device.type == "cuda" else 20e9)
        rates = dict.fromkeys(PRECISIONS, assumed)
        with stage(run, "engine_vs_notebook"):
            rates = engine_vs_notebook(run, contexts["fp32"], sizes, args.kds, args.notebook_kds)
        fp32: dict[str, Any] = {}
        for precision in PRECISIONS:
            if precision == "tf32":
                with stage(run, "suite"):
                    rec = run.records.get("all_knockdowns_fp32", {})
                    forward = rec.get("delta_y_s", 10.0)
                    gram = rec.get("gram_s", GRAM_OVERHEAD * n_kds * rates["fp32"])
                    suite(run, contexts["fp32"], configs["fp32"], forward, gram)
            with stage(run, f"all_knockdowns_{precision}"):
                all_knockdowns(run, contexts[precision], precision, sizes, rates[precision], fp32)
            contexts[precision] = contexts[precision] if precision == "fp32" else None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        targets(run)
    print(json.dumps(run.records["env"]["targets"], indent=1))
    print(f"records in {args.out}: {', '.join(sorted(run.records))}")


if __name__ == "__main__":
    main()
