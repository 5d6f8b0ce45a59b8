"""Sketched Jacobian Grams: unbiased, exact at k = H, honest standard errors, deterministic directions, and the
same routing verdicts as the exact Gram on the demo world.

The hand-built functions have Jacobians known in closed form, so every estimate is checked against an exact answer.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from hypocheck.errors import ProbeError
from hypocheck.fixtures.grams import (
    GramShare,
    directions_for_target,
    estimate_gram,
    gram_directions,
    gram_share,
    haar_basis,
    jacobian_gram,
    jacobian_gram_estimate,
    reduce_gram_shares,
    weight_factor,
)

H, G, K = 24, 10, 5


def _problem(seed: int = 0) -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor]:
    """``f(r) = A tanh(r) + B r``: ``J(r) = A diag(1 − tanh² r) + B``, exactly, at K random points."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(G, H, generator=gen, dtype=torch.float64)
    b = 0.3 * torch.randn(G, H, generator=gen, dtype=torch.float64)
    reps = torch.randn(K, H, generator=gen, dtype=torch.float64)

    def f(r: Tensor) -> Tensor:
        return a @ torch.tanh(r) + b @ r

    jac = a[None] * (1 - torch.tanh(reps) ** 2)[:, None, :] + b[None]
    return f, reps, jac


def _exact(jac: Tensor, weight: Tensor | None = None) -> Tensor:
    flat = jac if weight is None else jac @ weight
    rows = flat.reshape(jac.shape[0], -1)
    return rows @ rows.T


def test_orthogonal_sketch_at_k_equals_h_is_exact() -> None:
    f, reps, jac = _problem()
    est = jacobian_gram_estimate(f, reps, sketch=H, seed=5, progress=False)
    torch.testing.assert_close(est.gram, _exact(jac), rtol=1e-10, atol=1e-10)
    assert est.se.abs().max() < 1e-6 * _exact(jac).abs().max()  # the finite-population factor is 0
    assert est.method == "sketch" and est.directions == H and est.basis == H
    exact = jacobian_gram_estimate(f, reps, progress=False)
    torch.testing.assert_close(exact.gram, _exact(jac), rtol=1e-12, atol=1e-12)
    assert exact.method == "exact" and exact.median_cosine_se() == 0.0


def test_sketch_lies_within_its_reported_standard_errors() -> None:
    """Across seeds, the z-scores (estimate − exact)/SE of entries and of cosines behave like standard normals:
    median |z| near 0.674 (the SE is neither inflated nor too small) and few beyond 3."""
    f, reps, jac = _problem(1)
    exact = _exact(jac)
    norms = exact.diagonal().sqrt()
    exact_cos = exact / (norms[:, None] * norms[None, :])
    z_gram, z_cos = [], []
    off = ~torch.eye(K, dtype=torch.bool)
    for seed in range(40):
        est = jacobian_gram_estimate(f, reps, sketch=12, seed=seed, progress=False)
        assert est.directions == 12
        z_gram.append(((est.gram - exact) / est.se)[off])
        z_cos.append(((est.cosine() - exact_cos) / est.cosine_se())[off])
    for z in (torch.cat(z_gram).abs(), torch.cat(z_cos).abs()):
        assert 0.45 < z.median().item() < 0.95, z.median()
        assert (z < 3).double().mean() >= 0.93, z.quantile(0.95)
    # the cosine SE accounts for the covariance of numerator and norms: much smaller than the bound without it
    est = jacobian_gram_estimate(f, reps, sketch=12, seed=0, progress=False)
    bound = replace(est, share=replace(est.share, cross=None, diag_outer=None)) if est.share else est
    assert est.cosine_se()[off].median() < 0.8 * bound.cosine_se()[off].median()


def test_sketch_is_unbiased_over_seeds() -> None:
    f, reps, jac = _problem(2)
    exact = _exact(jac)
    draws = torch.stack([jacobian_gram_estimate(f, reps, sketch=4, seed=s, progress=False).gram for s in range(300)])
    mean, sem = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert ((mean - exact).abs() <= 4 * sem + 1e-12).all(), ((mean - exact) / sem).abs().max()
    # and it is not trivially exact: a single draw does miss
    assert (draws[0] - exact).abs().max() > 1e-3 * exact.abs().max()


