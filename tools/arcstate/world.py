"""A small Perturb-seq world for training arc-state models with its own CLI in tests (seconds, not minutes).

Two cell lines, each with two batches; knockdowns in five programs named so that the default gene sets find
them (ribosome, mitoribosome, OXPHOS, proteasome, splicing) plus knockdowns with no effect. A program moves a
seeded block of genes by a line-specific amount. ``X`` holds every gene; ``obsm['X_hvg']`` the first
``n_hvg`` of them (``var['highly_variable']`` and ``uns['hvg_names']`` name them), as arc-state's data
loader expects.

Usage::

    write_tiny_world("tiny.h5ad", seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONTROL = "non-targeting"
LINES = ("hepg2", "jurkat")
PROGRAMS: dict[str, tuple[str, ...]] = {
    "ribosome": ("RPL3", "RPL4", "RPL5", "RPS3", "RPS5", "RPS6"),
    "mitoribosome": ("MRPL10", "MRPL11", "MRPL12", "MRPS5", "MRPS6", "MRPS7"),
    "oxphos": ("NDUFA1", "NDUFA2", "NDUFA4", "NDUFB8", "NDUFS1", "NDUFS2"),
    "proteasome": ("PSMA1", "PSMA2", "PSMB3", "PSMB6", "PSMC1", "PSMD1"),
    "splicing": ("PRPF3", "PRPF4", "PRPF6", "PRPF8", "PRPF18", "PRPF31"),
}
NO_EFFECT = ("OR5A1", "OR7A5", "OTOF", "TYR", "HBB", "MB")


@dataclass(frozen=True)
class TinyWorld:
    """Sizes of the world (the defaults train in seconds)."""

    n_genes: int = 32
    n_hvg: int = 24
    cells_per_knockdown: int = 8
    controls_per_line: int = 96


def knockdowns() -> list[str]:
    """Every knockdown of the world, programs first."""
    return [kd for members in PROGRAMS.values() for kd in members] + list(NO_EFFECT)


def generate(seed: int = 0, sizes: TinyWorld = TinyWorld()) -> Any:
    """The world as an AnnData (deterministic for a seed)."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    genes = [f"G{i:02d}" for i in range(sizes.n_genes)]
    base = {line: rng.uniform(1.0, 3.0, sizes.n_genes) for line in LINES}
    loading = {p: (rng.random(sizes.n_genes) < 0.3) * rng.uniform(0.5, 1.5, sizes.n_genes) for p in PROGRAMS}
    effect = {p: {line: rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.6) for line in LINES} for p in PROGRAMS}
    program_of = {kd: p for p, members in PROGRAMS.items() for kd in members}
    rows: list[np.ndarray] = []
    obs: list[tuple[str, str, str]] = []
    for line in LINES:
        groups = [(CONTROL, sizes.controls_per_line)] + [(kd, sizes.cells_per_knockdown) for kd in knockdowns()]
        for kd, n in groups:
            shift = np.zeros(sizes.n_genes)
            if kd in program_of:
                p = program_of[kd]
                shift = effect[p][line] * loading[p] * rng.uniform(0.7, 1.3)
            x = base[line] + shift + rng.normal(0.0, 0.3, (n, sizes.n_genes))
            rows.append(np.clip(x, 0.0, None))
            obs += [(kd, line, f"{line}_b{i % 2}") for i in range(n)]
    x_all = np.concatenate(rows).astype(np.float32)
    frame = pd.DataFrame(obs, columns=["gene", "cell_line", "batch"],
                         index=[f"cell{i:05d}" for i in range(len(obs))])
    for key in frame:
        frame[key] = frame[key].astype("category")
    adata = ad.AnnData(X=x_all, obs=frame, var=pd.DataFrame(index=genes))
    adata.var["highly_variable"] = np.arange(sizes.n_genes) < sizes.n_hvg
    adata.obsm["X_hvg"] = np.ascontiguousarray(x_all[:, : sizes.n_hvg])
    adata.uns["hvg_names"] = np.array(genes[: sizes.n_hvg], dtype=object)
    return adata


def write_tiny_world(path: str | Path, seed: int = 0, sizes: TinyWorld = TinyWorld()) -> Path:
    """Write :func:`generate`'s world to ``path`` (an ``.h5ad``)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    generate(seed, sizes).write_h5ad(out)
    return out


def dense_features(dim: int = 12, seed: int = 0) -> dict[str, Any]:
    """Perturbation name → a dense feature vector (as an ESM2 embedding file holds), the control included."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(dim, generator=gen) for name in [CONTROL, *knockdowns()]}
