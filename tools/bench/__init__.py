"""Benchmarks: run by hand (``python -m tools.tools.bench.<name>``), never by the test suite."""
