"""Device pinning per xdist worker."""

from __future__ import annotations

import pytest

from hypocheck.devices import pick_device, worker_index


def test_worker_index() -> None:
    assert worker_index({"PYTEST_XDIST_WORKER": "gw3"}) == 3
    assert worker_index({}) is None
    assert worker_index({"PYTEST_XDIST_WORKER": "master"}) is None


@pytest.mark.parametrize(
    ("requested", "worker", "gpus", "expected"),
    [
        ("auto", "gw0", 0, "cpu"),
        ("auto", "gw5", 0, "cpu"),
        ("cuda", "gw1", 0, "cpu"),
        ("auto", "gw0", 4, "cuda:0"),
        ("auto", "gw5", 4, "cuda:1"),
        ("auto", None, 2, "cuda:0"),
        ("cpu", "gw2", 4, "cpu"),
        ("cuda:1", "gw0", 2, "cuda:1"),
    ],
)
def test_pick_device(requested: str, worker: str | None, gpus: int, expected: str) -> None:
    env = {"PYTEST_XDIST_WORKER": worker} if worker else {}
    assert pick_device(requested, env, n_gpus=gpus) == expected


def test_bad_requests() -> None:
    with pytest.raises(ValueError, match="2 CUDA device"):
        pick_device("cuda:3", {}, n_gpus=2)
    with pytest.raises(ValueError, match="valid: auto"):
        pick_device("tpu", {}, n_gpus=0)
