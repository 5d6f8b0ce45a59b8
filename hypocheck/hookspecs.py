"""Hooks a project may implement (in a conftest.py or a plugin) to change what the engine uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .backend import Backend


@pytest.hookspec(firstresult=True)
def pytest_hypocheck_backend(config: pytest.Config) -> Backend | None:
    """The backend that gives case axes their valid values and builds probe inputs.

    The plugin's own implementation (called last) reads the suite config file with the backend named by the
    ini option ``hypocheck_backend``; a project that brings its own models and data some other way returns
    its own object here (see ``hypocheck.backend.Backend``).
    """
