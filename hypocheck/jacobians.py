"""One Jacobian engine: batched forward-mode derivatives of any function of tensors.

Every probe that differentiates goes through here (NB03–NB10). The engine
knows nothing about models or biology: it takes a function and points.

Usage::

    f = lambda r: adapter.forward_from_repr(r[None], basal, batch)[0].mean(0)   # (H,) -> (G,)
    J = pert_jacobians(f, reps)                                  # (K, G, H): dY/dr at every r_k
    sim = jacobian_gram(f, reps, metric="cosine")                # (K, K), never holds all J_k
    sim_onehot = jacobian_gram(f, reps, weight=W_pert)           # <J_a W, J_b W>_F, NB08

    g = lambda x: adapter.forward_from_repr(r_ctrl[None], x, batch)[0].mean(0)  # (S, G) -> (G,)
    d = input_directional_derivatives(g, basal, [gene_index["XBP1"]])           # NB03
    ko = knockout_profiles(g, basal, gene_columns)                              # NB04

Why forward mode: a Jacobian ``∂Y/∂r`` has H = 328 input directions and
G = 2000 outputs, so pushing H tangents (``vmap(jvp)``) costs H forward-like
passes where reverse mode costs G backward passes.

Chunking. A batched call evaluates ``items × tangents`` (point, direction)
columns at once (:class:`ChunkPlan`). On CUDA every direction goes in one
call (the GPU wants large batches) and the number of points per call comes
from free memory, measured on a first one-point call. On CPU memory is not
what binds: speed is. Too few columns per call and the fixed cost of a call
(the primal pass, op dispatch through three functorch levels, thread
start-up) dominates; too many and the intermediates (columns × cells × 3072
floats in an ST MLP) fall out of cache and past glibc's mmap threshold, so
every op page-faults fresh memory. The best size depends on the cells per
sentence, hidden inside ``f``, so the engine *times* it: the first point is
computed in blocks of 8, 8, 16, 32, … directions and the fastest block size
per direction is kept (all of that work is part of the result). At ST-HVG
sizes with 64 cells this lands at 16–32 directions per call, 1.6× faster than
all 328 at once (38 vs 60 s per knockdown on one EPYC core); with 8 cells at
128 (``bench/jacobian_bench.py``). A CUDA
out-of-memory error halves the points per call, then the directions per
call, down to 1 × 1, and only then raises :class:`JacobianMemoryError`.

SDPA. Forward-mode AD has formulas only for the math kernel of
``scaled_dot_product_attention`` (flash / memory-efficient kernels have no
JVP), so every call runs under ``sdpa_kernel(SDPBackend.MATH)``. The ST adapter
does the same; the engine does it again because it accepts any function, and
nesting is free. Calls also run under ``torch.no_grad()`` (no backward graph
for parameters that require grad); not ``inference_mode``, whose tensors
could not later enter autograd if a caller or the cache hands them on.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from .errors import ProbeError

Metric = Literal["cosine", "inner"]

CPU_COLUMNS_PER_CALL = 16
"""Points per batched call on CPU when nothing is differentiated (knockouts: one forward each)."""
TUNE_START = 8
"""First block size (directions per call) tried by the CPU auto-tuner."""
CUDA_MEMORY_FRACTION = 0.7
"""Share of the usable GPU memory a chunk may plan to fill (the rest is headroom for fragmentation)."""
GRAM_BLOCK_FRACTION = 0.25
"""Default share of the available memory one held block of :func:`jacobian_gram` may take (≤ 1 GiB)."""


class JacobianMemoryError(ProbeError):
    """Out of memory even with one point and one direction per batched call."""


@dataclass
class ChunkPlan:
    """Columns per batched call: ``items`` points (knockdowns, genes) × ``tangents`` directions.

    ``None`` fields are decided by the engine (see module docstring). Pass one
    plan to several calls to keep a size that an out-of-memory error taught;
    ``halvings`` counts those lessons.
    """

    items: int | None = None
    tangents: int | None = None
    halvings: int = 0

    def shrink(self) -> bool:
        """Halve ``items``, else ``tangents``; ``False`` when both are already 1."""
        items, tangents = self.items or 1, self.tangents or 1
        if items > 1:
            self.items = items // 2
        elif tangents > 1:
            self.items, self.tangents = 1, tangents // 2
        else:
            return False
        self.halvings += 1
        return True


# --------------------------------------------------------------------- memory
def available_memory(device: torch.device | str) -> int | None:
    """Bytes that may still be allocated on ``device`` (``None`` when unknown).

    CUDA: free device memory plus what PyTorch's caching allocator holds unused.
    CPU: ``psutil`` available memory, else ``/proc``-backed ``os.sysconf``.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    if dev.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _is_oom(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, typed or by message."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _require_fits(nbytes: int, device: torch.device, what: str, hint: str) -> None:
    """Raise before allocating a result that cannot fit in the memory left."""
    avail = available_memory(device)
    if avail is not None and nbytes > 0.9 * avail:
        raise ProbeError(
            f"{what} needs {nbytes / 2**30:.2f} GiB on {device}, but only {avail / 2**30:.2f} GiB is available",
            hint=hint,
        )


@contextlib.contextmanager
def _peak_bytes(device: torch.device) -> Iterator[list[int]]:
    """Yield a one-element list that holds, on exit, the peak CUDA allocation above the start."""
    box = [0]
    if device.type != "cuda":
        yield box
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    yield box
    torch.cuda.synchronize(device)
    box[0] = max(1, torch.cuda.max_memory_allocated(device) - start)


def _resolve_plan(
    plan: ChunkPlan | None, device: torch.device, n_dirs: int, chunk_size: int | None, tangent_chunk: int | None
) -> ChunkPlan:
    """Fill a plan's open sizes; on CPU ``tangents`` stays ``None`` until the auto-tuner has timed it."""
    plan = plan if plan is not None else ChunkPlan()
    for name, value in (("chunk_size", chunk_size), ("tangent_chunk", tangent_chunk)):
        if value is not None and value < 1:
            raise ProbeError(f"{name} must be ≥ 1, got {value}")
    if plan.tangents is None and (tangent_chunk is not None or device.type != "cpu" or n_dirs == 1):
        plan.tangents = tangent_chunk or n_dirs
    if plan.tangents is not None:
        plan.tangents = max(1, min(plan.tangents, n_dirs))
    if plan.items is None:
        if chunk_size is not None:
            plan.items = chunk_size
        elif device.type == "cpu":
            plan.items = CPU_COLUMNS_PER_CALL if n_dirs == 1 else 1
        # accelerators: stays None until the first (one-point) call has been measured
    return plan


def _autotune_first_point(n_dirs: int, step: Callable[[int, int, int, int], None]) -> int:
    """Compute point 0 in blocks of 8, 8, 16, 32, … directions; return the fastest size per direction.

    The first block warms up and is not compared; the search stops once a size
    is 10 % slower per direction than the best, and the rest of point 0 runs at the best size.
    """
    j, size, best, best_rate, warm = 0, TUNE_START, TUNE_START, math.inf, False
    while j < n_dirs:
        c = min(size, n_dirs - j)
        start = time.perf_counter()
        step(0, 1, j, j + c)
        rate = (time.perf_counter() - start) / c
        j += c
        if not warm:
            warm = True
            continue
        if c < size:  # a ragged tail is no fair candidate
            break
        if rate < best_rate:
            best, best_rate = c, rate
        elif rate > 1.1 * best_rate:
            break
        size *= 2
    best = min(best, n_dirs)
    while j < n_dirs:
        c = min(best, n_dirs - j)
        step(0, 1, j, j + c)
        j += c
    return best


def _run_chunked(
    n_items: int,
    n_dirs: int,
    plan: ChunkPlan,
    device: torch.device,
    step: Callable[[int, int, int, int], None],
    bar: Any,
) -> None:
    """Call ``step(i0, i1, j0, j1)`` over every (item, direction) block, halving the plan on OOM."""
    i = 0
    if plan.tangents is None and n_items > 0:  # CPU: time the block size on the first point
        plan.tangents = _autotune_first_point(n_dirs, step)
        plan.items = plan.items or 1
        bar.update(1)
        i = 1
    while i < n_items:
        probing = plan.items is None
        k = 1 if probing else min(int(plan.items or 1), n_items - i)
        try:
            with _peak_bytes(device) as peak:
                tangents = int(plan.tangents or n_dirs)
                for j in range(0, n_dirs, tangents):
                    step(i, i + k, j, min(j + tangents, n_dirs))
        except Exception as exc:
            if not _is_oom(exc):
                raise
            if probing:
                plan.items = 1
            if not plan.shrink():
                avail = available_memory(device)
                left = f"{avail / 2**30:.2f} GiB usable" if avail is not None else "usable memory unknown"
                raise JacobianMemoryError(
                    f"out of memory on {device} even with 1 point × 1 direction per batched call ({left}): "
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}",
                    hint="use fewer cells per sentence, a smaller model, or free the device's memory",
                ) from exc
            failed = True
        else:
            failed = False
        if failed:  # outside the except block, so the traceback's tensors are gone before retrying
            _release(device)
            continue
        if probing:
            usable = available_memory(device) or 0
            plan.items = max(1, min(n_items, int(CUDA_MEMORY_FRACTION * usable / max(peak[0], 1))))
        bar.update(k)
        i += k


