"""Whole-suite benchmark: every paper claim (hypotheses/paper) on the real-size world, per probe.

For each claim file the benchmark runs its cases in a fresh child process (so peak memory is the claim's own):
the suite's own code path — ``SuiteConfig`` → ``SuiteContext`` → the probe's input builder (model forward
passes, Jacobians through ``hypocheck.fixtures.artifacts.Artifacts``) → the pure probe → ``judge`` — with the
artifact cache off, so every artifact is computed. Each record holds wall time (model loading, inputs and
probe apart), peak CPU resident set (``VmHWM``) and, on CUDA, peak GPU memory
(``torch.cuda.max_memory_allocated``), the knockdowns covered, and the verdicts reached.

How a subset is covered honestly (CPU). At real size a full run does not fit a CPU budget: ΔY and layer
features of 2,023 knockdowns × 64 cells are minutes per model and line, and one exact Jacobian ``∂Ȳ/∂r`` is
~25 s per knockdown on one core (``reports/bench/jacobian.json``), so claim 5's all-knockdown Grams are
~14 h per model. So, on CPU:

- claims 1–4 (pert_encoder clustering, whose magnitude-matched null needs ‖ΔY_k‖ in every configured line,
  four here; output clustering; output absence; knockout transfer on a fixed 200 genes) run end to end on all
  knockdowns: they are forward passes, minutes per model and line. ``--subsets`` is kept for a claim whose
  plan says ``subset`` (end to end on two nested knockdown subsets — every member of the claim's gene sets
  plus seeded random others — fitted ``t = a + b·K`` and labelled ``extrapolated``; a subset's verdicts are
  not the claim's);
- claim 5 (routing) times the Jacobian Gram (``Artifacts.jacobian_gram``, the artifact that dominates it) and
  ΔY on two tiny subsets (``--jacobian-subsets``) per model, and extrapolates linearly the same way (the Gram's
  own K² inner products are a few seconds at K = 2,023 and are not in the fit); its probe is not run on CPU,
  since it needs at least ``n_clusters × top_per_cluster`` knockdowns.

Controls (``controls:`` in claims 1 and 2: randomized / shuffled twins) are not timed; each doubles its
claim's cost. Claims are timed standalone: in a real run claims 2 and 3 share ΔY through the artifact cache,
and the two routing hypotheses share their Grams (they run in one child here), so the sum over-counts ΔY.

CUDA. ``--device cuda`` runs every claim end to end on all 2,023 knockdowns × 64 cells (no subsets, no
extrapolation), records peak GPU memory, and times the original method (``torch.autograd.functional.jacobian``
of the cell-averaged output, one knockdown at a time, all 2,000 rows, as the notebooks did) against the
engine on the same knockdowns of the fewshot model, for the ratio. The exact command for the GPU figures::

    OMP_NUM_THREADS=1 python -m tools.bench.suite_bench --world worlds/scale --device cuda --precision fp32 --gram exact

(after ``make scale-world``; add ``--gram sketch`` / ``--precision tf32`` for the other modes, when the
suite config supports them). On CPU (``make bench-suite``)::

    OMP_NUM_THREADS=1 python -m tools.bench.suite_bench --world worlds/scale --budget-s 1800   # --gram auto: sketched

``--precision`` and ``--gram`` are written into the generated config (``worlds/scale/bench-suite.yaml``) only
when this version's suite config has those keys (``precision``, ``gram``); otherwise the record says so and
the Jacobians are exact float32. Every record carries the device, torch threads, the 1-minute load average
before and after, the torch version and ``under_load`` (other work held more than half the cores); a record
under load is never the headline. Results are appended to ``runs`` in ``reports/bench/suite.json``, and a
table is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from hypocheck.atomic import atomic_write_text
from tools.bench.jacobian_bench import UNDER_LOAD_RULE, _loadavg, _status_kb, device_name, measure, under_load

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "hypotheses" / "paper"
OUT = ROOT / "reports" / "bench" / "suite.json"
NOT_MEASURED = "not measured"
# claim file stem -> how it is covered on CPU ("full": all knockdowns; "subset": end to end on subsets;
# "jacobian": the Gram artifact on tiny subsets)
CPU_PLAN = {
    "claim1_pert_encoder_clustering": "full",
    "claim2_mito_output_clustering": "full",
    "claim3_er_no_output_clustering": "full",
    "claim4_knockout_transfer": "full",
    "claim5_routing_backbone": "jacobian",
}


# ----------------------------------------------------------------------------- config
def bench_config(world: Path, device: str, precision: str, gram: str) -> tuple[Path, dict[str, Any]]:
    """Write ``world/bench-suite.yaml``: the world's suite config with ``device`` (and ``precision`` / ``gram``
    when the suite config knows those keys); returns its path and what was applied."""
    from hypocheck.fixtures.config import SuiteConfig

    source = world / "suite.yaml"
    if not source.is_file():
        raise SystemExit(f"{source}: no suite config; generate the world first (make scale-world)")
    data = yaml.safe_load(source.read_text())
    data["device"] = device
    fields = SuiteConfig.model_fields
    applied: dict[str, Any] = {"device": device}
    if "precision" in fields:
        data["precision"] = applied["precision"] = precision
    else:
        applied["precision"] = f"{precision} requested; not a suite config key in this version (fp32 used)"
    if "gram" in fields:
        method = gram
        if gram == "auto" and not device.startswith("cuda"):
            # what `auto` picks for all 2,023 knockdowns on a CPU; the subsets it is timed on are small enough
            # for `auto` to pick exact, which would time (and extrapolate) a method a full run never uses
            method = "sketch"
        data["gram"] = {"method": method}
        applied["gram"] = method if method == gram else f"{method} (what auto picks on this device at full size)"
    else:
        applied["gram"] = f"{gram} requested; not a suite config key in this version (exact used)"
    path = world / "bench-suite.yaml"
    path.write_text("# Written by tools/bench/suite_bench.py from suite.yaml\n" + yaml.safe_dump(data, sort_keys=False))
    SuiteConfig.load(path)  # fails here, with file and key, if the config is not valid
    return path, applied


# ------------------------------------------------------------------------------ child
def _subset_suite(config: Any, keep: int | None, gene_sets: list[str], seed: int = 0) -> Any:
    """A ``LoadedSuite`` whose knockdowns are the gene sets' members plus seeded random others, ``keep`` in all
    (``None``: all of them). Nested: a larger ``keep`` holds every knockdown of a smaller one."""
    from hypocheck.fixtures.suite import LoadedSuite

    class SubsetSuite(LoadedSuite):
        def knockdowns(self, model: Any) -> list[str]:
            full = super().knockdowns(model)
            if keep is None or keep >= len(full):
                return full
            members = {full[i] for g in gene_sets for i in self.members(full, g)}
            others = [full[i] for i in np.random.default_rng(seed).permutation(len(full)) if full[i] not in members]
            chosen = members | set(others[: max(keep - len(members), 0)])
            return [k for k in full if k in chosen]

    return SubsetSuite(config)


def claim_cases(claim: Path, config_path: Path) -> list[Any]:
    """Every case of a hypothesis file, expanded against the suite config's vocabulary (as the plugin does)."""
    from hypocheck.cases import expand
    from hypocheck.fixtures.backend import SuiteBackend
    from hypocheck.schema import hypotheses_from_doc
    from hypocheck.yamlsource import load_yaml

    backend = SuiteBackend.from_file(config_path)
    doc = load_yaml(claim)
    return [c for hyp, base in hypotheses_from_doc(doc) for c in expand(hyp, doc, base, backend.vocabulary())]


