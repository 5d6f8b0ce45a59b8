"""Shared test configuration: pytester for end-to-end runs of the plugin (always in a subprocess:
torch cannot be imported twice in one process, which pytester's in-process mode would do)."""

from __future__ import annotations

pytest_plugins = ["pytester"]