def _progress(total: int, desc: str, enabled: bool) -> Any:
    return tqdm(total=total, desc=desc, unit="pt", disable=not enabled, leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def _ad_context(math_sdpa: bool) -> Iterator[None]:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH) if math_sdpa else contextlib.nullcontext():
        yield


# ------------------------------------------------------------ the core batch
def jvp_block(f: Callable[[Tensor], Tensor], points: Tensor, dirs: Tensor) -> Tensor:
    """``(k, c, *out)``: the JVP of ``f`` at each of ``k`` points along each of ``c`` directions.

    One batched forward-mode pass: ``vmap`` over points of ``vmap`` over
    directions of ``jvp``; the primal is computed once per point, not per direction.
    """

    def push(point: Tensor, direction: Tensor) -> Tensor:
        return torch.func.jvp(f, (point,), (direction,))[1]

    over_dirs = torch.func.vmap(push, in_dims=(None, 0))
    return torch.func.vmap(over_dirs, in_dims=(0, None))(points, dirs)


def directional_derivatives(
    f: Callable[[Tensor], Tensor],
    points: Tensor,
    dirs: Tensor,
    *,
    chunk_size: int | None = None,
    tangent_chunk: int | None = None,
    plan: ChunkPlan | None = None,
    progress: bool = False,
    desc: str = "jvp",
    math_sdpa: bool = True,
) -> Tensor:
    """``(K, *out, D)``: derivative of ``f`` at each point ``points[k]`` along each direction ``dirs[d]``.

    ``points`` is ``(K, *in)`` and ``dirs`` ``(D, *in)``. Chunked and
    OOM-safe as described in the module docstring; the result lives on
    ``points.device``.
    """
    if points.shape[1:] != dirs.shape[1:]:
        raise ProbeError(f"points {tuple(points.shape)} and directions {tuple(dirs.shape)} differ in input shape")
    n, m = points.shape[0], dirs.shape[0]
    device = points.device
    dirs = dirs.to(device=device, dtype=points.dtype)
    with _ad_context(math_sdpa):
        probe = f(points[0])
    if not isinstance(probe, Tensor):
        raise ProbeError(f"the function must return a tensor, got {type(probe).__name__}")
    out_shape = tuple(probe.shape)
    nbytes = n * m * max(probe.numel(), 1) * probe.element_size()
    _require_fits(
        nbytes,
        device,
        f"a ({n}, {', '.join(map(str, out_shape))}, {m}) derivative tensor",
        "stream similarities with jacobian_gram, or pass fewer points",
    )
    result = torch.empty((n, m, *out_shape), dtype=probe.dtype, device=device)
    plan = _resolve_plan(plan, device, m, chunk_size, tangent_chunk)

    def step(i0: int, i1: int, j0: int, j1: int) -> None:
        with _ad_context(math_sdpa):
            result[i0:i1, j0:j1] = jvp_block(f, points[i0:i1], dirs[j0:j1])

    with _progress(n, desc, progress) as bar:
        _run_chunked(n, m, plan, device, step, bar)
    return result.movedim(1, -1)