def test_onehot_weight_sketch() -> None:
    """With W, the directions are v = √r · L q: unbiased for ⟨J_a W, J_b W⟩_F, exact at k = rank(W Wᵀ)."""
    f, reps, jac = _problem(3)
    gen = torch.Generator().manual_seed(9)
    weight = torch.randn(H, 7, generator=gen, dtype=torch.float64) @ torch.randn(7, 30, generator=gen,
                                                                                dtype=torch.float64)  # rank 7
    exact = _exact(jac, weight)
    dense = jacobian_gram_estimate(f, reps, weight, progress=False)
    assert dense.basis == 7 and dense.directions == 7
    torch.testing.assert_close(dense.gram, exact, rtol=1e-9, atol=1e-9)
    full = jacobian_gram_estimate(f, reps, weight, sketch=7, seed=1, progress=False)
    torch.testing.assert_close(full.gram, exact, rtol=1e-9, atol=1e-9)
    draws = torch.stack([jacobian_gram_estimate(f, reps, weight, sketch=3, seed=s, progress=False).gram
                         for s in range(300)])
    sem = draws.std(0) / math.sqrt(draws.shape[0])
    assert ((draws.mean(0) - exact).abs() <= 4 * sem + 1e-9).all()
    dirs = gram_directions(H, weight=weight, sketch=7, seed=0, dtype=torch.float64)
    L = weight_factor(weight)
    torch.testing.assert_close(dirs.T @ dirs / 7, L @ L.T, rtol=1e-9, atol=1e-9)  # complete: Σ v vᵀ / r = W Wᵀ
    with pytest.raises(ProbeError, match="1 to 7 directions"):
        gram_directions(H, weight=weight, sketch=8)


def test_directions_are_deterministic_and_chunking_independent() -> None:
    a = gram_directions(H, sketch=10, seed=3, dtype=torch.float64)
    b = gram_directions(H, sketch=H, seed=3, dtype=torch.float64)[:10]  # direction i does not depend on k
    assert torch.equal(a, b)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        assert torch.equal(haar_basis(H, 3), haar_basis(H, 3))
    finally:
        torch.set_num_threads(threads)
    q = haar_basis(H, 3)
    torch.testing.assert_close(q @ q.T, torch.eye(H, dtype=torch.float64), rtol=0, atol=1e-12)
    assert not torch.equal(haar_basis(H, 4), q)
    f32 = gram_directions(H, sketch=10, seed=3)
    assert f32.dtype == torch.float32 and torch.equal(f32, a.float())  # drawn in float64, then cast


