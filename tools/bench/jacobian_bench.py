"""Pert-representation Jacobians at ST-HVG-Replogle sizes: the original method vs the engine.

Builds a randomly initialised arc-state ST model with the real sizes (SPEC §1:
2000 genes, hidden 328, 8 bidirectional Llama layers, q/k/v 328 → 768 as
8 heads × 96 (transformers 5 needs the head count to divide 328, so the 12 × 64
layout is not buildable; the FLOPs are the same), MLP 3072, pert_dim 2024,
batch_dim 56), loads it through arc-state's own checkpoint loader and the ST
adapter, and times ``J_k = ∂Y/∂r`` at ``r_k`` for a few knockdowns:

- ``original``: one knockdown at a time, ``torch.autograd.functional.jacobian`` of the
  cell-averaged output (G = 2000 reverse passes). With ``--orig-genes N`` it
  differentiates N output genes and scales the time by G / N (each output row
  costs one full reverse pass, so the cost is linear in rows); the record says so.
- ``vectorize=True``: the same call with ``vectorize=True`` (the G reverse passes batched
  through vmap), per knockdown, on the same rows as ``original`` (scaled the same way).
- ``vmap(jacrev)``: ``torch.func.vmap(torch.func.jacrev(f))`` over all ``--jacrev-kds``
  knockdowns in one call (falls back to one knockdown per call on out-of-memory; the
  record's ``batching`` says which), on the same rows, scaled the same way. At all
  2000 rows these two hold 2000 × cells × 3072-float MLP cotangents per knockdown and
  take minutes per knockdown on one CPU core, so the CPU run uses ``--orig-genes``.
- ``vmap(jacfwd)``: plain forward mode, all 328 directions in one call (the prior attempt).
- ``engine``: :func:`hypocheck.fixtures.jacobians.pert_jacobians` with its default plan;
  on CUDA also with TF32 matmuls.

Every method's ``max_rel_err`` is against the engine's float32 Jacobian (the engine's own
against the notebook's call), and ``engine_speedup`` is its time over the engine's.

Usage::

    python -m tools.bench.jacobian_bench --cells 64 --kds 3 --orig-genes 200 --threads 1   # 2-core CPU, ~5 min
    python -m tools.bench.jacobian_bench --device cuda --kds 32

On a CPU shared with other work, ``--threads 1`` gives stable numbers: with
OpenMP threads every small op waits at a barrier for a thread that another
process has descheduled, which slows the original method (thousands of small
reverse passes) far more than the engine and would inflate the speedup.

Each run prints a table (methods ranked by seconds per knockdown) and appends its records
to ``records`` in ``reports/bench/jacobian.json``. Each record carries the device, threads,
torch version, the 1-minute load average before and after the run and ``under_load``
(other work held more than half the cores). The file's ``headline`` comes only from the
latest run with no record under load (on CPU, at one thread); multi-thread CPU records of
the old flat-list format sit under ``superseded_records`` with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import gc
import json
import os
import platform
import resource
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hypocheck.atomic import atomic_write_text

N_GENES, N_PERTS, HIDDEN, LAYERS, HEADS, HEAD_DIM, MLP, N_BATCHES = 2000, 2024, 328, 8, 8, 96, 3072, 56
ALL_KDS = 2023
OUT = Path("reports/bench/jacobian.json")
THREADS_NOTE = (
    "several OpenMP threads: when another process holds a core, every small op of the original's 2000 "
    "reverse passes stalls at a barrier (measured 8.5x slower than 1 thread on this shared CPU), which "
    "inflates the speedup; compare methods on --threads 1 runs"
)


# ------------------------------------------------------------------ the model
def build_adapter(root: Path, cells: int, device: str, seed: int = 0) -> Any:
    """Write a real-size random ST model as an arc-state run dir and load it through ``STAdapter``."""
    from state.tx.models.state_transition import StateTransitionPerturbationModel

    from hypocheck.fixtures.st_adapter import STAdapter
    from hypocheck.fixtures.st_rundir import STArchitecture, quietly, save_run_dir

    arch = STArchitecture(
        n_genes=N_GENES, n_perts=N_PERTS, hidden=HIDDEN, layers=LAYERS, heads=HEADS,
        intermediate=MLP, cell_set_len=cells, n_batches=N_BATCHES, bidirectional=True,
    )  # fmt: skip
    hp = arch.hparams()
    hp["transformer_backbone_kwargs"]["head_dim"] = HEAD_DIM  # STArchitecture derives hidden // heads
    torch.manual_seed(seed)
    with quietly():
        model = StateTransitionPerturbationModel(**hp)
    perts = ["non-targeting", *(f"KD{i:04d}" for i in range(N_PERTS - 1))]
    save_run_dir(
        model, root, [f"G{i:04d}" for i in range(N_GENES)], perts, [f"b{i}" for i in range(N_BATCHES)], ["hepg2"]
    )
    del model
    return STAdapter.from_run_dir(root, device=device)


# ---------------------------------------------------------------- measurement
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc), so the resident set starts at live memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Timing:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_bytes: int = 0


@contextlib.contextmanager
def measure(device: torch.device) -> Iterator[Timing]:
    """Wall and process CPU time, and the peak memory above the starting level.

    CUDA: ``max_memory_allocated``. CPU (Linux): the resident-set high-water mark
    ``VmHWM`` (reset through ``/proc/self/clear_refs``, after ``malloc_trim``) above
    the resident set at the start; elsewhere ``ru_maxrss``.
    """
    t = Timing()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        _trim_heap()
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        base = (_status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    w0, c0 = time.perf_counter(), time.process_time()
    yield t
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        t.peak_bytes = torch.cuda.max_memory_allocated(device) - base
    else:
        t.peak_bytes = (_status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024 - base
    t.wall_s, t.cpu_s = time.perf_counter() - w0, time.process_time() - c0


def rel_err(a: Tensor, ref: Tensor) -> float:
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls on CUDA (the 2.9+ ``fp32_precision`` switch, else ``allow_tf32``)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        old = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = old
    else:
        old_flag = matmul.allow_tf32
        matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            matmul.allow_tf32 = old_flag


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor() or "cpu",
    )
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


# ------------------------------------------------------------------------ run
def _loadavg() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def under_load(load: list[float | None], own_threads: int, cores: int | None) -> bool:
    """Whether other work held more than half the cores: the 1-minute load before the run, or after it
    less the benchmark's own threads (a run of minutes drives the 1-minute average to its own threads)."""
    before, after = load
    half = (cores or 1) / 2
    return (before is not None and before > half) or (after is not None and after - own_threads > half)


