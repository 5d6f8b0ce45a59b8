"""Probe registry: a decorator that declares a probe, its parameters and the metrics it reports.

Usage::

    class Params(pydantic.BaseModel):
        null_sets: int = 1000

    @probe("pert_embedding_clustering", params=Params, takes=SetEmbeddings, axes=("model", "gene_set"),
           metrics=("within_mean_cosine", "background_mean_cosine", "z", "p", "n_members"), effect="z", p="p",
           kinds={"observed": ("within_mean_cosine",), "count": ("n_members",)})
    def pert_embedding_clustering(*, embeddings, members, params, rng) -> ProbeResult:
        ...

A probe is a pure function of arrays, its parameters and a seeded
``numpy.random.Generator``; it never reads files, YAML or globals, and it never
judges its own result: expectations are evaluated by the engine. It declares the
input kind it ``takes`` (:mod:`hypocheck.inputs`): its keyword arguments (other
than ``params`` and ``rng``) are fields of that record, which the backend's
provider of the kind builds; the kind's ``options`` model is what a hypothesis's
``inputs:`` may say about how. It declares what each metric means (``kinds``):
the effect and the p-value of record, other p-values, the observed statistic, counts;
a metric it does not name is descriptive. Nothing reads meaning from a metric's name.

Probes are found through the ``hypocheck.probes`` entry-point group: each entry
names a module whose import registers probes (this distribution's is
``hypocheck.probes``), so a third-party probe package plugs in the same way.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from types import MappingProxyType
from typing import Any, Literal, get_args

import numpy as np
import pydantic

from .errors import HypocheckError, UnknownNameError
from .inputs import Arrays, InputRecord, as_record

ENTRY_POINT_GROUP = "hypocheck.probes"

ProbeFn = Callable[..., "ProbeResult"]

MetricKind = Literal["effect", "p", "observed", "descriptive", "count"]
"""What a probe's metric is: an effect size, a p-value, the observed statistic a null is drawn against, a count
(of members, knockdowns, genes), or a descriptive figure. Declared by the probe."""
AbsenceRule = Literal["below", "within"]
"""How a claim of absence reads the effect's CI against the margin ``m``: ``below`` (one-sided: no effect of ``m``
or more, e.g. no clustering) or ``within`` (two-sided: no difference beyond ± ``m``, e.g. two models alike)."""
BoundKind = Literal["ci_low", "ci_high"]
"""The engine's own ``<metric>_ci_low`` / ``<metric>_ci_high`` names: the bounds of a metric's CI."""
METRIC_KINDS: tuple[str, ...] = get_args(MetricKind)


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
    """Parameters of a probe that takes none."""

    model_config = pydantic.ConfigDict(extra="forbid")


def _keyword_inputs(fn: ProbeFn) -> tuple[str, ...]:
    """The inputs a probe function takes: its keyword arguments other than ``params`` and ``rng``."""
    return tuple(n for n in inspect.signature(fn).parameters if n not in {"params", "rng"})


@dataclass(frozen=True)
class ProbeSpec:
    """A registered probe and what it promises to report."""

    name: str
    fn: ProbeFn
    params: type[pydantic.BaseModel]
    takes: type[InputRecord]
    axes: tuple[str, ...]
    metrics: tuple[str, ...]
    effect: str
    p: str | None
    description: str
    min_effect: float | None = None
    """Minimum effect of interest on ``effect`` for a claim of presence (``None``: the probe has no presence
    claim, e.g. a test of absence or of equivalence)."""
    metric_kinds: Mapping[str, MetricKind] = field(default_factory=dict)
    """What each metric is (every declared metric has one; see :data:`MetricKind`)."""
    absence: AbsenceRule | None = None
    """How a claim of absence reads the effect's CI (``None``: the probe supports no claim of absence)."""

    @property
    def inputs(self) -> type[pydantic.BaseModel]:
        """The options a hypothesis's ``inputs:`` may set: those of the input kind the probe takes."""
        return self.takes.options

    def metric_names(self) -> set[str]:
        """Metrics an expectation may name: the declared ones and the CI bounds of each."""
        names = set(self.metrics)
        names |= {f"{m}_ci_low" for m in self.metrics} | {f"{m}_ci_high" for m in self.metrics}
        return names

    def kind_of(self, name: str) -> MetricKind | BoundKind | None:
        """What metric ``name`` is (a CI bound of a declared metric included); ``None`` for an unknown name."""
        if name in self.metric_kinds:
            return self.metric_kinds[name]
        for suffix in ("_ci_low", "_ci_high"):
            if name.endswith(suffix) and name[: -len(suffix)] in self.metric_kinds:
                return "ci_low" if suffix == "_ci_low" else "ci_high"
        return None

    def metrics_of_kind(self, kind: MetricKind) -> tuple[str, ...]:
        """The declared metrics of ``kind``, in declaration order."""
        return tuple(m for m in self.metrics if self.metric_kinds.get(m) == kind)

    def input_arrays(self) -> tuple[str, ...]:
        """The arrays the probe function takes (its keyword arguments other than ``params`` and ``rng``)."""
        return _keyword_inputs(self.fn)

    def not_applicable(self, reason: str) -> ProbeResult:
        """The result of a case this probe cannot run on its model (every metric NaN): inconclusive, ``reason``."""
        return ProbeResult(metrics=dict.fromkeys(self.metrics, math.nan), inconclusive=f"not applicable: {reason}")

    def run(self, inputs: InputRecord | Mapping[str, Any], *, params: pydantic.BaseModel,
            rng: np.random.Generator) -> ProbeResult:
        """The probe on ``inputs`` (a record of the kind it takes): the one way every caller runs a probe."""
        record = as_record(self.takes, inputs)
        result = self.fn(**record.arguments(self.input_arrays()), params=params, rng=rng)
        if not isinstance(result, ProbeResult):
            raise TypeError(f"probe {self.name!r} returned {type(result).__name__}, not ProbeResult")
        return result


