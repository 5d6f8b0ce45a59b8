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

def _compute_in_processes(root: str, counter: Path, n: int) -> None:
    """``n`` spawned processes ask ``root`` for one artifact at once: it is computed exactly once."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(root, str(counter))) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert counter.read_text() == "x"



def test_computed_once_across_processes(tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    _compute_in_processes(str(tmp_path / "c"), counter, 4)


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


# ------------------------------------------------------------------ fsspec URLs (object stores, shared storage)
def _url_cache(tag: str) -> ArtifactCache:
    import fsspec

    fsspec.filesystem("memory").store.clear()
    return ArtifactCache(f"memory://hypocheck-{tag}", stale_after=5.0)


def test_url_cache_round_trip_publishes_atomically() -> None:
    import fsspec

    cache = _url_cache("rt")
    fs = fsspec.filesystem("memory")
    seen: list[list[str]] = []
    original = fs.mv

    def watching_mv(src: str, dst: str, **kwargs: object) -> None:
        seen.append(sorted(fs.find("/hypocheck-rt")))  # what a reader could see just before the move
        original(src, dst, **kwargs)

    fs.mv = watching_mv  # type: ignore[method-assign]
    try:
        value = cache.get_or_compute({"artifact": "a"}, lambda: (["x"], np.arange(5.0)))
    finally:
        del fs.mv
    key = cache_key({"artifact": "a"})
    final = f"/hypocheck-rt/{key[:2]}/{key}.pt"
    assert seen and final not in seen[0] and any(p.endswith(".tmp") for p in seen[0])  # staged under a temp name
    assert fs.exists(final) and not fs.exists(final + ".lock")
    assert cache.check() == []  # no temporary object left, checksum valid
    names, arr = cache.get_or_compute({"artifact": "a"}, lambda: pytest.fail("must be cached"))
    assert names == value[0] == ["x"]
    np.testing.assert_array_equal(arr, np.arange(5.0))
    assert cache.computed == [key]
    assert fs.exists(f"/hypocheck-rt/index/{key}.json")


def test_url_cache_rejects_a_damaged_entry() -> None:
    import fsspec

    cache = _url_cache("dmg")
    fs = fsspec.filesystem("memory")
    cache.get_or_compute({"artifact": "b"}, lambda: np.ones(1000))
    key = cache_key({"artifact": "b"})
    entry = f"/hypocheck-dmg/{key[:2]}/{key}.pt"
    blob = bytearray(fs.cat_file(entry))
    blob[-10] ^= 0xFF  # one flipped byte in the payload
    fs.pipe_file(entry, bytes(blob))
    assert any("checksum" in p for p in cache.check())
    value = cache.get_or_compute({"artifact": "b"}, lambda: np.zeros(3))
    np.testing.assert_array_equal(value, np.zeros(3))
    assert cache.check() == []


def test_url_cache_computes_once_across_threads() -> None:
    import threading

    cache = _url_cache("threads")
    calls: list[int] = []
    results: list[np.ndarray] = []

    def compute() -> np.ndarray:
        calls.append(1)
        time.sleep(0.3)
        return np.arange(4.0)

    def ask() -> None:
        results.append(ArtifactCache(cache.location).get_or_compute({"artifact": "t"}, compute))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert calls == [1] and len(results) == 4
    assert all(np.array_equal(r, np.arange(4.0)) for r in results)


def test_file_url_cache_computes_once_across_processes(tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    url = f"file://{tmp_path / 'c'}"
    _compute_in_processes(url, counter, 3)
    assert ArtifactCache(url).check() == []
    assert not list((tmp_path / "c").rglob("*.lock"))


def test_stale_claim_is_taken_over() -> None:
    import json as _json

    import fsspec

    cache = ArtifactCache("memory://hypocheck-stale", stale_after=0.5)
    fs = fsspec.filesystem("memory")
    key = cache_key({"artifact": "s"})
    lock = f"/hypocheck-stale/{key[:2]}/{key}.pt.lock"
    fs.pipe_file(lock, _json.dumps({"owner": "dead", "heartbeat": time.time() - 60}).encode())  # a crashed holder
    start = time.monotonic()
    assert cache.get_or_compute({"artifact": "s"}, lambda: 7) == 7
    assert time.monotonic() - start < 5 and not fs.exists(lock)