def test_shares_reduce_in_any_chunking_to_the_same_gram() -> None:
    f, reps, _ = _problem(4)
    dirs = gram_directions(H, sketch=12, seed=0, dtype=torch.float64)
    whole = gram_share(f, reps, dirs)
    parts = [gram_share(f, reps, dirs[a:b]) for a, b in ((0, 4), (4, 8), (8, 12))]
    reordered = [parts[2], parts[0], parts[1]]  # computed in another order, reduced in chunk order
    again = reduce_gram_shares([reordered[1], reordered[2], reordered[0]])
    assert again.directions == 12
    torch.testing.assert_close(again.total, whole.total, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(again.squares, whole.squares, rtol=1e-12, atol=1e-12)
    first = reduce_gram_shares(parts)
    assert torch.equal(first.total, again.total) and torch.equal(first.squares, again.squares)
    with pytest.raises(ProbeError, match="no Gram shares"):
        reduce_gram_shares([])
    with pytest.raises(ProbeError, match="directions must be"):
        gram_share(f, reps, dirs[:, :3])


def test_target_error_chooses_k_from_the_pilot() -> None:
    f, reps, _jac = _problem(5)
    pilot = jacobian_gram_estimate(f, reps, sketch=4, seed=0, progress=False)
    se4 = pilot.median_cosine_se()
    assert se4 > 0
    loose = directions_for_target(pilot, 10 * se4)
    assert loose == 4  # already good enough: no more than the pilot
    k = directions_for_target(pilot, se4 / 2)
    # SE ∝ √(1/k − 1/H): halving it needs 1/k − 1/H = (1/4 − 1/H)/4
    assert k == math.ceil(1 / ((1 / 4 - 1 / H) / 4 + 1 / H))
    assert directions_for_target(pilot, se4 / 2, step=5) % 5 == 0
    assert directions_for_target(pilot, 1e-9) == H  # capped at the basis: the exact Gram
    with pytest.raises(ProbeError, match="target_error must be > 0"):
        directions_for_target(pilot, 0.0)
    # the chosen k delivers about the target on a fresh seed
    est = jacobian_gram_estimate(f, reps, sketch=k, seed=11, progress=False)
    assert est.median_cosine_se() < 0.8 * se4


def test_estimate_gram_handles_edge_cases() -> None:
    share = GramShare(torch.eye(2, dtype=torch.float64) * 3, torch.eye(2, dtype=torch.float64) * 9, 1)
    est = estimate_gram(share, method="sketch", basis=4)
    assert torch.isinf(est.se).all()  # one direction: no variance estimate
    assert estimate_gram(share, method="sketch", basis=1).se.abs().max() == 0
    with pytest.raises(ProbeError, match="equal"):
        GramShare(torch.zeros(2, 2), torch.zeros(3, 3), 1)


def test_jacobian_gram_cosine_of_a_sketch() -> None:
    f, reps, jac = _problem(6)
    cos = jacobian_gram(f, reps, "cosine", sketch=H, seed=2, progress=False)
    exact = _exact(jac)
    n = exact.diagonal().sqrt()
    torch.testing.assert_close(cos, exact / (n[:, None] * n[None, :]), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ demo world
DEMO_CELLS = 8
"""Control cells per sentence in the demo-world checks (the suite's 64 would take minutes on a 2-core CPU)."""
DEMO_PARAMS = {"selection": "all", "permutations": 199, "bootstrap": 99}


def _demo_ctx(path: Path, gram: dict[str, Any], precision: str) -> Any:
    """The bundled demo suite (no SAE) on the CPU with ``DEMO_CELLS`` cells per sentence and these settings."""
    import yaml

    from hypocheck.fixtures.config import SuiteConfig
    from hypocheck.fixtures.context import SuiteContext
    from tools.demo import DEMO_DIR

    root = DEMO_DIR.parent.parent
    base = yaml.safe_load((root / "suite.yaml").read_text())
    for spec in base["models"].values():
        spec["run_dir"] = str(root / spec["run_dir"])
    base["data"]["path"] = str(root / base["data"]["path"])
    base["truth"] = str(root / base["truth"])
    base.pop("sae", None)
    base.update(device="cpu", gram=gram, precision=precision)
    base["control_sentence"]["cells"] = DEMO_CELLS
    path.mkdir(parents=True, exist_ok=True)
    (path / "suite.yaml").write_text(yaml.safe_dump(base))
    return SuiteContext(SuiteConfig.load(path / "suite.yaml"))


@functools.cache
def demo_routing(gram: tuple[tuple[str, Any], ...], precision: str = "fp32") -> tuple[Any, dict[str, float]]:
    """Routing inputs (with their notes) and routing-coherence metrics of fewshot on HepG2 (254 knockdowns,
    H = 64) under these ``gram:`` settings and precision; computed once per test process."""
    from hypocheck.fixtures.routing_inputs import routing_arrays
    from hypocheck.models import ModelRef
    from hypocheck.probes.kinds import RoutingInputs
    from hypocheck.probes.routing import RoutingParams
    from hypocheck.registry import get_probe
    from tests.helpers_tiny import single_thread

    with single_thread():
        ctx = _demo_ctx(Path(tempfile.mkdtemp(prefix="hypocheck-sketch-")), dict(gram), precision)
        case = SimpleNamespace(axes={"model": "fewshot", "cell_line": "hepg2"}, model=ModelRef("fewshot"),
                               inputs=RoutingInputs(), params=RoutingParams(**DEMO_PARAMS), location=None)
        inputs = routing_arrays(ctx.artifacts, case)  # type: ignore[arg-type]
        result = get_probe("routing_coherence").run(inputs, params=RoutingParams(**DEMO_PARAMS),
                                                    rng=np.random.default_rng(0))
    return inputs, dict(result.metrics)


SKETCH_32 = (("method", "sketch"), ("directions", 32), ("seed", 0))


def test_demo_world_sketch_gives_the_exact_routing_verdicts() -> None:
    """On the demo world a 32-direction sketch (of 64) reaches the exact Gram's routing verdicts, and the
    case's note names k and the cosines' standard error."""
    exact_in, ex = demo_routing((("method", "exact"),))
    sketch_in, sk = demo_routing(SKETCH_32)
    assert exact_in.notes == ()
    assert len(sketch_in.notes) == 1 and "sketched with k=32 random directions (of 64)" in sketch_in.notes[0]
    assert "median SE of the Jacobian cosines" in sketch_in.notes[0]
    gram_ex, gram_sk = exact_in.jacobian_gram, sketch_in.jacobian_gram
    assert not np.allclose(gram_ex, gram_sk)  # really a sketch
    for key in ("pearson", "partial_pearson"):
        assert abs(ex[key] - sk[key]) < 0.05, (key, ex[key], sk[key])
    alpha = 0.05
    assert (ex["p_partial"] < alpha) == (sk["p_partial"] < alpha)
    assert (ex["p_pearson"] < alpha) == (sk["p_pearson"] < alpha)
    assert np.sign(ex["partial_pearson"]) == np.sign(sk["partial_pearson"]) and np.sign(ex["pearson"]) == np.sign(
        sk["pearson"])


def test_notes_of_prepared_inputs_reach_the_verdict(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """An input record's ``notes`` (e.g. the sketch's k and error) end up in the case's verdict record."""
    from tests.test_plugin_e2e import CLAIM, REPO_ROOT

    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    conftest = (Path(__file__).parent / "e2e_conftest.py").read_text()
    conftest += '''

from hypocheck.probes.kinds import SetEmbeddings


class NotedContext(TinyContext):
    def prepare(self, case):
        note = "Jacobian Gram sketched with k=7 random directions (of 16)"
        return SetEmbeddings(**super().prepare(case), notes=(note,))


def pytest_hypocheck_backend(config):
    return StaticBackend(VOCABULARY, NotedContext)
'''
    pytester.makeconftest(conftest)
    (pytester.path / "hypotheses").mkdir()
    (pytester.path / "hypotheses" / "claim1.yaml").write_text(CLAIM)
    result = pytester.runpytest_subprocess("hypotheses", "-p", "no:cacheprovider", "-k", "alpha")
    result.assert_outcomes(passed=1)
    summary = json.loads((pytester.path / "reports" / "summary.json").read_text())
    (case,) = summary["cases"]
    assert "Jacobian Gram sketched with k=7 random directions (of 16)" in case["notes"]


@pytest.mark.usefixtures("one_torch_thread")
def test_artifact_pilot_chunks_and_order_independence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``directions: auto`` on the tiny suite (3 knockdowns, H = 32; chunks of 8 here): a pilot chunk, then whole
    chunks up to the target; the chunks computed in reverse order reduce to the very same bits; the cache key
    holds the settings."""
    import yaml

    import hypocheck.fixtures.jacobian_artifacts as artifacts_module
    from hypocheck.fixtures.config import SuiteConfig
    from hypocheck.fixtures.context import SuiteContext
    from hypocheck.fixtures.jacobian_artifacts import GramSpec
    from tests.helpers_tiny import tiny_suite

    monkeypatch.setattr(artifacts_module, "GRAM_CHUNK_DIRECTIONS", 8)
    path = tiny_suite(tmp_path, cells=4, seed=1)
    cfg = yaml.safe_load(path.read_text())
    cfg["gram"] = {"method": "sketch", "directions": "auto", "target_error": 0.004, "seed": 3}
    path.write_text(yaml.safe_dump(cfg))
    ctx = SuiteContext(SuiteConfig.load(path))
    art = ctx.artifacts
    params, basis = art.jacobians.gram_spec_params("tiny", False)
    assert basis == 32 and params == {"method": "sketch", "precision": "fp32", "seed": 3, "directions": "auto",
                                      "target_error": 0.004}
    est = art.jacobians.jacobian_gram_estimate("tiny", "hepg2")
    k = int(est["directions"])
    assert est["method"] == "sketch" and k % 8 == 0 and 8 <= k <= 32
    assert est["median_cosine_se"] <= 0.004 * 1.5 or k == 32
    spec = GramSpec("sketch", k, 3, "fp32")
    sentence = ("random", None)
    chunks = [(a, min(a + 8, k)) for a in range(0, k, 8)]
    backwards = {c: art.jacobians.gram_chunk("tiny", "hepg2", False, sentence, spec, *c) for c in reversed(chunks)}
    again = estimate_gram(reduce_gram_shares([backwards[c] for c in chunks]), method="sketch", basis=32)
    assert np.array_equal(again.gram.numpy(), est["gram"])
    # exact on the same suite: the complete random basis gives the same Gram
    exact = art.jacobians.gram_chunk("tiny", "hepg2", False, sentence, GramSpec("exact", 32, 0, "fp32"), 0, 32)
    full = [art.jacobians.gram_chunk("tiny", "hepg2", False, sentence, GramSpec("sketch", 32, 3, "fp32"), a, a + 8)
            for a in range(0, 32, 8)]
    complete = estimate_gram(reduce_gram_shares(full), method="sketch", basis=32)
    torch.testing.assert_close(complete.gram, exact.total, rtol=1e-4, atol=1e-6 * exact.total.abs().max().item())
    with pytest.raises(ValueError, match="outside"):
        art.jacobians.gram_chunk("tiny", "hepg2", False, sentence, spec, 0, 40)
