"""Hooks a project implements (in its conftest.py) to tell the engine its vocabulary."""

from __future__ import annotations

from collections.abc import Sequence

import pytest


@pytest.hookspec(firstresult=True)
def pytest_hypocheck_vocabulary(config: pytest.Config) -> dict[str, Sequence[str]] | None:
    """Valid values of every case axis, e.g. ``{"model": ["fewshot", "zeroshot"], "gene_set": [...]}``.

    Called at collection time, so that an unknown model, cell line or gene set
    in a hypothesis file is reported with its file and line before anything runs.
    """
