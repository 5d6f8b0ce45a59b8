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
- ``vmap(jacfwd)``: plain forward mode, all 328 directions in one call (the prior attempt).
- ``engine``: :func:`hypocheck.fixtures.jacobians.pert_jacobians` with its default plan;
  on CUDA also with TF32 matmuls.

Usage::

    python -m bench.jacobian_bench --cells 64 --kds 3 --orig-genes 200 --threads 1   # 2-core CPU, ~4 min
    python -m bench.jacobian_bench --device cuda --kds 32

On a CPU shared with other work, ``--threads 1`` gives stable numbers: with
OpenMP threads every small op waits at a barrier for a thread that another
process has descheduled, which slows the original method (thousands of small
reverse passes) far more than the engine and would inflate the speedup.

Each run prints a table and appends its records to ``reports/bench/jacobian.json``.
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
def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from hypocheck.fixtures.jacobians import ChunkPlan, pert_jacobians

    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as tmp:
        print(f"building the ST-HVG-sized model ({args.cells} cells) ...", flush=True)
        adapter = build_adapter(Path(tmp) / "st_hvg_sized", args.cells, args.device)
    print(adapter.describe(), flush=True)
    gen = torch.Generator().manual_seed(42)
    basal = (torch.rand(args.cells, N_GENES, generator=gen) * 2).to(device)
    batch = torch.randint(0, N_BATCHES, (args.cells,), generator=gen).to(device)
    n_kds = max(args.kds, args.orig_kds, args.jacfwd_kds)
    kds = [adapter.pert_names[1 + i * (N_PERTS - 1) // n_kds] for i in range(n_kds)]
    reps = adapter.encode_perturbation(adapter.onehot(kds)).detach()

    def f(r: Tensor) -> Tensor:
        return adapter.forward_from_repr(r[None], basal, batch)[0].mean(0)

    rows = (
        torch.arange(N_GENES) if args.orig_genes is None else torch.randperm(N_GENES, generator=gen)[: args.orig_genes]
    )
    rows = rows.sort().values.to(device)
    base: dict[str, Any] = {
        "device": device.type,
        "device_name": device_name(device),
        "cells": args.cells,
        "model": f"ST-HVG-Replogle sizes, random weights: G={N_GENES}, H={HIDDEN}, {LAYERS} llama layers "
        f"({HEADS}x{HEAD_DIM} heads), MLP {MLP}, pert_dim {N_PERTS}, bidirectional",
        "torch": torch.__version__,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    records: list[dict[str, Any]] = []

    # original: one KD at a time, reverse mode over output rows
    originals = []
    with measure(device) as t:
        for r in reps[: args.orig_kds]:
            originals.append(torch.autograd.functional.jacobian(lambda x: f(x)[rows], r))
    scale = N_GENES / len(rows)
    orig_s = t.wall_s / args.orig_kds * scale
    records.append(
        {**base, "method": "original: autograd.functional.jacobian per KD", "dtype": "float32",
         "kds_timed": args.orig_kds, "rows_timed": len(rows), "extrapolated_to_all_rows": scale != 1,
         "s_per_kd": orig_s, "cpu_s_per_kd": t.cpu_s / args.orig_kds * scale, "speedup": 1.0,
         "max_rel_err": 0.0, "peak_mem_bytes": t.peak_bytes}
    )  # fmt: skip
    print(f"original: {orig_s:.1f} s/KD", flush=True)

    def compare(j: Tensor) -> float:
        return max(rel_err(j[k][rows], originals[k]) for k in range(min(len(originals), j.shape[0])))

    def add(method: str, dtype: str, n: int, t: Timing, j: Tensor, **extra: Any) -> None:
        s = t.wall_s / n
        records.append(
            {**base, "method": method, "dtype": dtype, "kds_timed": n, "s_per_kd": s,
             "cpu_s_per_kd": t.cpu_s / n, "speedup": orig_s / s, "max_rel_err": compare(j),
             "peak_mem_bytes": t.peak_bytes, **extra}
        )  # fmt: skip
        print(f"{method} [{dtype}]: {s:.1f} s/KD", flush=True)

    plan = ChunkPlan(items=args.chunk_size, tangents=args.tangent_chunk)
    with measure(device) as t:
        j_engine = pert_jacobians(f, reps[: args.kds], progress=False, plan=plan)
    add("engine: pert_jacobians", "float32", args.kds, t, j_engine, plan=f"{plan.items} KD x {plan.tangents} dirs")
    if device.type == "cuda":
        with tf32(True), measure(device) as t:
            j_tf32 = pert_jacobians(f, reps[: args.kds], progress=False, plan=ChunkPlan(plan.items, plan.tangents))
        add("engine: pert_jacobians", "tf32", args.kds, t, j_tf32, plan=f"{plan.items} KD x {plan.tangents} dirs")
    if args.jacfwd_kds:
        jf = torch.func.vmap(torch.func.jacfwd(f))
        with measure(device) as t, torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            j_plain = torch.cat([jf(reps[k : k + 1]) for k in range(args.jacfwd_kds)])
        add("vmap(jacfwd), all directions per call", "float32", args.jacfwd_kds, t, j_plain)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for rec in records:
        rec["est_all_2023_s"] = rec["s_per_kd"] * ALL_KDS
        rec["load_avg_1min"] = [load_start, load_end]
        if device.type == "cpu" and torch.get_num_threads() > 1:
            rec["note"] = THREADS_NOTE
    return records


def table(records: list[dict[str, Any]]) -> str:
    head = f"{'method':<44} {'dtype':<8} {'KDs':>4} {'s/KD':>8} {'cpu s/KD':>9} {'speedup':>8} {'rel err':>9} "
    head += f"{'peak MiB':>9} {'all 2023 KDs':>13}"
    lines = [head, "-" * len(head)]
    for r in records:
        lines.append(
            f"{r['method'][:44]:<44} {r['dtype']:<8} {r['kds_timed']:>4} {r['s_per_kd']:>8.2f} "
            f"{r['cpu_s_per_kd']:>9.2f} {r['speedup']:>7.2f}x {r['max_rel_err']:>9.1e} "
            f"{r['peak_mem_bytes'] / 2**20:>9.0f} {r['est_all_2023_s'] / 3600:>11.1f} h"
        )
    return "\n".join(lines)


def save(records: list[dict[str, Any]], path: Path) -> None:
    """Append to the JSON list at ``path`` (atomically)."""
    existing = json.loads(path.read_text()) if path.is_file() else []
    atomic_write_text(path, json.dumps([*existing, *records], indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cells", type=int, default=64, help="control cells per sentence (S)")
    parser.add_argument("--kds", type=int, default=8, help="knockdowns timed with the engine")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--orig-kds", type=int, default=1, help="knockdowns timed with the original method")
    parser.add_argument("--orig-genes", type=int, default=None, help="output rows for the original (default all)")
    parser.add_argument("--jacfwd-kds", type=int, default=1, help="knockdowns timed with plain vmap(jacfwd); 0 skips")
    parser.add_argument("--chunk-size", type=int, default=None, help="engine: knockdowns per call")
    parser.add_argument("--tangent-chunk", type=int, default=None, help="engine: directions per call")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.orig_kds < 1 or args.kds < 1:
        parser.error("--kds and --orig-kds must be ≥ 1")
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated.*")
    records = run(args)
    print(table(records))
    save(records, args.out)
    print(f"appended {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()