def _peak_gpu(device: torch.device) -> int | str:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else NOT_MEASURED


def run_child(claim: Path, config_path: Path, keep: int | None, mode: str, threads: int) -> dict[str, Any]:
    """Run (or, in ``jacobian`` mode, time the Gram of) one claim's cases; returns the measurements."""
    from hypocheck.cache import ArtifactCache
    from hypocheck.fixtures.artifacts import Artifacts
    from hypocheck.fixtures.config import SuiteConfig
    from hypocheck.fixtures.context import SuiteContext
    from hypocheck.fixtures.suite import LoadedSuite
    from hypocheck.verdict import judge

    torch.set_num_threads(threads)
    config = SuiteConfig.load(config_path)
    device = config.torch_device()
    cases = claim_cases(claim, config_path)
    sets = sorted({str(c.axes["gene_set"]) for c in cases if "gene_set" in c.axes})
    ctx = SuiteContext(config, ArtifactCache("", enabled=False))
    ctx.suite = _subset_suite(config, keep, sets)
    ctx.artifacts = Artifacts(ctx.suite, ArtifactCache("", enabled=False))
    models = sorted({str(m) for c in cases for m in _case_models(c)})
    start = time.perf_counter()
    for m in models:
        ctx.suite.model(m)
    _ = ctx.suite.data
    load_s = time.perf_counter() - start
    kds = {m: len(ctx.suite.knockdowns(m)) for m in models}
    full = max(len(LoadedSuite.knockdowns(ctx.suite, m)) for m in models)
    out: dict[str, Any] = {"load_s": load_s, "knockdowns": kds, "all_knockdowns": full, "cases": []}
    gpu_peaks: list[int] = []  # measure() resets CUDA's peak on entry: keep each case's before the next

    def note_gpu() -> None:
        if device.type == "cuda":
            gpu_peaks.append(int(torch.cuda.max_memory_allocated(device)))

    with measure(device) as total:
        if mode == "jacobian":
            for case in cases:
                for m in _case_models(case):
                    line = str(case.axes["cell_line"])
                    with measure(device) as t:
                        ctx.artifacts.jacobians.jacobian_gram(m, line)
                        ctx.artifacts.outputs.delta_y(m, line)
                    note_gpu()
                    out["cases"].append({"case": f"{case.hypothesis.id}[{m}-{line}]", "inputs_s": t.wall_s,
                                         "probe_s": None, "verdict": None})
        else:
            for case in cases:
                with measure(device) as t_in:
                    inputs = ctx.prepare(case)
                note_gpu()
                with measure(device) as t_probe:
                    result = case.probe.run(inputs, params=case.params, rng=np.random.default_rng(case.seed))
                note_gpu()
                verdict = judge(case, result)
                out["cases"].append({"case": case.name, "inputs_s": t_in.wall_s, "probe_s": t_probe.wall_s,
                                     "verdict": verdict.verdict})
    out["wall_s"] = total.wall_s + load_s
    out["peak_rss_bytes"] = (_status_kb("VmHWM") or 0) * 1024
    out["peak_gpu_bytes"] = max(gpu_peaks, default=0) if device.type == "cuda" else NOT_MEASURED
    out["device"] = str(device)
    return out


