"""Probe registry: a decorator that declares a probe, its parameters and the metrics it reports.

Usage::

    class Params(pydantic.BaseModel):
        null_sets: int = 1000

    class Inputs(pydantic.BaseModel):      # the hypothesis's `inputs:` (how the backend builds the arrays)
        layer: int | None = None

    @probe("pert_embedding_clustering", params=Params, inputs=Inputs, axes=("model", "gene_set"),
           metrics=("within_mean_cosine", "background_mean_cosine", "z", "p"), effect="z", p="p")
    def pert_embedding_clustering(*, embeddings, members, params, rng) -> ProbeResult:
        ...

A probe is a pure function of arrays, its parameters and a seeded
``numpy.random.Generator``; it never reads files, YAML or globals, and it never
judges its own result: expectations are evaluated by the engine. Its keyword
arguments (other than ``params`` and ``rng``) are the arrays it needs; its
``inputs`` model is what a hypothesis may say about how they are built. Both are
checked when hypothesis files are collected.

Probes are found through the ``hypocheck.probes`` entry-point group: each entry
names a module whose import registers probes (this distribution's is
``hypocheck.probes``), so a third-party probe package plugs in the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from types import MappingProxyType
from typing import Any

import numpy as np
import pydantic

from .errors import HypocheckError, UnknownNameError

ENTRY_POINT_GROUP = "hypocheck.probes"

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
    null_label: str = "null"
    """What ``null`` is, for reports and plots, e.g. "uniform null (size-matched random sets)"."""
    tables: Mapping[str, Any] = field(default_factory=dict)
    inconclusive: str | None = None
    attainable: Mapping[str, float] = field(default_factory=dict)
    """Per p-value metric, the smallest value its test can attain (``1/(n+1)`` for ``n`` null draws)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType({k: float(v) for k, v in self.metrics.items()}))
        object.__setattr__(
            self, "cis", MappingProxyType({k: (float(lo), float(hi)) for k, (lo, hi) in self.cis.items()})
        )
        object.__setattr__(self, "arrays", MappingProxyType(dict(self.arrays)))
        object.__setattr__(self, "tables", MappingProxyType(dict(self.tables)))
        object.__setattr__(self, "attainable", MappingProxyType({k: float(v) for k, v in self.attainable.items()}))


class NoParams(pydantic.BaseModel):
    """Parameters (or input options) of a probe that takes none."""

    model_config = pydantic.ConfigDict(extra="forbid")


NoInputs = NoParams


@dataclass(frozen=True)
class ProbeSpec:
    """A registered probe and what it promises to report."""

    name: str
    fn: ProbeFn
    params: type[pydantic.BaseModel]
    inputs: type[pydantic.BaseModel]
    axes: tuple[str, ...]
    metrics: tuple[str, ...]
    effect: str
    p: str | None
    description: str
    min_effect: float | None = None
    """Minimum effect of interest on ``effect`` for a claim of presence (``None``: the probe has no presence
    claim, e.g. a test of absence or of equivalence)."""

    def metric_names(self) -> set[str]:
        """Metrics an expectation may name: the declared ones and the CI bounds of each."""
        names = set(self.metrics)
        names |= {f"{m}_ci_low" for m in self.metrics} | {f"{m}_ci_high" for m in self.metrics}
        return names

    def input_arrays(self) -> tuple[str, ...]:
        """The arrays the probe function takes (its keyword arguments other than ``params`` and ``rng``)."""
        signature = inspect.signature(self.fn)
        return tuple(n for n in signature.parameters if n not in {"params", "rng"})


_REGISTRY: dict[str, ProbeSpec] = {}


def probe(
    name: str,
    *,
    metrics: tuple[str, ...],
    effect: str,
    p: str | None = None,
    params: type[pydantic.BaseModel] = NoParams,
    inputs: type[pydantic.BaseModel] = NoInputs,
    axes: tuple[str, ...] = (),
    min_effect: float | None = None,
) -> Callable[[ProbeFn], ProbeFn]:
    """Register ``fn`` as the probe ``name``."""
    if effect not in metrics or (p is not None and p not in metrics):
        raise ValueError(f"probe {name!r}: effect {effect!r} and p {p!r} must be among its metrics {metrics}")

    def register(fn: ProbeFn) -> ProbeFn:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"probe {name!r} is registered twice ({existing.fn.__module__}, {fn.__module__})")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ProbeSpec(name, fn, params, inputs, axes, metrics, effect, p, doc[0] if doc else "",
                                    min_effect)
        return fn

    return register


_loaded_groups: set[str] = set()


def load_probe_plugins(group: str = ENTRY_POINT_GROUP) -> None:
    """Import every module named in the entry-point ``group`` (once per process): importing registers probes."""
    if group in _loaded_groups:
        return
    _loaded_groups.add(group)
    for entry in metadata.entry_points(group=group):
        try:
            entry.load()
        except Exception as exc:
            raise HypocheckError(
                f"probe package {entry.name!r} ({entry.value}, entry point group {group!r}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def get_probe(name: str) -> ProbeSpec:
    """The registered probe ``name``; an unknown name lists the close matches."""
    if name not in _REGISTRY:
        load_probe_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("probe", name, _REGISTRY) from None


def registered_probes() -> dict[str, ProbeSpec]:
    """All registered probes by name (those of installed probe packages included)."""
    load_probe_plugins()
    return dict(_REGISTRY)
