"""Tiny real arc-state ST models, run dirs and AnnData files for fast tests.

Usage::

    run = tiny_run_dir(tmp_path / "run", bidirectional=True)
    adapter = STAdapter.from_run_dir(run)
    h5ad = tiny_h5ad(tmp_path / "data.h5ad")
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hypocheck.fixtures.grams import one_thread as single_thread  # noqa: F401  (re-exported for tests)
from hypocheck.fixtures.st_rundir import CONTROL_LABEL, STArchitecture, build_st_model, save_run_dir

N_GENES = 48
N_PERTS = 12
HIDDEN = 32
LAYERS = 2
CELL_SET_LEN = 8
GENE_NAMES = [f"GENE{i:02d}" for i in range(N_GENES)]
PERT_NAMES = [CONTROL_LABEL, *(f"KD{i:02d}" for i in range(N_PERTS - 1))]
BATCH_NAMES = ["batch_a", "batch_b"]
CELL_LINES = ["hepg2", "jurkat"]


def tiny_arch(bidirectional: bool = True) -> STArchitecture:
    """Hidden 32, 2 layers, 48 genes, 12 perturbations, sentences of 8 cells."""
    return STArchitecture(
        n_genes=N_GENES,
        n_perts=N_PERTS,
        hidden=HIDDEN,
        layers=LAYERS,
        heads=4,
        intermediate=64,
        cell_set_len=CELL_SET_LEN,
        n_batches=len(BATCH_NAMES),
        bidirectional=bidirectional,
    )


def tiny_model(bidirectional: bool = True, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised tiny ST model, with output-layer biases lifted so the ReLU rarely clips."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attribute 'loss_fn' is an instance")
        model = build_st_model(tiny_arch(bidirectional), seed=seed)
    with torch.no_grad():
        head: Any = model.project_out
        last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias.add_(1.0)
    return model


def tiny_run_dir(path: Path, bidirectional: bool = True, seed: int = 0) -> Path:
    """Write a tiny model as an arc-state run directory and return its path."""
    model = tiny_model(bidirectional, seed)
    return save_run_dir(model, path, GENE_NAMES, PERT_NAMES, BATCH_NAMES, CELL_LINES)


def control_sentence(n_cells: int = CELL_SET_LEN, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random non-negative control sentence ``(S, G)`` and its batch indices ``(S,)``."""
    gen = torch.Generator().manual_seed(seed)
    basal = torch.rand(n_cells, N_GENES, generator=gen, dtype=torch.float64).to(dtype) * 2.0
    batch = torch.randint(0, len(BATCH_NAMES), (n_cells,), generator=gen)
    return basal, batch


def tiny_adata(n_per_group: int = 6, seed: int = 0, genes: list[str] | None = None,
               knockdowns: list[str] | None = None):
    """A small AnnData: obs gene / cell_line / batch, obsm X_hvg, var_names = genes; ``n_per_group`` cells of each
    knockdown (default KD00–KD02) and twice as many controls per line."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    genes = genes or GENE_NAMES
    rows = []
    for line in CELL_LINES:
        for kd in [CONTROL_LABEL, CONTROL_LABEL, *(knockdowns or ["KD00", "KD01", "KD02"])]:
            rows += [(kd, line, BATCH_NAMES[i % 2]) for i in range(n_per_group)]
    obs = pd.DataFrame(rows, columns=["gene", "cell_line", "batch"])
    obs.index = [f"cell{i}" for i in range(len(obs))]
    x = rng.gamma(2.0, 1.0, size=(len(obs), len(genes))).astype(np.float32)
    adata = ad.AnnData(X=np.zeros((len(obs), len(genes)), dtype=np.float32), obs=obs)
    adata.var_names = genes
    adata.obsm["X_hvg"] = x
    return adata


def tiny_h5ad(path: Path, **kwargs) -> Path:
    """Write :func:`tiny_adata` to ``path`` and return it."""
    tiny_adata(**kwargs).write_h5ad(path)
    return path


def tiny_suite(root: Path, cells: int, seed: int) -> Path:
    """A suite under ``root``: the tiny run dir as model 'tiny', a tiny h5ad, both lines; its suite.yaml path."""
    import yaml

    tiny_run_dir(root / "runs" / "tiny")
    (root / "data").mkdir()
    tiny_h5ad(root / "data" / "tiny.h5ad", n_per_group=12)
    cfg = {"models": {"tiny": {"run_dir": "runs/tiny"}}, "data": {"path": "data/tiny.h5ad"},
           "cell_lines": ["hepg2", "jurkat"], "device": "cpu", "control_sentence": {"cells": cells, "seed": seed}}
    (root / "suite.yaml").write_text(yaml.safe_dump(cfg))
    return root / "suite.yaml"