def _case_models(case: Any) -> list[str]:
    if "model" in case.axes:
        return [str(case.axes["model"])]
    return [str(m) for m in getattr(case.inputs, "models", [])]


# ------------------------------------------------------------------------- original method
def original_vs_engine(config_path: Path, kds: int, rows: int | None, threads: int) -> dict[str, Any]:
    """``torch.autograd.functional.jacobian`` (one knockdown at a time) vs the engine, fewshot, first line."""
    from hypocheck.fixtures.config import SuiteConfig
    from hypocheck.fixtures.jacobians import pert_jacobians
    from hypocheck.fixtures.suite import LoadedSuite

    torch.set_num_threads(threads)
    config = SuiteConfig.load(config_path)
    suite = LoadedSuite(config)
    adapter = suite.model("fewshot")
    line = "hepg2" if "hepg2" in config.cell_lines else config.cell_lines[0]
    basal, batch = suite.control_sentence(line, "fewshot")
    names = suite.knockdowns("fewshot")
    chosen = [names[i * len(names) // kds] for i in range(kds)]
    with torch.no_grad():
        reps = adapter.encode_perturbation(adapter.onehot(chosen)).detach()
    n_out = len(adapter.gene_names)
    idx = torch.arange(n_out, device=reps.device) if rows is None else torch.randperm(n_out)[:rows].to(reps.device)

    def f(r: torch.Tensor) -> torch.Tensor:
        return adapter.forward_from_repr(r[None], basal, batch)[0].mean(0)

    device = reps.device
    with measure(device) as t_orig:
        for r in reps:
            torch.autograd.functional.jacobian(lambda x: f(x)[idx], r)
    with measure(device) as t_engine:
        pert_jacobians(f, reps)
    scale = n_out / len(idx)
    orig = t_orig.wall_s * scale / kds
    engine = t_engine.wall_s / kds
    return {"kds": kds, "rows": len(idx), "original_s_per_kd": orig, "engine_s_per_kd": engine,
            "ratio": orig / engine, "original_extrapolated_from_rows": rows is not None,
            "peak_gpu_bytes": _peak_gpu(device)}


# ------------------------------------------------------------------------------ parent
def _spawn(args: argparse.Namespace, claim: Path, config_path: Path, keep: int | None, mode: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_path = Path(fh.name)
    cmd = [sys.executable, "-m", "tools.bench.suite_bench", "--child", str(claim), "--config", str(config_path),
           "--mode", mode, "--keep", "all" if keep is None else str(keep), "--threads", str(args.threads),
           "--result", str(result_path)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HYPOCHECK_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    data: dict[str, Any] = json.loads(result_path.read_text())
    result_path.unlink()
    return data


def _fit(points: list[tuple[int, float]], target: int) -> float:
    """``a + b·target`` through two (K, seconds) points (one point: proportional)."""
    (k1, t1), (k2, t2) = points[0], points[-1]
    if k1 == k2:
        return t1 * target / k1
    b = max((t2 - t1) / (k2 - k1), 0.0)
    return max(t1 + b * (target - k1), t1)


def bench_claim(args: argparse.Namespace, claim: Path, config_path: Path, deadline: float) -> dict[str, Any]:
    """One claim's record: measured runs, and on CPU the extrapolation to all knockdowns."""
    mode = "full" if args.device.startswith("cuda") else CPU_PLAN.get(claim.stem, "subset")
    sizes: list[int | None] = [None]
    if mode == "subset":
        sizes = list(args.subsets)
    elif mode == "jacobian":
        sizes = list(args.jacobian_subsets)
    record: dict[str, Any] = {"claim": claim.stem, "mode": mode, "runs": []}
    for keep in sizes:
        if time.monotonic() > deadline:
            record["runs"].append({"keep": keep, "skipped": "time budget (--budget-s) spent"})
            continue
        load = [_loadavg()]
        run = _spawn(args, claim, config_path, keep, "jacobian" if mode == "jacobian" else "cases")
        load.append(_loadavg())
        run.update({"keep": keep, "load_avg_1min": load,
                    "under_load": under_load(load, args.threads, os.cpu_count())})
        record["runs"].append(run)
        print(f"  {claim.stem} keep={keep}: {run.get('wall_s', float('nan')):.1f} s"
              + (f" ERROR {run['error'][-300:]}" if "error" in run else ""), flush=True)
    done = [r for r in record["runs"] if "wall_s" in r]
    record["under_load"] = any(r["under_load"] for r in done) or not done
    if not done:
        return record
    last = done[-1]
    covered = max(last["knockdowns"].values()) if last["knockdowns"] else 0
    record["knockdowns_covered"] = covered
    record["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in done)
    record["peak_gpu_bytes"] = last["peak_gpu_bytes"]
    record["verdicts"] = {c["case"]: c["verdict"] for c in last["cases"] if c["verdict"]}
    work = [(max(r["knockdowns"].values()), r["wall_s"] - r["load_s"]) for r in done]
    target = last["all_knockdowns"]
    record["all_knockdowns"] = target
    if mode == "full" or covered >= target:
        record["wall_s"] = last["wall_s"]
        record["extrapolated"] = False
    else:
        record["wall_s"] = last["load_s"] + _fit(work, target)
        record["extrapolated"] = True
        record["extrapolation"] = (f"linear fit t = a + b·K of the work (wall less model loading) through "
                                   f"K = {[k for k, _ in work]} knockdowns, to K = {target}")
        if mode == "subset":
            record["verdicts_note"] = f"verdicts reached on a {covered}-knockdown subset, not the claim's"
    return record


def table(records: list[dict[str, Any]]) -> str:
    lines = [f"{'claim':<34} {'mode':<9} {'KDs':>5} {'wall s':>10} {'peak RSS':>9} {'peak GPU':>9}  note"]
    for r in records:
        if "wall_s" not in r:
            lines.append(f"{r['claim']:<34} {r['mode']:<9} {'-':>5} {'-':>10} {'-':>9} {'-':>9}  not measured")
            continue
        gpu = r["peak_gpu_bytes"]
        gpu_s = f"{gpu / 2**30:.2f}G" if isinstance(gpu, int) else "n/m"
        note = f"extrapolated to {r['all_knockdowns']} KDs" if r["extrapolated"] else "measured"
        note += ", under load" if r["under_load"] else ""
        lines.append(f"{r['claim']:<34} {r['mode']:<9} {r['knockdowns_covered']:>5} {r['wall_s']:>10.1f} "
                     f"{r['peak_rss_bytes'] / 2**30:>8.2f}G {gpu_s:>9}  {note}")
    total = sum(r.get("wall_s", 0.0) for r in records)
    lines.append(f"{'total (claims standalone)':<50} {total:>10.1f}")
    return "\n".join(lines)


def save(run: dict[str, Any], path: Path) -> None:
    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    runs = [*data.get("runs", []), run]
    clean = [r for r in runs if not r["under_load"]]
    headline = None
    if clean:
        best = clean[-1]
        headline = {"from_run": best["timestamp"], "device": best["device"], "device_name": best["device_name"],
                    "total_s": best["total_s"], "any_extrapolated": best["any_extrapolated"]}
    body = {"headline": headline, "headline_rule": "latest run with no record under load",
            "under_load_rule": UNDER_LOAD_RULE, "runs": runs}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(body, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", default="worlds/scale", help="a generated world (make scale-world)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    parser.add_argument("--gram", choices=["auto", "exact", "sketch"], default="auto",
                        help="the suite's gram.method (auto: exact on CUDA, sketched on CPU at real size)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--budget-s", type=float, default=1800.0, help="stop starting new runs after this")
    parser.add_argument("--subsets", type=int, nargs=2, default=[40, 80], help="CPU: knockdowns, claims 1-3")
    parser.add_argument("--jacobian-subsets", type=int, nargs=2, default=[8, 16], help="CPU: knockdowns, claim 5")
    parser.add_argument("--original-kds", type=int, default=None,
                        help="knockdowns for the original-method ratio (default: 4 on CUDA, 0 on CPU)")
    parser.add_argument("--claims", nargs="*", default=None, help="claim file stems (default: all)")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="cases", help=argparse.SUPPRESS)
    parser.add_argument("--keep", default="all", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        keep = None if args.keep == "all" else int(args.keep)
        res = run_child(Path(args.child), Path(args.config), keep, args.mode, args.threads)
        Path(args.result).write_text(json.dumps(res))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    torch.set_num_threads(args.threads)
    world = (ROOT / args.world) if not Path(args.world).is_absolute() else Path(args.world)
    config_path, applied = bench_config(world, args.device, args.precision, args.gram)
    claims = sorted(PAPER.glob("*.yaml"))
    if args.claims:
        claims = [c for c in claims if c.stem in args.claims]
    deadline = time.monotonic() + args.budget_s
    load_start = _loadavg()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    records = []
    for claim in claims:
        print(f"{claim.stem} ...", flush=True)
        records.append(bench_claim(args, claim, config_path, deadline))
    n_orig = args.original_kds if args.original_kds is not None else (4 if args.device.startswith("cuda") else 0)
    original: dict[str, Any] | str = NOT_MEASURED + " (on CPU see reports/bench/jacobian.json)"
    if n_orig > 0:
        original = original_vs_engine(config_path, n_orig, None if args.device.startswith("cuda") else 100,
                                      args.threads)
    load_end = _loadavg()
    device = torch.device(args.device)
    run = {
        "timestamp": started,
        "device": device.type,
        "device_name": device_name(device),
        "threads": args.threads if device.type == "cpu" else None,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "config": applied,
        "world": str(args.world),
        "load_avg_1min": [load_start, load_end],
        "under_load": any(r["under_load"] for r in records),
        "gpu_memory": "torch.cuda.max_memory_allocated per claim" if device.type == "cuda" else NOT_MEASURED,
        "original_vs_engine": original,
        "records": records,
        "total_s": sum(r.get("wall_s", 0.0) for r in records),
        "any_extrapolated": any(r.get("extrapolated", False) for r in records),
        "complete": all("wall_s" in r for r in records),
    }
    if not math.isfinite(run["total_s"]):
        run["total_s"] = None
    print(table(records))
    if isinstance(original, dict):
        print(f"original method {original['original_s_per_kd']:.2f} s/KD vs engine {original['engine_s_per_kd']:.2f}"
              f" s/KD: ratio {original['ratio']:.1f}")
    save(run, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
