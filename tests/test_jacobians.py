"""Exactness of the Jacobian engine on a tiny real arc-state ST model: autograd, finite differences,
the one-hot Gram identity, streaming vs dense Grams, and the out-of-memory halving path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import Tensor

import hypocheck.fixtures.jacobians as jac
from hypocheck.errors import ProbeError
from hypocheck.fixtures.grams import gram_matrix, jacobian_gram, weight_factor
from hypocheck.fixtures.jacobians import (
    ChunkPlan,
    JacobianMemoryError,
    Metric,
    column_directions,
    input_directional_derivatives,
    knockout_profiles,
    pert_jacobians,
)
from hypocheck.fixtures.st_adapter import STAdapter
from tests.helpers_tiny import HIDDEN, N_GENES, PERT_NAMES, control_sentence, tiny_run_dir

KDS = ["KD01", "KD03", "KD05", "KD08"]
CELLS = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run_dir(tmp_path_factory.mktemp("jac") / "run")


@pytest.fixture(scope="module")
def adapter(run: Path) -> STAdapter:
    return STAdapter.from_run_dir(run)


@contextmanager
def true_float64(model: torch.nn.Module) -> Iterator[None]:
    """Recompute every RMSNorm in the input's dtype.

    transformers' LlamaRMSNorm rounds its input to float32 even in a float64
    model, which would cap finite differences at float32 precision. The hook
    changes the function for the engine and the finite differences alike.
    """

    def full_precision(module: torch.nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> Tensor:
        x, weight = inputs[0], module.weight
        eps = float(module.variance_epsilon)  # type: ignore[arg-type]
        assert isinstance(weight, Tensor)
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    handles = [m.register_forward_hook(full_precision) for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert handles, "no RMSNorm found"
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def adapter64(run: Path) -> Iterator[STAdapter]:
    a = STAdapter.from_run_dir(run)
    a.model.double()
    with true_float64(a.model):
        yield a


def _setup(a: STAdapter, dtype: torch.dtype) -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor, Tensor]:
    basal, batch = control_sentence(CELLS, dtype=dtype)
    reps = a.encode_perturbation(a.onehot(KDS)).detach()

    def f(r: Tensor) -> Tensor:
        return a.forward_from_repr(r[None], basal, batch)[0].mean(0)

    return f, reps, basal, batch


def _rel(a: Tensor, b: Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ------------------------------------------------------------ pert Jacobians
def test_pert_jacobians_match_autograd_float32(adapter: STAdapter) -> None:
    f, reps, _, _ = _setup(adapter, torch.float32)
    plan = ChunkPlan(items=3, tangents=5)  # neither divides K=4 nor H=32: ragged last chunks
    J = pert_jacobians(f, reps, progress=False, plan=plan)
    assert J.shape == (len(KDS), N_GENES, HIDDEN) and J.dtype == torch.float32
    ref = torch.stack([torch.autograd.functional.jacobian(f, r) for r in reps])
    assert ref.abs().max() > 0
    assert _rel(J, ref) <= 1e-5
    # the default CPU plan times block sizes on the first knockdown (8, 8, 16, … directions), then keeps the best
    auto = ChunkPlan()
    assert _rel(pert_jacobians(f, reps, progress=False, plan=auto), ref) <= 1e-5
    assert auto.items == 1 and auto.tangents in (8, 16) and auto.halvings == 0


def test_pert_jacobians_match_central_differences_float64(adapter64: STAdapter) -> None:
    f, reps, basal, batch = _setup(adapter64, torch.float64)
    assert reps.dtype == torch.float64
    J = pert_jacobians(f, reps, progress=False)
    h = 1e-4
    eye = torch.eye(HIDDEN, dtype=torch.float64)
    for k, r in enumerate(reps):
        with torch.no_grad():  # all 2H shifted points in one batched forward
            ys = adapter64.forward_from_repr(torch.cat([r + h * eye, r - h * eye]), basal, batch).mean(1)
        fd = ((ys[:HIDDEN] - ys[HIDDEN:]) / (2 * h)).T
        assert _rel(J[k], fd) <= 1e-8


def test_engine_on_a_plain_function_with_known_jacobian() -> None:
    gen = torch.Generator().manual_seed(1)
    a, x = torch.randn(7, 5, generator=gen, dtype=torch.float64), torch.randn(3, 5, generator=gen, dtype=torch.float64)
    J = pert_jacobians(lambda r: a @ torch.tanh(r), x, progress=False, tangent_chunk=2)
    expected = a[None] * (1 - torch.tanh(x) ** 2)[:, None, :]
    torch.testing.assert_close(J, expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------- input side
def test_input_directional_derivatives_match_autograd_and_fd(adapter: STAdapter, adapter64: STAdapter) -> None:
    cols = [3, 10, 47]
    # float32 vs reverse-mode autograd
    _, reps, basal, batch = _setup(adapter, torch.float32)

    def g(x: Tensor) -> Tensor:
        return adapter.forward_from_repr(reps[:1], x, batch)[0].mean(0)

    d = input_directional_derivatives(g, basal, cols, chunk_size=2)
    assert d.shape == (len(cols), N_GENES)
    full = torch.autograd.functional.jacobian(g, basal)  # (G, S, G_in)
    ref = full[:, :, cols].sum(1).T  # the regulator moved in every cell
    assert _rel(d, ref) <= 1e-5
    # an explicit direction tensor gives the same as column indices
    dirs = column_directions(basal, cols)
    assert dirs.shape == (len(cols), CELLS, N_GENES) and dirs[1, :, 10].eq(1).all() and dirs.sum() == len(cols) * CELLS
    torch.testing.assert_close(input_directional_derivatives(g, basal, dirs), d)

    # float64 vs central differences
    _, reps64, basal64, batch64 = _setup(adapter64, torch.float64)

    def g64(x: Tensor) -> Tensor:
        return adapter64.forward_from_repr(reps64[:1], x, batch64)[0].mean(0)

    d64 = input_directional_derivatives(g64, basal64, cols)
    h = 1e-4
    with torch.no_grad():
        fd = torch.stack(
            [(g64(basal64 + h * u) - g64(basal64 - h * u)) / (2 * h) for u in column_directions(basal64, cols)]
        )
    assert _rel(d64, fd) <= 1e-8


def test_knockout_profiles_match_a_loop(adapter: STAdapter) -> None:
    _, reps, basal, batch = _setup(adapter, torch.float32)

    def g(x: Tensor) -> Tensor:
        return adapter.forward_from_repr(reps[:1], x, batch)[0].mean(0)

    genes = [0, 5, 9, 30, 47]
    ko = knockout_profiles(g, basal, genes, chunk_size=2)
    with torch.no_grad():
        base = g(basal)
        expected = []
        for c in genes:
            x = basal.clone()
            x[:, c] = 0
            expected.append(g(x) - base)
    torch.testing.assert_close(ko, torch.stack(expected), rtol=1e-5, atol=1e-6)
    with pytest.raises(ProbeError, match="out of range"):
        knockout_profiles(g, basal, [N_GENES])


# ---------------------------------------------------------------------- Grams
def _dense_gram(rows: Tensor, metric: Metric) -> Tensor:
    flat = rows.reshape(rows.shape[0], -1).double()
    gram = flat @ flat.T
    if metric == "cosine":
        n = gram.diagonal().sqrt()
        gram = gram / (n[:, None] * n[None, :])
    return gram


@pytest.mark.parametrize("metric", ["cosine", "inner"])
def test_onehot_gram_identity_and_streaming(adapter64: STAdapter, metric: Metric) -> None:
    f, reps, _, _ = _setup(adapter64, torch.float64)
    W = adapter64.model.pert_encoder[0].weight.detach()  # (H, P): r = W p + b
    assert W.shape == (HIDDEN, len(PERT_NAMES))
    J = pert_jacobians(f, reps, progress=False)
    explicit = _dense_gram(J @ W, metric)  # the materialised (K, G, P) one-hot Jacobians
    torch.testing.assert_close(gram_matrix(J, metric, weight=W), explicit, rtol=1e-10, atol=1e-12)
    L = weight_factor(W)
    torch.testing.assert_close(L @ L.T, W @ W.T, rtol=1e-10, atol=1e-12)
    streamed = jacobian_gram(f, reps, metric, weight=W, progress=False, max_block_bytes=len(KDS) * N_GENES * 8 * 3)
    torch.testing.assert_close(streamed, explicit, rtol=1e-9, atol=1e-12)
    # without a weight: streaming over direction blocks of 5 equals the dense Gram of all Jacobians
    dense = _dense_gram(J, metric)
    torch.testing.assert_close(gram_matrix(J, metric), dense, rtol=1e-12, atol=1e-12)
    blocks = jacobian_gram(f, reps, metric, progress=False, max_block_bytes=len(KDS) * N_GENES * 8 * 5)
    torch.testing.assert_close(blocks, dense, rtol=1e-9, atol=1e-12)


def test_streaming_gram_float32_and_budget(adapter: STAdapter) -> None:
    f, reps, _, _ = _setup(adapter, torch.float32)
    dense = gram_matrix(pert_jacobians(f, reps, progress=False))
    streamed = jacobian_gram(f, reps, progress=False, max_block_bytes=len(KDS) * N_GENES * 4 * 7)
    assert streamed.dtype == torch.float64 and streamed.shape == (len(KDS), len(KDS))
    torch.testing.assert_close(streamed, dense, rtol=1e-5, atol=1e-6)
    assert torch.allclose(streamed.diagonal(), torch.ones(len(KDS), dtype=torch.float64))
    with pytest.raises(ProbeError, match="cannot hold one direction"):
        jacobian_gram(f, reps, progress=False, max_block_bytes=10)
    with pytest.raises(ProbeError, match="unknown Gram metric"):
        jacobian_gram(f, reps, "pearson", progress=False)  # type: ignore[arg-type]


# ------------------------------------------------------------------ OOM path
@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"),
        RuntimeError("CUDA error: out of memory (simulated)"),
    ],
)
def test_oom_halves_the_chunk_and_stays_exact(
    adapter: STAdapter, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    f, reps, _, _ = _setup(adapter, torch.float32)
    ref = pert_jacobians(f, reps, progress=False, plan=ChunkPlan(items=1, tangents=HIDDEN))
    real = jac.jvp_block
    seen: list[int] = []

    def tight(fn: Callable[[Tensor], Tensor], points: Tensor, dirs: Tensor) -> Tensor:
        seen.append(points.shape[0] * dirs.shape[0])
        if points.shape[0] * dirs.shape[0] > 8:  # "memory" for 8 columns per call
            raise error
        return real(fn, points, dirs)

    monkeypatch.setattr(jac, "jvp_block", tight)
    plan = ChunkPlan(items=4, tangents=HIDDEN)
    J = pert_jacobians(f, reps, progress=False, plan=plan)
    assert (plan.items, plan.tangents, plan.halvings) == (1, 8, 4)  # 4→2→1 knockdowns, then 32→16→8 directions
    assert seen[0] == 4 * HIDDEN and max(seen[-5:]) == 8
    torch.testing.assert_close(J, ref, rtol=1e-6, atol=1e-7)
    # the plan keeps its lesson: a second call starts at the shrunk size
    seen.clear()
    pert_jacobians(f, reps, progress=False, plan=plan)
    assert max(seen) == 8 and plan.halvings == 4


@pytest.mark.parametrize(
    ("plan", "block_dirs"),
    [
        (ChunkPlan(items=2, tangents=HIDDEN), None),  # OOM on the second chunk of knockdowns
        (ChunkPlan(items=len(KDS), tangents=HIDDEN // 2), HIDDEN // 2),  # OOM on the Gram's second direction block
    ],
    ids=["second-knockdown-chunk", "second-direction-block"],
)
def test_oom_after_a_successful_chunk_in_jacobian_gram_stays_exact(
    adapter: STAdapter, monkeypatch: pytest.MonkeyPatch, plan: ChunkPlan, block_dirs: int | None
) -> None:
    f, reps, _, _ = _setup(adapter, torch.float32)
    budget = None if block_dirs is None else len(KDS) * N_GENES * 4 * block_dirs
    ref = jacobian_gram(f, reps, "inner", progress=False, max_block_bytes=budget,
                        plan=ChunkPlan(items=1, tangents=HIDDEN))
    real = jac.jvp_block
    calls: list[int] = []

    def fails_after_first(fn: Callable[[Tensor], Tensor], points: Tensor, dirs: Tensor) -> Tensor:
        calls.append(points.shape[0] * dirs.shape[0])
        if len(calls) > 1 and calls[-1] > 8:  # the first chunk fits; later ones only at ≤ 8 columns
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")
        return real(fn, points, dirs)

    monkeypatch.setattr(jac, "jvp_block", fails_after_first)
    gram = jacobian_gram(f, reps, "inner", progress=False, max_block_bytes=budget, plan=plan)
    first = calls[0]
    assert first > 8 and max(calls[1:]) > 8, calls  # a big first chunk succeeded, the next one failed
    assert (plan.items, plan.tangents, plan.halvings) == (1, 8, 3), plan  # halved down to 1 × 8 columns
    # every (knockdown, direction) column counted once: an inner-product Gram would show a repeat or a gap
    torch.testing.assert_close(gram, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())
    done = first + sum(c for c in calls[1:] if c <= 8)
    assert done == len(KDS) * HIDDEN, calls


def test_oom_at_one_column_raises_clearly(adapter: STAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    f, reps, _, _ = _setup(adapter, torch.float32)

    def never(*_args: object) -> Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(jac, "jvp_block", never)
    with pytest.raises(JacobianMemoryError, match=r"even with 1 point × 1 direction") as info:
        pert_jacobians(f, reps, progress=False, plan=ChunkPlan(items=2, tangents=2))
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)

    # other errors are not mistaken for memory
    def broken(*_args: object) -> Tensor:
        raise ValueError("boom")

    monkeypatch.setattr(jac, "jvp_block", broken)
    with pytest.raises(ValueError, match="boom"):
        pert_jacobians(f, reps, progress=False)


def test_bad_inputs_are_reported() -> None:
    with pytest.raises(ProbeError, match=r"reps must be \(K, H\)"):
        pert_jacobians(torch.sin, torch.zeros(3), progress=False)
    with pytest.raises(ProbeError, match="chunk_size must be"):
        pert_jacobians(torch.sin, torch.zeros(2, 3), chunk_size=0, progress=False)
    with pytest.raises(ProbeError, match="weight must be"):
        jacobian_gram(torch.sin, torch.zeros(2, 3), weight=torch.zeros(4, 5), progress=False)
    with pytest.raises(ProbeError, match="out of range"):
        column_directions(torch.zeros(2, 3), [3])
    with pytest.raises(ProbeError, match=r"gene columns \[-4\] out of range for dimension -1 of size 3"):
        knockout_profiles(torch.sin, torch.zeros(2, 3), [0, -4])
