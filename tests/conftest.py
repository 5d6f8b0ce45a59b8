"""Shared test configuration: pytester for end-to-end runs of the plugin (always in a subprocess:
torch cannot be imported twice in one process, which pytester's in-process mode would do), and the
property-based fuzzing profiles: ``make test`` replays a fixed, derandomised set of examples so that CI
is reproducible; ``HYPOTHESIS_PROFILE=explore`` draws fresh random examples, many more of them, to hunt
for new failures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

settings.register_profile("reproducible", max_examples=400, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", max_examples=20_000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a whole module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    from tests.helpers_tiny import single_thread  # imported here: it brings torch and arc-state

    with single_thread():
        yield