# ------------------------------------------------------------- public probes
def pert_jacobians(
    f: Callable[[Tensor], Tensor],
    reps: Tensor,
    chunk_size: int | None = None,
    progress: bool = True,
    *,
    tangent_chunk: int | None = None,
    plan: ChunkPlan | None = None,
    math_sdpa: bool = True,
) -> Tensor:
    """``(K, *out, H)``: ``J_k = ∂f/∂r`` at every representation ``reps[k]`` (NB05–NB10).

    Args:
        f: ``(H,) -> (G,)`` (any output shape), e.g. the cell-averaged prediction.
        reps: ``(K, H)`` points, one per knockdown.
        chunk_size: knockdowns per batched call (default: from free memory on CUDA, 1 on CPU).
        progress: show a tqdm bar.
        tangent_chunk: input directions per batched call (default: all on CUDA; on CPU timed on
            the first knockdown, see the module docstring).
        plan: a :class:`ChunkPlan` to use and update (overrides the two sizes above).
        math_sdpa: run under the math SDPA kernel (needed by forward-mode AD through attention).
    """
    if reps.dim() != 2:
        raise ProbeError(f"reps must be (K, H), got shape {tuple(reps.shape)}")

    eye = torch.eye(reps.shape[1], dtype=reps.dtype, device=reps.device)
    return directional_derivatives(
        f,
        reps,
        eye,
        chunk_size=chunk_size,
        tangent_chunk=tangent_chunk,
        plan=plan,
        progress=progress,
        desc="Jacobians",
        math_sdpa=math_sdpa,
    )