def _declared_kinds(name: str, metrics: tuple[str, ...], effect: str, p: str | None,
                    kinds: Mapping[str, tuple[str, ...]]) -> dict[str, MetricKind]:
    """Each metric's kind: ``effect`` and ``p`` as named, the ``kinds`` lists, descriptive otherwise."""
    declared: dict[str, MetricKind] = dict.fromkeys(metrics, "descriptive")
    for kind, names in kinds.items():
        if kind not in METRIC_KINDS:
            raise ValueError(f"probe {name!r}: unknown metric kind {kind!r}; valid: {', '.join(METRIC_KINDS)}")
        for metric in names:
            if metric not in declared:
                raise ValueError(f"probe {name!r}: {kind} metric {metric!r} is not among its metrics {metrics}")
            declared[metric] = kind  # type: ignore[assignment]
    declared[effect] = "effect"
    if p is not None:
        declared[p] = "p"
    return declared


_REGISTRY: dict[str, ProbeSpec] = {}


def probe(
    name: str,
    *,
    metrics: tuple[str, ...],
    effect: str,
    p: str | None = None,
    params: type[pydantic.BaseModel] = NoParams,
    takes: type[InputRecord] = Arrays,
    kinds: Mapping[str, tuple[str, ...]] | None = None,
    axes: tuple[str, ...] = (),
    min_effect: float | None = None,
    absence: AbsenceRule | None = None,
) -> Callable[[ProbeFn], ProbeFn]:
    """Register ``fn`` as the probe ``name``, taking records of kind ``takes``; ``kinds`` maps a metric kind
    (``"p"``, ``"observed"``, ``"count"``, ``"effect"``) to the metrics of that kind; ``absence`` says how a claim
    of absence reads the effect's CI against the margin (by default the minimum effect of interest)."""
    if effect not in metrics or (p is not None and p not in metrics):
        raise ValueError(f"probe {name!r}: effect {effect!r} and p {p!r} must be among its metrics {metrics}")
    metric_kinds = _declared_kinds(name, metrics, effect, p, kinds or {})

    def register(fn: ProbeFn) -> ProbeFn:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"probe {name!r} is registered twice ({existing.fn.__module__}, {fn.__module__})")
        fields = takes.argument_names()
        unknown = [a for a in _keyword_inputs(fn) if a not in fields]
        if takes is not Arrays and unknown:
            raise ValueError(f"probe {name!r} takes {unknown}, which are not fields of its input kind "
                             f"{takes.kind()} ({', '.join(fields)})")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ProbeSpec(name, fn, params, takes, axes, metrics, effect, p, doc[0] if doc else "",
                                    min_effect, MappingProxyType(metric_kinds), absence)
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
