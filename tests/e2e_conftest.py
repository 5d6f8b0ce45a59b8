"""conftest.py used by the end-to-end plugin tests: a tiny real arc-state ST model with planted pert geometry.

Knockdowns K0..K39 plus the control; the pert_encoder's columns for 'alpha'
(K0..K9) share one direction (a planted pathway), 'beta' (K10..K19) are
unrelated random columns, and 'tiny' has two members (too few to decide).
"""

import numpy as np
import torch

from hypocheck.backend import StaticBackend
from hypocheck.fixtures.st_rundir import STArchitecture, build_st_model

KNOCKDOWNS = [f"K{i}" for i in range(40)]
SETS = {"alpha": list(range(10)), "beta": list(range(10, 20)), "tiny": [20, 21]}


class TinyContext:
    def __init__(self) -> None:
        self.model = build_st_model(STArchitecture(n_genes=24, n_perts=41, hidden=16, layers=1, heads=2,
                                                   intermediate=32, cell_set_len=4), seed=0)
        weight = self.model.pert_encoder[0].weight  # (hidden, perts): column k is knockdown k's direction
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            weight.copy_(torch.randn(weight.shape, generator=g))
            shared = 3 * torch.randn(weight.shape[0], generator=g)
            for k in SETS["alpha"]:
                weight[:, k] += shared
        self.model.eval()

    def prepare(self, case):
        with torch.no_grad():
            onehots = torch.eye(41)[: len(KNOCKDOWNS)]
            embeddings = self.model.encode_perturbation(onehots).numpy()
        magnitude = np.random.default_rng(2).uniform(1, 2, size=len(KNOCKDOWNS))  # unrelated to the sets
        return {"embeddings": embeddings, "magnitude": magnitude, "members": np.array(SETS[case.axes["gene_set"]])}

    def environment(self):
        return {"device": "cpu", "models": {"tiny": "planted-seed-1"}}


VOCABULARY = {"model": ["tiny"], "gene_set": sorted(SETS)}


def pytest_hypocheck_backend(config):
    return StaticBackend(VOCABULARY, TinyContext)
