"""The suite on a Ray cluster gives the numbers of a local run, survives a lost worker, and leaves a sound cache.

A local cluster (a head with 2 CPUs: up to two worker processes) is started for this module. The demo routing
and knockout cases of one model run twice through the installed plugin: locally, then with ``--ray ADDRESS``,
where ΔY, the Jacobians and the knockout profiles are computed as chunk tasks on the cluster. The first task's
worker process is SIGKILLed while it runs (each task logs its PID when it starts); Ray reruns the task on another
worker. The Ray run must give the local run's verdicts and metrics exactly, and leave no temporary file and no
entry with a bad checksum in the cache.

The Ray run starts from a copy of the local run's cache with every ΔY, knockout, Jacobian and Gram entry
removed, so all of those are recomputed on the cluster (the Jacobians behind the Grams in knockdown chunks).
The same test first maps plain functions over the cluster from this process (one cluster per process that runs
it: under xdist, tests of one module may land on different workers). Plus cheap checks of the executor's errors
and settings, with no cluster.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hypocheck.cache import ArtifactCache
from hypocheck.errors import ConfigError
from hypocheck.executor import LocalExecutor, RayExecutor, make_executor

# Ray is imported only once the cluster fixture has set the authentication environment (Ray reads it on import)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs pip install 'hypocheck[ray]'")

ROOT = Path(__file__).resolve().parents[1]
SELECTION = ["hypotheses/demo/nb04_knockout.yaml", "hypotheses/demo/nb05_routing.yaml",
             "hypotheses/paper/claim4_knockout_transfer.yaml", "hypotheses/paper/claim5_routing_backbone.yaml",
             "-k", "fewshot and (knockout or demo_routing_coherence or routing_coherence_positive) "
                   "and not top15 and not onehot and not no_knockout"]
RAY_ARTIFACTS = {"delta_y", "knockout_profiles", "pert_jacobians", "jacobian_gram"}
"""What the Ray run recomputes: ΔY, knockouts and the Jacobians behind the Grams, as chunk tasks."""

CLUSTER = """
import signal, sys, ray
ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20,
               _temp_dir=sys.argv[1], _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