UNDER_LOAD_RULE = "load_avg_1min[0] > cores/2 or load_avg_1min[1] - own threads > cores/2"


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from hypocheck.fixtures.jacobians import ChunkPlan, pert_jacobians

    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    load_start = _loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"building the ST-HVG-sized model ({args.cells} cells) ...", flush=True)
        adapter = build_adapter(Path(tmp) / "st_hvg_sized", args.cells, args.device)
    print(adapter.describe(), flush=True)
    gen = torch.Generator().manual_seed(42)
    basal = (torch.rand(args.cells, N_GENES, generator=gen) * 2).to(device)
    batch = torch.randint(0, N_BATCHES, (args.cells,), generator=gen).to(device)
    n_kds = max(args.kds, args.orig_kds, args.jacfwd_kds, args.vectorize_kds, args.jacrev_kds)
    kds = [adapter.pert_names[1 + i * (N_PERTS - 1) // n_kds] for i in range(n_kds)]
    reps = adapter.encode_perturbation(adapter.onehot(kds)).detach()

    def f(r: Tensor) -> Tensor:
        return adapter.forward_from_repr(r[None], basal, batch)[0].mean(0)

    rows = (
        torch.arange(N_GENES) if args.orig_genes is None else torch.randperm(N_GENES, generator=gen)[: args.orig_genes]
    )
    rows = rows.sort().values.to(device)
    scale = N_GENES / len(rows)

    def f_rows(r: Tensor) -> Tensor:
        return f(r)[rows]

    base: dict[str, Any] = {
        "device": device.type,
        "device_name": device_name(device),
        "threads": threads,
        "cores": os.cpu_count(),
        "cells": args.cells,
        "model": f"ST-HVG-Replogle sizes, random weights: G={N_GENES}, H={HIDDEN}, {LAYERS} llama layers "
        f"({HEADS}x{HEAD_DIM} heads), MLP {MLP}, pert_dim {N_PERTS}, bidirectional",
        "torch": torch.__version__,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    records: list[dict[str, Any]] = []
    jacobians: dict[int, Tensor] = {}  # record index -> (K, rows or G, H)

    def add(
        method: str,
        kind: str,
        dtype: str,
        n: int,
        t: Timing,
        j: Tensor,
        load: list[float | None],
        rows_timed: int | None = None,
        **extra: Any,
    ) -> float:
        k = scale if rows_timed is not None and rows_timed != N_GENES else 1.0
        s = t.wall_s / n * k
        rec = {
            **base,
            "method": method,
            "kind": kind,
            "dtype": dtype,
            "kds_timed": n,
            "s_per_kd": s,
            "cpu_s_per_kd": t.cpu_s / n * k,
            "peak_mem_bytes": t.peak_bytes,
            "load_avg_1min_method": load,
        }
        if rows_timed is not None:
            rec |= {"rows_timed": rows_timed, "extrapolated_to_all_rows": k != 1}
        jacobians[len(records)] = j
        records.append(rec | extra)
        print(f"{method} [{dtype}]: {s:.1f} s/KD" + (f" (extrapolated x{k:g} in genes)" if k != 1 else ""), flush=True)
        return s

    @contextlib.contextmanager
    def timed() -> Iterator[tuple[Timing, list[float | None]]]:
        load: list[float | None] = [_loadavg(), None]
        with measure(device) as t:
            yield t, load
        load[1] = _loadavg()

    # notebook baseline: one KD at a time, reverse mode over output rows, vectorize=False
    with timed() as (t, load):
        j_orig = torch.stack([torch.autograd.functional.jacobian(f_rows, r) for r in reps[: args.orig_kds]])
    add("autograd.functional.jacobian per KD (notebook, vectorize=False)", "baseline", "float32", args.orig_kds,
        t, j_orig, load, rows_timed=len(rows))  # fmt: skip

    plan = ChunkPlan(items=args.chunk_size, tangents=args.tangent_chunk)
    with timed() as (t, load):
        j_engine = pert_jacobians(f, reps[: args.kds], progress=False, plan=plan)
    add("engine: pert_jacobians", "engine", "float32", args.kds, t, j_engine, load,
        plan=f"{plan.items} KD x {plan.tangents} dirs")  # fmt: skip
    if device.type == "cuda":
        with tf32(True), timed() as (t, load):
            j_tf32 = pert_jacobians(f, reps[: args.kds], progress=False, plan=ChunkPlan(plan.items, plan.tangents))
        add("engine: pert_jacobians", "engine", "tf32", args.kds, t, j_tf32, load,
            plan=f"{plan.items} KD x {plan.tangents} dirs")  # fmt: skip

    # strongest reverse-mode alternatives, at the same rows (all G, or --orig-genes and extrapolated)
    if args.vectorize_kds:
        with timed() as (t, load):
            j_vec = torch.stack(
                [torch.autograd.functional.jacobian(f_rows, r, vectorize=True) for r in reps[: args.vectorize_kds]]
            )
        add("autograd.functional.jacobian per KD, vectorize=True", "baseline", "float32", args.vectorize_kds,
            t, j_vec, load, rows_timed=len(rows))  # fmt: skip
    if args.jacrev_kds:
        jr = torch.func.vmap(torch.func.jacrev(f_rows))
        n_rev = args.jacrev_kds
        try:
            with timed() as (t, load):
                j_rev = jr(reps[:n_rev])
            how = f"vmap over {n_rev} KDs in one call"
        except (torch.OutOfMemoryError, MemoryError):
            _trim_heap()
            with timed() as (t, load):
                j_rev = torch.cat([jr(reps[k : k + 1]) for k in range(n_rev)])
            how = f"vmap over {n_rev} KDs ran out of memory; jacrev one KD per call"
        add("torch.func.vmap(jacrev(f)) over KDs", "baseline", "float32", n_rev, t, j_rev, load,
            rows_timed=len(rows), batching=how)  # fmt: skip
    if args.jacfwd_kds:
        jf = torch.func.vmap(torch.func.jacfwd(f))
        with timed() as (t, load), torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            j_plain = torch.cat([jf(reps[k : k + 1]) for k in range(args.jacfwd_kds)])
        add("vmap(jacfwd), all directions per call", "forward-mode alternative", "float32", args.jacfwd_kds,
            t, j_plain, load)  # fmt: skip

    load_end = _loadavg()
    run_load = [load_start, load_end]
    busy = under_load(run_load, threads or 1, os.cpu_count())
    engine_i = next(i for i, r in enumerate(records) if r["kind"] == "engine")
    engine_s, ref = records[engine_i]["s_per_kd"], jacobians[engine_i]
    ref_rows = ref[:, rows]
    for i, rec in enumerate(records):
        j = jacobians[i]
        j_ref = ref_rows if j.shape[1] == len(rows) and len(rows) != N_GENES else ref
        if i == engine_i:  # the engine itself: against the notebook baseline
            j, j_ref = ref_rows, jacobians[0]
            rec["max_rel_err_vs"] = "autograd.functional.jacobian (notebook, vectorize=False)"
        else:
            rec["max_rel_err_vs"] = "engine: pert_jacobians float32"
        n = min(j.shape[0], j_ref.shape[0])
        rec["max_rel_err"] = max(rel_err(j[k], j_ref[k]) for k in range(n))
        rec["engine_speedup"] = rec["s_per_kd"] / engine_s
        rec["est_all_2023_s"] = rec["s_per_kd"] * ALL_KDS
        rec["load_avg_1min"] = run_load
        rec["under_load"] = busy
        rec["under_load_rule"] = UNDER_LOAD_RULE
        if device.type == "cpu" and (threads or 1) > 1:
            rec["note"] = THREADS_NOTE
    return records


def table(records: list[dict[str, Any]]) -> str:
    """Methods ranked by seconds per knockdown; ``engine x`` is the fp32 engine's speed-up over that method."""
    head = f"{'method':<62} {'dtype':<7} {'KDs':>3} {'s/KD':>8} {'cpu s/KD':>9} {'engine x':>9} {'max rel err':>11} "
    head += f"{'peak MiB':>9} {'all 2023 KDs':>13}"
    lines = [head, "-" * len(head)]
    for r in sorted(records, key=lambda r: r["s_per_kd"]):
        method = r["method"] + (" *" if r.get("extrapolated_to_all_rows") else "")
        lines.append(
            f"{method[:62]:<62} {r['dtype']:<7} {r['kds_timed']:>3} {r['s_per_kd']:>8.2f} "
            f"{r['cpu_s_per_kd']:>9.2f} {r['engine_speedup']:>8.2f}x {r['max_rel_err']:>11.1e} "
            f"{r['peak_mem_bytes'] / 2**20:>9.0f} {r['est_all_2023_s'] / 3600:>11.1f} h"
        )
    r0 = records[0]
    rows = next((r["rows_timed"] for r in records if r.get("extrapolated_to_all_rows")), None)
    if rows is not None:
        lines.append(f"* timed on {rows} of {N_GENES} output genes, time scaled linearly by {N_GENES / rows:g}")
    lines.append(
        f"{r0['device_name']}; torch {r0['torch']}; load (1 min) {r0['load_avg_1min']}; under_load={r0['under_load']}"
    )
    return "\n".join(lines)


SUPERSEDED_REASON = (
    "2 torch threads on a shared 2-core CPU: the notebook baseline's thousands of small reverse passes stalled at "
    "OpenMP barriers (8.5x slower than at 1 thread), so its 66x engine speed-up is inflated; kept only for the record, "
    "never a headline"
)


def _migrate(data: Any) -> dict[str, Any]:
    """The old format was a flat list; multi-thread CPU records move under ``superseded_records``."""
    if isinstance(data, dict):
        return data
    keep: list[dict[str, Any]] = []
    old: list[dict[str, Any]] = []
    for rec in data:
        threads = rec.get("threads")
        if threads is None and "torch threads" in rec.get("device_name", ""):
            threads = int(rec["device_name"].rsplit(",", 1)[1].split()[0])
            rec["threads"] = threads
        if "under_load" not in rec and rec.get("load_avg_1min"):
            rec["under_load"] = under_load(rec["load_avg_1min"], threads or 1, 2)
            rec["under_load_rule"] = UNDER_LOAD_RULE + " (backfilled from load_avg_1min, 2 cores)"
        (old if rec.get("device") == "cpu" and (threads or 1) > 1 else keep).append(rec)
    return {"records": keep, "superseded_records": {"reason": SUPERSEDED_REASON, "records": old} if old else None}


def headline(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The latest run whose records are all not under load (and not multi-thread CPU): engine vs each baseline."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        runs.setdefault(rec["timestamp"], []).append(rec)
    for ts in sorted(runs, reverse=True):
        recs = runs[ts]
        engine = next((r for r in recs if r.get("kind") == "engine" and r["dtype"] == "float32"), None)
        if engine is None or any(r.get("under_load", True) for r in recs):
            continue
        if engine["device"] == "cpu" and engine.get("threads") != 1:
            continue
        return {
            "from_run": ts, "device_name": engine["device_name"], "threads": engine.get("threads"),
            "engine_s_per_kd": engine["s_per_kd"],
            "engine_speedup_over": {
                f"{r['method']} [{r['dtype']}]" + (" (extrapolated)" if r.get("extrapolated_to_all_rows") else ""): x
                for r in recs
                if r is not engine and (x := r["engine_speedup"])
            },
        }  # fmt: skip
    return None


def save(records: list[dict[str, Any]], path: Path) -> None:
    """Append to ``records`` at ``path`` (atomically) and recompute ``headline`` from runs not under load."""
    data = _migrate(json.loads(path.read_text()) if path.is_file() else [])
    data["records"] = [*data.get("records", []), *records]
    data["headline"] = headline(data["records"])
    data["headline_rule"] = "latest run with every record under_load == false (CPU: --threads 1); null if none"
    ordered = {k: data[k] for k in ("headline", "headline_rule", "records", "superseded_records") if k in data}
    atomic_write_text(path, json.dumps(ordered, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cells", type=int, default=64, help="control cells per sentence (S)")
    parser.add_argument("--kds", type=int, default=8, help="knockdowns timed with the engine")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--orig-kds", type=int, default=1, help="knockdowns timed with the original method")
    parser.add_argument("--orig-genes", type=int, default=None, help="output rows for the original (default all)")
    parser.add_argument("--jacfwd-kds", type=int, default=1, help="knockdowns timed with plain vmap(jacfwd); 0 skips")
    parser.add_argument(
        "--vectorize-kds", type=int, default=1, help="knockdowns timed with autograd jacobian(vectorize=True); 0 skips"
    )
    parser.add_argument(
        "--jacrev-kds", type=int, default=None, help="knockdowns in one vmap(jacrev) call (default --kds); 0 skips"
    )
    parser.add_argument("--chunk-size", type=int, default=None, help="engine: knockdowns per call")
    parser.add_argument("--tangent-chunk", type=int, default=None, help="engine: directions per call")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.orig_kds < 1 or args.kds < 1:
        parser.error("--kds and --orig-kds must be ≥ 1")
    if args.jacrev_kds is None:
        args.jacrev_kds = args.kds
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated.*")
    records = run(args)
    print(table(records))
    save(records, args.out)
    print(f"appended {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()
