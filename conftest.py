"""Wires the hypocheck engine to this project's models, data and probes.

The suite configuration (models, data, SAE, cell lines, gene sets) is read
from ``suite.yaml`` at the repository root, or the file given with
``--suite-config`` or the ``HYPOCHECK_SUITE`` environment variable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

import fixtures.inputs  # noqa: F401  (registers the input builders)
import probes  # noqa: F401  (registers the probes)
from fixtures.config import SuiteConfig
from fixtures.context import SuiteContext
from fixtures.data import SAMPLINGS
from fixtures.routing_inputs import CELL_COUNTS  # (importing it registers the Jacobian input builders)
from hypocheck.cache import ArtifactCache

ROOT = Path(__file__).resolve().parent
_config_key = pytest.StashKey[SuiteConfig]()


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per process by default (HYPOCHECK_THREADS to change): xdist workers do not fight
    over cores, and CPU reductions run in the same order for -n 0 and -n auto, so the numbers agree."""
    torch.set_num_threads(int(os.environ.get("HYPOCHECK_THREADS", "1")))
    if config.getoption("--clear-artifact-cache", False) and not hasattr(config, "workerinput"):
        ArtifactCache(config.getoption("--artifact-cache")).clear()  # controller only, before workers start


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hypocheck")
    group.addoption("--suite-config", default=None, metavar="FILE",
                    help="suite YAML naming models, data and SAE (default: $HYPOCHECK_SUITE or suite.yaml)")
    group.addoption("--artifact-cache", default=str(ROOT / ".hypocheck-cache"), metavar="DIR",
                    help="shared cache of heavy artifacts (pert representations, ΔY, activations, Jacobians)")
    group.addoption("--no-artifact-cache", action="store_true", help="compute everything afresh, store nothing")
    group.addoption("--clear-artifact-cache", action="store_true", help="drop the artifact cache before the run")


def suite_config(config: pytest.Config) -> SuiteConfig:
    """The suite configuration, read once per process."""
    if _config_key not in config.stash:
        chosen = config.getoption("--suite-config") or os.environ.get("HYPOCHECK_SUITE") or ROOT / "suite.yaml"
        config.stash[_config_key] = SuiteConfig.load(chosen)
    return config.stash[_config_key]


def pytest_hypocheck_vocabulary(config: pytest.Config) -> dict[str, Sequence[str]]:
    suite = suite_config(config)
    return {
        "model": list(suite.models),
        "cell_line": list(suite.cell_lines),
        "gene_set": list(suite.gene_set_definitions()),
        "sampling": list(SAMPLINGS),
        "cells": [str(n) for n in CELL_COUNTS],
    }


@pytest.fixture(scope="session")
def hypocheck_context(pytestconfig: pytest.Config) -> SuiteContext:
    """Models, data and SAE of the configured suite, loaded lazily and shared by every case."""
    cache = ArtifactCache(pytestconfig.getoption("--artifact-cache"),
                          enabled=not pytestconfig.getoption("--no-artifact-cache"))
    shown = pytestconfig.getoption("capture") == "no"  # progress bars of long Jacobian runs under -s
    return SuiteContext(suite_config(pytestconfig), cache, progress=shown)
