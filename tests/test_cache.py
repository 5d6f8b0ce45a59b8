"""The shared artifact cache: computed once across processes, atomic, self-healing."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from hypocheck.cache import ArtifactCache, cache_key


def test_round_trip_and_key_sensitivity(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    calls: list[int] = []

    def compute() -> tuple[list[str], np.ndarray]:
        calls.append(1)
        return ["A", "B"], np.arange(6.0).reshape(2, 3)

    parts = {"artifact": "reps", "checkpoint": "abc", "seed": 1}
    _, arr = cache.get_or_compute(parts, compute)
    names2, arr2 = cache.get_or_compute(parts, compute)
    assert calls == [1] and names2 == ["A", "B"]
    np.testing.assert_array_equal(arr, arr2)
    assert cache_key(parts) != cache_key({**parts, "checkpoint": "abd"})
    assert cache_key(parts) != cache_key({**parts, "seed": 2})
    assert cache_key(parts) == cache_key(dict(reversed(list(parts.items()))))


def test_damaged_entry_is_recomputed(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    parts = {"artifact": "x"}
    cache.get_or_compute(parts, lambda: np.ones(1000))
    entry = cache.path(cache_key(parts))
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    value = cache.get_or_compute(parts, lambda: np.zeros(3))
    np.testing.assert_array_equal(value, np.zeros(3))


def _worker(root: str, counter: str) -> None:
    cache = ArtifactCache(root)

    def compute() -> np.ndarray:
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(0.3)
        return np.arange(10.0)

    cache.get_or_compute({"artifact": "shared"}, compute)


def test_computed_once_across_processes(tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "c"), str(counter))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert counter.read_text() == "x"


def _slow_writer(root: str) -> None:
    cache = ArtifactCache(root)

    def compute() -> np.ndarray:
        return np.random.default_rng(0).normal(size=3_000_000)

    original = cache._write

    def slow_write(target: Path, blob: bytes) -> None:
        time.sleep(30)  # killed here, mid-write
        original(target, blob)

    cache._write = slow_write  # type: ignore[method-assign]
    cache.get_or_compute({"artifact": "big"}, compute)


def test_sigkill_during_write_leaves_no_corrupt_entry(tmp_path: Path) -> None:
    root = tmp_path / "c"
    proc = mp.get_context("spawn").Process(target=_slow_writer, args=(str(root),))
    proc.start()
    deadline = time.time() + 30
    while time.time() < deadline and not list(root.glob("*/*.lock")):
        time.sleep(0.1)
    time.sleep(1.5)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert not list(root.glob("*/*.pt")), "no entry may exist after a killed write"
    cache = ArtifactCache(root)
    value = cache.get_or_compute({"artifact": "big"}, lambda: np.random.default_rng(0).normal(size=3_000_000))
    again = ArtifactCache(root).get_or_compute({"artifact": "big"}, lambda: pytest.fail("must be cached"))
    np.testing.assert_array_equal(value, again)


def test_disabled_and_clear(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "c", enabled=False)
    assert cache.get_or_compute({"a": 1}, lambda: 5) == 5
    assert not (tmp_path / "c").exists()
    cache = ArtifactCache(tmp_path / "c")
    cache.get_or_compute({"a": 1}, lambda: np.ones(2))
    cache.clear()
    assert not (tmp_path / "c").exists()