print(ctx.address_info["gcs_address"], flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sys.stdin.read()
ray.shutdown()
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster (head, 2 CPUs) for this module; its GCS address. Stopped at the end.

    Its own authentication token (Ray ≥ 2.5x turns token authentication on for a new cluster) is set in this
    process's environment, which the drivers started by the tests inherit, so no token file of the user's is
    read or written."""
    temp = tempfile.mkdtemp(prefix="hcray")  # short: Ray's socket paths must fit in 107 characters
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER, temp], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    try:
        assert address, "the local Ray cluster did not start"
        yield address
    finally:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(temp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(args: list[str], reports: Path, cache: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "pytest", *SELECTION, "-n", "0", "-q", "-p", "no:randomly",
               "--artifact-cache", str(cache), "--hypocheck-reports", str(reports), *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _cases(reports: Path) -> dict[str, dict[str, Any]]:
    summary = json.loads((reports / "summary.json").read_text())
    return {c["id"]: {"verdict": c["verdict"], "metrics": c["metrics"], "p_adj": c.get("p_adj")}
            for c in summary["cases"]}


def _log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _entries(cache: Path) -> dict[str, str]:
    """Cache key → artifact name, from the cache's index (one line per computation)."""
    return {r["key"]: r["artifact"] for r in map(json.loads, (cache / "index.jsonl").read_text().splitlines())}


def _check_executors_map_in_item_order(cluster: str) -> None:
    """Both executors return results in item order; a task's own error comes back as it was raised."""
    # functions the workers can import (this test module is not importable there)
    assert LocalExecutor().map(math.factorial, [3, 1, 2]) == [6, 1, 2]
    executor = RayExecutor(cluster, num_cpus=0.5, max_retries=1)
    assert executor.map(math.factorial, list(range(8))) == [math.factorial(i) for i in range(8)]
    with pytest.raises(ValueError, match="math domain error") as info:  # the task's own error, not retried
        executor.map(math.sqrt, [4.0, -1.0])
    assert type(info.value) is ValueError  # as raised there, not wrapped in Ray's error type


def test_ray_run_matches_local_run_and_survives_a_killed_worker(cluster: str, tmp_path: Path) -> None:
    _check_executors_map_in_item_order(cluster)  # here, not in a test of its own: one cluster per process
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYPOCHECK_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("HYPOCHECK_TASK_LOG", None)
    local_cache, ray_cache = tmp_path / "local-cache", tmp_path / "ray-cache"
    local = _run([], tmp_path / "local", local_cache, env)
    out, _ = local.communicate(timeout=600)
    assert local.returncode in (0, 1), out[-3000:]
    expected = _cases(tmp_path / "local")
    assert len(expected) == 4, sorted(expected)
    assert {"demo_routing_coherence", "demo_knockout_shared_regulators"} <= {k.split("::")[1].split("[")[0]
                                                                            for k in expected}

    # the Ray run's cache: the local one less every ΔY and knockout entry (those are computed on the cluster)
    shutil.copytree(local_cache, ray_cache)
    dropped = [key for key, name in _entries(local_cache).items() if name in RAY_ARTIFACTS]
    assert dropped
    for key in dropped:
        (ray_cache / key[:2] / f"{key}.pt").unlink()

    log = tmp_path / "tasks.jsonl"
    run = _run(["--ray", cluster], tmp_path / "ray", ray_cache, {**env, "HYPOCHECK_TASK_LOG": str(log)})
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and run.poll() is None and time.monotonic() < deadline:
        starts = [r for r in _log(log) if r["event"] == "start"]
        if starts:
            killed = starts[0]
            os.kill(killed["pid"], signal.SIGKILL)  # the worker process dies mid-task
        time.sleep(0.05)
    out, _ = run.communicate(timeout=600)
    assert run.returncode in (0, 1), out[-3000:]
    assert killed is not None, "no chunk task ran on the cluster"

    records = _log(log)
    chunk = (killed["method"], killed["args"])
    assert not any(r["event"] == "end" and r["pid"] == killed["pid"] and (r["method"], r["args"]) == chunk
                   for r in records), "the killed task must not have finished"
    assert any(r["event"] == "end" and r["pid"] != killed["pid"] and (r["method"], r["args"]) == chunk
               for r in records), "Ray must have rerun the killed task on another worker"
    assert {r["method"] for r in records} == {"delta_y_chunk", "knockout_chunk", "jacobian_chunk"}, out[-3000:]

    assert _cases(tmp_path / "ray") == expected  # same verdicts, metrics and adjusted p, exactly
    before = len((local_cache / "index.jsonl").read_text().splitlines())
    recomputed = [json.loads(line) for line in (ray_cache / "index.jsonl").read_text().splitlines()[before:]]
    assert sorted(r["key"] for r in recomputed) == sorted(dropped)  # exactly the dropped entries, once each
    assert ArtifactCache(ray_cache).check() == []  # no temporary file left, every entry's checksum holds
    assert not list(ray_cache.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------- executors
def test_unreachable_cluster_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []

    def unreachable(address: str, **_: Any) -> None:
        attempts.append(address)
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}")

    # a stand-in for the ray module: the real one is imported only after the cluster fixture set its environment
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False, init=unreachable))
    executor = RayExecutor("127.0.0.1:9")
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"cannot reach a Ray cluster at '127.0.0.1:9'(.|\n)*ray start"):
            executor.map(math.factorial, [1])
    assert attempts == ["127.0.0.1:9"]  # one connection attempt, not one per artifact