def _checked_columns(columns: Sequence[int], x: Tensor, dim: int, what: str) -> list[int]:
    """``columns`` as ints, each a valid index along ``dim`` of ``x`` (a ProbeError names those that are not)."""
    size = x.shape[dim % x.dim()]
    cols = [int(c) for c in columns]
    bad = [c for c in cols if not -size <= c < size]
    if bad:
        raise ProbeError(f"{what} {bad} out of range for dimension {dim} of size {size}")
    return cols


def column_directions(x: Tensor, columns: Sequence[int], dim: int = -1) -> Tensor:
    """``(n, *x.shape)`` indicators: column ``c`` of ``x`` (along ``dim``) moved by 1 in every row."""
    d = dim % x.dim()
    size = x.shape[d]
    columns = _checked_columns(columns, x, dim, "column indices")
    eye = torch.eye(size, dtype=x.dtype, device=x.device)[columns]  # (n, size)
    view = [len(columns)] + [1] * x.dim()
    view[d + 1] = size
    return eye.reshape(view).expand(len(columns), *x.shape).contiguous()


def input_directional_derivatives(
    g: Callable[[Tensor], Tensor],
    x: Tensor,
    directions: Tensor | Sequence[int],
    *,
    chunk_size: int | None = None,
    plan: ChunkPlan | None = None,
    progress: bool = False,
    math_sdpa: bool = True,
) -> Tensor:
    """``(n, *out)``: ``∂g/∂x`` along each direction, at ``x`` (NB03).

    ``directions`` is ``(n, *x.shape)`` or column indices along ``x``'s last
    dimension: a regulator's expression moved in *every* control cell
    (:func:`column_directions`). One ``vmap(jvp)`` over the directions, chunked.
    """
    dirs = directions if isinstance(directions, Tensor) else column_directions(x, directions)
    if dirs.shape[1:] != x.shape:
        raise ProbeError(f"directions must be (n, {', '.join(map(str, x.shape))}), got {tuple(dirs.shape)}")
    out = directional_derivatives(
        g,
        x[None],
        dirs,
        tangent_chunk=chunk_size,
        plan=plan,
        progress=progress,
        desc="directions",
        math_sdpa=math_sdpa,
    )
    return out[0].movedim(-1, 0)


