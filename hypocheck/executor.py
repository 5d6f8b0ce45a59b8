"""Where heavy, chunked computations run: in this process (the default) or as tasks on a Ray cluster.

The engine knows nothing about what a chunk computes. A backend splits an artifact into chunks over a fixed
range size (so the chunks, and the order they are reduced in, never depend on the executor), and hands
``map(fn, items)`` a top-level function and one picklable item per chunk; the results come back in item order.

- :class:`LocalExecutor` calls ``fn(item)`` here, one after the other.
- :class:`RayExecutor` submits one Ray task per item, each asking for the configured ``num_gpus`` /
  ``num_cpus``, retried by Ray when its worker process or node is lost (``max_retries``). Ray is imported the
  first time it is used, so a run without a Ray executor never imports it.

Usage::

    executor = make_executor({"ray": {"address": "auto", "num_gpus": 1}})
    shares = executor.map(run_chunk, tasks)          # one result per task, in order
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Resources:
    """What one task asks the scheduler for (Ray's ``num_cpus`` / ``num_gpus``; fractions allowed)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


class Executor(Protocol):
    """Runs ``fn`` over ``items`` and returns the results in item order."""

    remote: bool
    """Whether ``fn`` runs in another process (it must then be a top-level function and items picklable)."""

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, resources: Resources | None = None,
            label: str = "chunks") -> list[R]:
        """``[fn(item) for item in items]``, wherever the executor runs them."""


class LocalExecutor:
    """In-process, in order: the default, and what a run without an ``executor:`` setting uses."""

    remote = False

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, resources: Resources | None = None,
            label: str = "chunks") -> list[R]:
        return [fn(item) for item in items]

    def __repr__(self) -> str:
        return "LocalExecutor()"


class RayExecutor:
    """One Ray task per item on the cluster at ``address`` (``auto``: the one ``ray start`` made on this node).

    ``ray.init`` runs on the first ``map``; each process that maps (the pytest process, or each xdist worker)
    is its own Ray driver. Lost workers are retried up to ``max_retries`` times by Ray; an exception raised
    by ``fn`` itself is not retried (it would fail again) and is re-raised here as it was raised there.
    """

    remote = True

    def __init__(self, address: str = "auto", *, num_cpus: float = 1.0, num_gpus: float = 0.0,
                 max_retries: int = 3, progress: bool = False, init_options: Mapping[str, Any] | None = None) -> None:
        self.address = address
        self.resources = Resources(num_cpus=num_cpus, num_gpus=num_gpus)
        self.max_retries = max_retries
        self.progress = progress
        self.init_options = dict(init_options or {})
        self._remote: Any = None
        self._failed: ConfigError | None = None  # a cluster that could not be reached is not tried again

    def __repr__(self) -> str:
        return (f"RayExecutor(address={self.address!r}, num_cpus={self.resources.num_cpus}, "
                f"num_gpus={self.resources.num_gpus}, max_retries={self.max_retries})")

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise ConfigError("the Ray executor needs Ray: pip install 'hypocheck[ray]'") from None
        if self._failed is not None:
            raise self._failed
        if not ray.is_initialized():
            options = {"address": self.address, "log_to_driver": False, **self.init_options}
            try:
                ray.init(**options)
            except ConnectionError as exc:
                self._failed = ConfigError(
                    f"cannot reach a Ray cluster at {self.address!r}: {exc}",
                    hint="start one with `ray start --head`, or pass its address as --ray HOST:PORT; a cluster "
                         "with token authentication (the default of a new one) needs RAY_AUTH_MODE=token and its "
                         "token in RAY_AUTH_TOKEN or ~/.ray/auth_token when its address is given explicitly",
                )
                raise self._failed from None
        return ray

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, resources: Resources | None = None,
            label: str = "chunks") -> list[R]:
        if not items:
            return []
        ray = self._ray()
        res = resources or self.resources
        if self._remote is None:
            self._remote = ray.remote(_apply)
        task = self._remote.options(num_cpus=res.num_cpus, num_gpus=res.num_gpus, max_retries=self.max_retries,
                                    retry_exceptions=False)
        refs = [task.remote(fn, item) for item in items]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending, done_count, start = list(refs), 0, time.monotonic()
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    results[index[ref]] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the task's own exception: cancel the rest, raise it
                    for other in pending:
                        ray.cancel(other)
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, Exception):
                        raise cause from exc
                    raise
                done_count += 1
            if self.progress:
                print(f"\r[ray] {label}: {done_count}/{len(refs)} done ({time.monotonic() - start:.1f} s)",
                      end="" if pending else "\n", file=sys.stderr, flush=True)
        return results


def _apply(fn: Callable[[T], R], item: T) -> R:
    """What each Ray task runs: ``fn`` travels by reference (module and name), so it must be importable there."""
    return fn(item)


def make_executor(spec: Mapping[str, Any] | None, *, progress: bool = False) -> Executor:
    """The executor a setting names: ``None`` / ``{}`` / ``"local"`` → local; ``{"ray": {...}}`` → Ray.

    The Ray settings are ``address`` (default ``auto``), ``num_cpus``, ``num_gpus`` and ``max_retries``.
    """
    if not spec or spec == "local" or (isinstance(spec, Mapping) and "local" in spec and len(spec) == 1):
        return LocalExecutor()
    if not isinstance(spec, Mapping) or set(spec) != {"ray"}:
        raise ConfigError(f"unknown executor {spec!r}", hint="valid: local, or {ray: {address: auto, ...}}")
    ray_spec = dict(spec["ray"] or {})
    unknown = set(ray_spec) - {"address", "num_cpus", "num_gpus", "max_retries"}
    if unknown:
        raise ConfigError(f"unknown Ray executor setting(s) {sorted(unknown)}",
                          hint="valid: address, num_cpus, num_gpus, max_retries")
    return RayExecutor(str(ray_spec.get("address", "auto")), num_cpus=float(ray_spec.get("num_cpus", 1.0)),
                       num_gpus=float(ray_spec.get("num_gpus", 0.0)), max_retries=int(ray_spec.get("max_retries", 3)),
                       progress=progress)
