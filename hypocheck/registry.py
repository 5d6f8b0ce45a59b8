"""Probe registry: a decorator that declares a probe, its parameters and the metrics it reports.

Usage::

    class Params(pydantic.BaseModel):
        null_sets: int = 1000

    @probe("pert_embedding_clustering", params=Params, axes=("model", "gene_set"),
           metrics=("within_mean_cosine", "background_mean_cosine", "z", "p"), effect="z", p="p")
    def pert_embedding_clustering(*, embeddings, members, params, rng) -> ProbeResult:
        ...

A probe is a pure function of tensors, its parameters and a seeded
``numpy.random.Generator``; it never reads files, YAML or globals, and it never
judges its own result: expectations are evaluated by the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pydantic

from .errors import UnknownNameError

ProbeFn = Callable[..., "ProbeResult"]


@dataclass(frozen=True)
class ProbeResult:
    """What a probe measured: named scalar metrics, their CIs, arrays, null samples, tables.

    ``inconclusive`` carries the reason when the data cannot decide (too few
    set members, no power); the engine then reports *inconclusive* whatever
    the expectations say.
    """

    metrics: Mapping[str, float]
    cis: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    null: np.ndarray | None = None
    tables: Mapping[str, Any] = field(default_factory=dict)
    inconclusive: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType({k: float(v) for k, v in self.metrics.items()}))
        object.__setattr__(
            self, "cis", MappingProxyType({k: (float(lo), float(hi)) for k, (lo, hi) in self.cis.items()})
        )
        object.__setattr__(self, "arrays", MappingProxyType(dict(self.arrays)))
        object.__setattr__(self, "tables", MappingProxyType(dict(self.tables)))


class NoParams(pydantic.BaseModel):
    """Parameters of a probe that takes none."""

    model_config = pydantic.ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ProbeSpec:
    """A registered probe and what it promises to report."""

    name: str
    fn: ProbeFn
    params: type[pydantic.BaseModel]
    axes: tuple[str, ...]
    metrics: tuple[str, ...]
    effect: str
    p: str | None
    description: str

    def metric_names(self) -> set[str]:
        """Metrics an expectation may name: the declared ones and the CI bounds of each."""
        names = set(self.metrics)
        names |= {f"{m}_ci_low" for m in self.metrics} | {f"{m}_ci_high" for m in self.metrics}
        return names


_REGISTRY: dict[str, ProbeSpec] = {}


def probe(
    name: str,
    *,
    metrics: tuple[str, ...],
    effect: str,
    p: str | None = None,
    params: type[pydantic.BaseModel] = NoParams,
    axes: tuple[str, ...] = (),
) -> Callable[[ProbeFn], ProbeFn]:
    """Register ``fn`` as the probe ``name``."""
    if effect not in metrics or (p is not None and p not in metrics):
        raise ValueError(f"probe {name!r}: effect {effect!r} and p {p!r} must be among its metrics {metrics}")

    def register(fn: ProbeFn) -> ProbeFn:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"probe {name!r} is registered twice ({existing.fn.__module__}, {fn.__module__})")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ProbeSpec(name, fn, params, axes, metrics, effect, p, doc[0] if doc else "")
        return fn

    return register


def get_probe(name: str) -> ProbeSpec:
    """The registered probe ``name``; an unknown name lists the close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("probe", name, _REGISTRY) from None


def registered_probes() -> dict[str, ProbeSpec]:
    """All registered probes by name."""
    return dict(_REGISTRY)