def knockout_profiles(
    g: Callable[[Tensor], Tensor],
    x: Tensor,
    genes: Sequence[int],
    *,
    dim: int = -1,
    chunk_size: int | None = None,
    plan: ChunkPlan | None = None,
    progress: bool = False,
) -> Tensor:
    """``(n, *out)``: ``g(x with column c set to 0) − g(x)`` for each column ``c`` in ``genes`` (NB04).

    The zeroed inputs are built per chunk and evaluated in one ``vmap`` call
    per chunk, so memory is bounded by the chunk, not by ``len(genes)``.
    """
    d = dim % x.dim()
    cols = _checked_columns(genes, x, dim, "gene columns")
    with torch.no_grad():
        base = g(x)
    n = len(cols)
    result = torch.empty((n, *base.shape), dtype=base.dtype, device=base.device)
    device = x.device
    plan = _resolve_plan(plan, device, 1, chunk_size, 1)
    batched = torch.func.vmap(g)

    def step(i0: int, i1: int, _j0: int, _j1: int) -> None:
        xs = x.unsqueeze(0).repeat(i1 - i0, *([1] * x.dim()))
        for row, c in enumerate(cols[i0:i1]):
            xs[row].select(d, c).zero_()
        with torch.no_grad():
            result[i0:i1] = batched(xs) - base

    with _progress(n, "knockouts", progress) as bar:
        _run_chunked(n, 1, plan, device, step, bar)
    return result


# -------------------------------------------------------------------- Grams
def _check_metric(metric: str) -> None:
    if metric not in ("cosine", "inner"):
        raise ProbeError(f"unknown Gram metric {metric!r}", hint="valid: 'cosine', 'inner'")


def _finish(gram: Tensor, metric: Metric) -> Tensor:
    """The inner-product Gram as it is, or turned into cosines (0 where a Jacobian is zero)."""
    if metric == "inner":
        return gram
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, gram / denom.clamp_min(torch.finfo(gram.dtype).tiny), torch.zeros_like(gram))


def weight_factor(weight: Tensor, rtol: float = 1e-12) -> Tensor:
    """``L`` ``(H, r)`` with ``L Lᵀ = W Wᵀ`` (eigen-factor, r ≤ H): routes ``J W`` through ``J L``.

    ``⟨J_a W, J_b W⟩_F = tr(Wᵀ J_aᵀ J_b W) = ⟨J_a (W Wᵀ), J_b⟩_F = ⟨J_a L, J_b L⟩_F``, so a
    P-column one-hot Jacobian (P = 2024) needs only r ≤ H = 328 directional derivatives.
    """
    w = weight.detach().to(torch.float64)
    evals, evecs = torch.linalg.eigh(w @ w.T)
    keep = evals > rtol * evals.max().clamp_min(0)
    return (evecs[:, keep] * evals[keep].sqrt()).to(weight.dtype)


def gram_matrix(jacobians: Tensor, metric: Metric = "cosine", weight: Tensor | None = None) -> Tensor:
    """``(K, K)`` float64 similarities of held Jacobians ``(K, *out, H)``.

    With ``weight`` W ``(H, P)``: entries ``⟨J_a W, J_b W⟩_F`` computed as
    ``⟨J_a (W Wᵀ), J_b⟩_F``, never materialising the ``(K, *out, P)`` product (NB08).
    """
    _check_metric(metric)
    flat = jacobians.reshape(jacobians.shape[0], -1, jacobians.shape[-1]).to(torch.float64)
    if weight is not None:
        w = weight.to(device=flat.device, dtype=torch.float64)
        routed = flat @ (w @ w.T)
        gram = routed.reshape(flat.shape[0], -1) @ flat.reshape(flat.shape[0], -1).T
        gram = (gram + gram.T) / 2  # symmetric in exact arithmetic
    else:
        rows = flat.reshape(flat.shape[0], -1)
        gram = rows @ rows.T
    return _finish(gram, metric)


