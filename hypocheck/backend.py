"""What the engine needs from a backend: the vocabulary of case axes, a check of each case, one check of
the whole configuration before any case runs, and the context that builds each case's probe inputs.

The engine knows no model or data format. A backend does: this distribution's is the suite backend
(``hypocheck.fixtures.backend``: arc-state run dirs, AnnData, SAE), found through the ``hypocheck.backends``
entry-point group and built from the suite config file. A project can hand the plugin another backend by
implementing the ``pytest_hypocheck_backend`` hook.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import progress
from .cases import Case
from .errors import HypocheckError, NotApplicableError, UnknownNameError
from .inputs import InputRecord
from .registry import ProbeResult

ENTRY_POINT_GROUP = "hypocheck.backends"
DEFAULT_BACKEND = "suite"


@dataclass(frozen=True)
class RunOptions:
    """How a context computes and keeps heavy artifacts in this run."""

    cache_dir: Path | str  # a directory, or an fsspec URL (s3://bucket/prefix) every node can reach
    use_cache: bool = True
    progress: bool = False
    ray_address: str | None = None  # --ray ADDRESS: heavy artifacts' chunks run as tasks on that Ray cluster


class ProbeContext(Protocol):
    """Builds probe inputs for cases, loading models and data the first time a case needs them."""

    def prepare(self, case: Case) -> InputRecord | Mapping[str, Any]:
        """The record of the input kind the case's probe takes (a plain mapping of arrays for a probe that
        declares no kind)."""

    def environment(self) -> Mapping[str, Any]:
        """Fingerprints, device and notes of what this process loaded, for reports."""


class Backend(Protocol):
    """A configured backend: cheap to create (no model is loaded until a context needs it)."""

    def vocabulary(self) -> Mapping[str, Sequence[str]]:
        """Valid values of every case axis, e.g. ``{"model": ["fewshot"], "gene_set": [...]}``."""

    def check_case(self, case: Case) -> None:
        """Raise ``HypocheckError`` (at the case's location) when this backend cannot build the case's inputs."""

    def validate(self) -> list[str]:
        """Check the whole configuration (files, keys, checkpoints) once, before any case runs.

        Raises ``HypocheckError`` naming file, line and key for the first problem; returns notes (things that
        load but deserve a word in the report).
        """

    def context(self, options: RunOptions) -> ProbeContext:
        """The context that prepares cases in this process."""


@runtime_checkable
class SchedulingBackend(Protocol):
    """An optional backend capability: each case's relative cost and the group of cases sharing its heavy
    artifacts, so the plugin runs the costliest groups first and keeps a group together (run order only)."""

    def schedule(self, case: Case) -> tuple[float, str]:
        ...


def run_probe(context: ProbeContext, case: Case) -> tuple[ProbeResult, InputRecord | Mapping[str, Any] | None]:
    """The case's probe on its inputs from ``context``, and those inputs. When the case's model cannot have them
    (it lacks what the probe assumes: ``NotApplicableError``), the probe's inconclusive result with the reason and
    no inputs: not an error of the run."""
    try:
        with progress.stage("inputs"):
            inputs = context.prepare(case)
    except NotApplicableError as exc:
        return case.probe.not_applicable(exc.message), None
    with progress.stage(f"probe {case.probe.name}"):
        return case.probe.run(inputs, params=case.params, rng=np.random.default_rng(case.seed)), inputs


@runtime_checkable
class Resamplable(Protocol):
    """An optional context capability: the same context with its sampled inputs (the control cells a case runs
    on) drawn again, for verdict stability. Sample 0 is the context's own."""

    def resampled(self, sample: int) -> tuple[ProbeContext, str]:
        """The context of sample ``sample`` and its label (e.g. ``control_sentence.seed=43``)."""
        ...


@runtime_checkable
class SuiteDefaults(Protocol):
    """An optional backend capability: hypothesis settings the whole suite applies where a hypothesis sets none
    (``references``, ``stability``)."""

    def hypothesis_defaults(self) -> Mapping[str, Any]:
        ...


def backend_factory(name: str) -> Any:
    """The factory registered as ``name`` in the ``hypocheck.backends`` entry-point group."""
    entries = {e.name: e for e in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if name not in entries:
        raise UnknownNameError("backend", name, entries)
    try:
        return entries[name].load()
    except Exception as exc:
        raise HypocheckError(f"backend {name!r} ({entries[name].value}) failed to import: "
                             f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class StaticBackend:
    """A backend from a fixed vocabulary and a context factory: for a project that builds probe inputs its
    own way (returned from its ``pytest_hypocheck_backend`` hook), and for tests."""

    axes: Mapping[str, Sequence[str]]
    make_context: Callable[[], ProbeContext]

    def vocabulary(self) -> Mapping[str, Sequence[str]]:
        return self.axes

    def check_case(self, case: Case) -> None:
        return None

    def validate(self) -> list[str]:
        return []

    def context(self, options: RunOptions) -> ProbeContext:
        return self.make_context()
