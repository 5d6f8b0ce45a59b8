"""Input kinds: the typed records a probe takes and a backend provides, the seam between the two.

A probe declares the kind it takes (``@probe(..., takes=LayerFeatures)``); a backend registers one provider
per kind. The record's fields are the probe function's keyword arguments (a probe may read a subset), its
``options`` model is what a hypothesis's ``inputs:`` may say about how the record is built, and ``notes``
say how it was computed (a sketched Gram's accuracy, a precision): they reach the case's verdict.

Usage::

    @dataclass(frozen=True)
    class PertNorms(InputRecord):
        norms: np.ndarray
        members: np.ndarray
        options: ClassVar[type[BaseModel]] = PertNormOptions

A probe that declares no kind takes :class:`Arrays`: a mapping of named arrays, for a project whose own
backend builds inputs its own way (``pytest_hypocheck_backend``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pydantic


class NoOptions(pydantic.BaseModel):
    """The ``inputs:`` of a kind that takes no options."""

    model_config = pydantic.ConfigDict(extra="forbid")


@dataclass(frozen=True, kw_only=True)
class InputRecord:
    """Base of every input kind."""

    notes: tuple[str, ...] = ()
    measured: Mapping[str, Any] = field(default_factory=dict)
    """What the record measures, named for every output: the features and layer, the Jacobian, the lines, the
    control sentence (e.g. ``{"features": "SAE features of block 2"}``)."""
    options: ClassVar[type[pydantic.BaseModel]] = NoOptions

    @classmethod
    def kind(cls) -> str:
        """The kind's name, as reports and errors show it."""
        return cls.__name__

    @classmethod
    def argument_names(cls) -> tuple[str, ...]:
        """The fields a probe may take as keyword arguments (every field but ``notes`` and ``measured``)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("notes", "measured"))

    def arguments(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The probe's keyword arguments ``names`` from this record."""
        return {name: getattr(self, name) for name in names}

    def with_notes(self, *notes: str) -> InputRecord:
        """This record with ``notes`` added (each once, in order)."""
        return dataclasses.replace(self, notes=tuple(dict.fromkeys([*self.notes, *notes])))


@dataclass(frozen=True, kw_only=True)
class Arrays(InputRecord):
    """The kind of a probe that declares none: named arrays, exactly the probe's keyword arguments."""

    values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def argument_names(cls) -> tuple[str, ...]:
        return ()

    def arguments(self, names: tuple[str, ...]) -> dict[str, Any]:
        return dict(self.values)


def as_record(kind: type[InputRecord], inputs: InputRecord | Mapping[str, Any]) -> InputRecord:
    """``inputs`` as a record of ``kind``; a backend of a project's own may return a plain mapping of the
    kind's fields instead (of any arrays, for :class:`Arrays`)."""
    if isinstance(inputs, kind):
        return inputs
    if isinstance(inputs, Mapping):
        if kind is Arrays:
            return Arrays(values=dict(inputs))
        fields = kind.argument_names()
        unknown = sorted(set(inputs) - {*fields, "notes", "measured"})
        if unknown:
            raise TypeError(f"the backend provided {unknown}, which are not fields of {kind.kind()} "
                            f"({', '.join(fields)})")
        try:
            return kind(**inputs)
        except TypeError as exc:
            raise TypeError(f"the backend's inputs do not make a {kind.kind()} ({', '.join(fields)}): {exc}") from None
    raise TypeError(f"the backend provided {type(inputs).__name__}, the probe takes {kind.kind()}")