def jacobian_gram(
    f: Callable[[Tensor], Tensor],
    reps: Tensor,
    metric: Metric = "cosine",
    weight: Tensor | None = None,
    *,
    max_block_bytes: int | None = None,
    chunk_size: int | None = None,
    tangent_chunk: int | None = None,
    plan: ChunkPlan | None = None,
    progress: bool = True,
    math_sdpa: bool = True,
) -> Tensor:
    """``(K, K)`` float64 (on CPU) Frobenius similarities of ``J_k = ∂f/∂r`` at every ``reps[k]``.

    Streams over *input directions*, not knockdowns: ``⟨J_a, J_b⟩_F =
    Σ_d ⟨J_a e_d, J_b e_d⟩``, so one block of ``c`` directions for all K
    knockdowns, ``(K, *out, c)``, adds its exact share to the Gram and is
    dropped. Every (knockdown, direction) column is computed once, as in
    :func:`pert_jacobians` (no recomputation, unlike knockdown-pair blocking),
    and the peak holds one block: ``c = max_block_bytes // (K · |out| · 4)``
    (default ¼ of the available memory, at most 1 GiB). The Gram matmuls
    add ``K² · |out| · H`` multiply-adds (≈ 3 min for 2023 KDs on 2 CPU cores).

    With ``weight`` W ``(H, P)`` the entries are ``⟨J_a W, J_b W⟩_F`` (NB08),
    computed with the directions of :func:`weight_factor` instead of the unit vectors.
    """
    if reps.dim() != 2:
        raise ProbeError(f"reps must be (K, H), got shape {tuple(reps.shape)}")
    _check_metric(metric)
    if weight is not None and (weight.dim() != 2 or weight.shape[0] != reps.shape[1]):
        raise ProbeError(f"weight must be (H={reps.shape[1]}, P), got shape {tuple(weight.shape)}")

    device = reps.device
    if weight is None:
        dirs = torch.eye(reps.shape[1], dtype=reps.dtype, device=device)
    else:
        dirs = weight_factor(weight.to(device=device, dtype=reps.dtype)).T.contiguous()
    with _ad_context(math_sdpa):
        out_numel = max(f(reps[0]).numel(), 1)
    k, m = reps.shape[0], dirs.shape[0]
    budget = max_block_bytes
    if budget is None:
        avail = available_memory(device)
        budget = min(2**30, int(GRAM_BLOCK_FRACTION * avail)) if avail else 2**28
    per_dir = k * out_numel * reps.element_size()
    if budget < per_dir:
        raise ProbeError(
            f"max_block_bytes={budget} cannot hold one direction for {k} points ({per_dir} bytes)",
            hint=f"allow at least {per_dir} bytes, or pass fewer points",
        )
    plan = _resolve_plan(plan, device, m, chunk_size, tangent_chunk)
    block = min(m, budget // per_dir)
    if block >= int(plan.tangents or 1):  # whole tangent chunks: no extra primal passes
        block -= block % int(plan.tangents or 1)
    gram = torch.zeros(k, k, dtype=torch.float64)
    with _progress(m, "Gram directions", progress) as bar:
        for j in range(0, m, block):
            cols = directional_derivatives(
                f, reps, dirs[j : j + block], plan=plan, math_sdpa=math_sdpa, progress=progress,
                desc="knockdowns",
            )  # fmt: skip
            flat = cols.reshape(k, -1)
            gram += (flat @ flat.T).to("cpu", torch.float64)
            del cols, flat
            bar.update(min(block, m - j))
    return _finish((gram + gram.T) / 2, metric)