@pytest.mark.parametrize(("setting", "message"), [
    ("{dask: {}}", "unknown key 'dask'"),
    ("{ray: {num_gpu: 1}}", "did you mean 'num_gpus'"),
    ("{ray: {num_gpus: -1}}", "greater than or equal to 0"),
])
def test_bad_executor_settings_name_the_key(tmp_path: Path, setting: str, message: str) -> None:
    from hypocheck.fixtures.config import SuiteConfig

    path = tmp_path / "suite.yaml"
    path.write_text(f"models: {{m: {{run_dir: run}}}}\ndata: {{path: d.h5ad}}\ncell_lines: [a]\nexecutor: {setting}\n")
    with pytest.raises(ConfigError, match=message) as info:
        SuiteConfig.load(path)
    assert "suite.yaml:4" in str(info.value)


def test_executor_settings() -> None:
    from hypocheck.fixtures.config import ExecutorConfig, RayConfig

    assert isinstance(make_executor(None), LocalExecutor)
    assert ExecutorConfig().spec() is None
    spec = ExecutorConfig(ray=RayConfig(num_gpus=1, max_retries=5)).spec()
    executor = make_executor(spec)
    assert isinstance(executor, RayExecutor) and executor.address == "auto"
    assert executor.resources.num_gpus == 1 and executor.max_retries == 5
    on_command_line = make_executor(ExecutorConfig().spec("10.0.0.1:6379"))
    assert isinstance(on_command_line, RayExecutor) and on_command_line.address == "10.0.0.1:6379"
    with pytest.raises(ConfigError, match="unknown executor"):
        make_executor({"dask": {}})
    with pytest.raises(ConfigError, match="num_gpu"):
        make_executor({"ray": {"num_gpu": 1}})


# ------------------------------------------------------------------------------------ chunking of artifacts
class _RecordingExecutor(LocalExecutor):
    """In-process, in reverse (as a cluster may finish them), recording what it was handed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []

    def map(self, fn: Any, items: Any, *, resources: Any = None, label: str = "chunks") -> list[Any]:
        self.calls.append((label, list(items)))
        results = {i: fn(item) for i, item in reversed(list(enumerate(items)))}
        return [results[i] for i in range(len(items))]


def test_artifacts_are_fixed_chunks_reduced_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from hypocheck.fixtures import knockouts, outputs
    from hypocheck.fixtures.config import SuiteConfig
    from hypocheck.fixtures.context import SuiteContext
    from hypocheck.fixtures.store import chunk_ranges
    from tests.helpers_tiny import single_thread, tiny_suite

    assert chunk_ranges(7, 3) == [(0, 3), (3, 6), (6, 7)] and chunk_ranges(0, 3) == []
    with single_thread():
        config = SuiteConfig.load(tiny_suite(tmp_path, cells=8, seed=3))
        whole = SuiteContext(config).artifacts  # one chunk: the tiny model has fewer than 64 knockdowns
        n_kds = len(whole.suite.knockdowns("tiny"))
        genes = whole.suite.model("tiny").gene_names[:5]
        dy, ko = whole.outputs.delta_y("tiny", "hepg2"), whole.knockouts.knockout_profiles("tiny", "hepg2", genes)
        monkeypatch.setattr(outputs, "KD_CHUNK", 2)
        monkeypatch.setattr(knockouts, "GENE_CHUNK", 2)
        executor = _RecordingExecutor()
        chunked = SuiteContext(config, executor=executor).artifacts
        dy3 = chunked.outputs.delta_y("tiny", "hepg2")
        ko2 = chunked.knockouts.knockout_profiles("tiny", "hepg2", genes)
    assert n_kds > 2, n_kds  # several ΔY chunks
    (dy_label, dy_items), (ko_label, ko_items) = executor.calls
    assert dy_label == "delta_y_chunk" and [(t.start, t.stop) for t in dy_items] == chunk_ranges(n_kds, 2)
    assert ko_label == "knockout_chunk" and [t.genes for t in ko_items] == [genes[0:2], genes[2:4], genes[4:5]]
    np.testing.assert_allclose(dy3, dy, rtol=1e-5, atol=1e-6)  # same rows, in order (float32 forwards)
    np.testing.assert_allclose(ko2, ko, rtol=1e-5, atol=1e-6)
    assert dy3.shape == (n_kds, dy.shape[1]) and ko2.shape == ko.shape
