"""Jacobian precision: tf32 and bf16 (``precision:`` in the suite config) against fp32.

On a CPU TF32 does not exist, so ``tf32`` must reproduce fp32 bit for bit; ``bf16`` runs the differentiated
function under a bfloat16 autocast, which forward-mode AD supports on the CPU, and the Gram still accumulates in
float64. Measured on the demo world (fewshot, HepG2, 254 knockdowns, 8 cells, the same 32 sketch directions, on a
CPU): bf16 moves the Mantel r by 1.8e-4 and the partial r by 7.9e-5, the Gram cosines by at most 2.5e-3 (median
1.7e-4); the assertions allow ``BF16_R_TOLERANCE`` (the 1e-3 target on r) and ``BF16_COSINE_TOLERANCE``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hypocheck.errors import ConfigError, ProbeError
from hypocheck.fixtures.jacobians import pert_jacobians
from hypocheck.fixtures.precision import matmul_precision, with_precision
from tests.test_sketch import SKETCH_32, demo_routing

BF16_R_TOLERANCE = 1e-3
"""Largest |Δr| (Mantel pearson, partial pearson) between bf16 and fp32 routing statistics on the demo world."""
BF16_COSINE_TOLERANCE = 1e-2
"""Largest |Δ cosine| of the Jacobian Gram between bf16 and fp32 on the demo world."""


def _cosine(gram: np.ndarray) -> np.ndarray:
    n = np.sqrt(np.diag(gram))
    return gram / np.outer(n, n)


def test_tf32_scope_is_restored_and_is_fp32_on_cpu() -> None:
    before = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)
    with matmul_precision("tf32", "cpu"):
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32
    assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32) == before
    with pytest.raises(RuntimeError), matmul_precision("tf32", "cpu"):
        raise RuntimeError("boom")
    assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32) == before
    with pytest.raises(ProbeError, match="unknown precision 'fp16'"), matmul_precision("fp16", "cpu"):
        pass
    with pytest.raises(ProbeError, match="valid: fp32, tf32, bf16"):
        with_precision(torch.sin, "fp64", "cpu")


def test_bf16_autocast_under_forward_mode_ad() -> None:
    """A matmul-heavy map: bf16 Jacobians are float32 tensors within bfloat16's ~3 significant digits."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 30, generator=gen), torch.randn(30, 20, generator=gen)
    reps = torch.randn(3, 20, generator=gen)

    def f(r: torch.Tensor) -> torch.Tensor:
        return torch.tanh(a @ torch.tanh(b @ r))

    exact = pert_jacobians(f, reps, progress=False)
    low = pert_jacobians(with_precision(f, "bf16", "cpu"), reps, progress=False)
    assert low.dtype == torch.float32
    rel = ((low - exact).abs().max() / exact.abs().max()).item()
    assert 1e-4 < rel < 0.1, rel  # really bfloat16 (not silently fp32), and close
    assert with_precision(f, "fp32", "cpu") is f and with_precision(f, "tf32", "cpu") is f


def test_demo_world_routing_under_tf32_and_bf16_matches_fp32() -> None:
    base_in, base = demo_routing(SKETCH_32, "fp32")
    tf_in, _tf = demo_routing(SKETCH_32, "tf32")
    np.testing.assert_array_equal(tf_in.jacobian_gram, base_in.jacobian_gram)  # a CPU has no TF32
    assert any("no effect on a CPU" in n for n in tf_in.notes)
    bf_in, bf = demo_routing(SKETCH_32, "bf16")
    assert any("bfloat16 autocast" in n for n in bf_in.notes)
    cos_diff = np.abs(_cosine(bf_in.jacobian_gram) - _cosine(base_in.jacobian_gram)).max()
    assert 0 < cos_diff < BF16_COSINE_TOLERANCE, cos_diff
    for key in ("pearson", "partial_pearson"):
        assert abs(bf[key] - base[key]) <= BF16_R_TOLERANCE, (key, bf[key], base[key])


def test_bad_precision_and_gram_settings_name_file_line_and_valid_values(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    import yaml

    from hypocheck.fixtures.config import SuiteConfig

    root = Path(str(tmp_path))
    good = {"models": {"m": {"run_dir": str(root)}}, "data": {"path": str(root / "d.h5ad")}, "cell_lines": ["a"]}
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(good))
    cfg = SuiteConfig.load(path)
    assert cfg.precision == "fp32" and cfg.gram.method == "auto" and cfg.gram.directions == "auto"
    assert cfg.gram.target_error == 0.02 and cfg.gram.seed == 0
    assert cfg.gram.method_for("cpu", 254 * 64) == "exact" and cfg.gram.method_for("cpu", 2023 * 328) == "sketch"
    assert cfg.gram.method_for("cuda", 2023 * 328) == "exact"
    for bad, match in (({"precision": "fp16"}, r"'fp32', 'tf32' or 'bf16'"),
                       ({"gram": {"method": "fast"}}, r"'auto', 'exact' or 'sketch'"),
                       ({"gram": {"directions": 0}}, r"directions"),
                       ({"gram": {"target_error": 0}}, r"greater than 0"),
                       ({"gram": {"seeds": 1}}, r"unknown key 'seeds'")):
        path.write_text(yaml.safe_dump({**good, **bad}))
        with pytest.raises(ConfigError, match=match) as info:
            SuiteConfig.load(path)
        assert "suite.yaml" in str(info.value) and ":" in str(info.value)
