"""Typed model references: a configured model, or one of its control arms.

A case names its model on the ``model`` axis. A plain name is a configured model; ``NAME~KIND`` is the
``KIND`` control of model ``NAME`` (a weight-randomized copy, or one with shuffled perturbation embeddings),
as a hypothesis may list it or as ``controls:`` asks for it. That text is only the label: it is read once
(:meth:`ModelRef.parse`) and written once (``str(ref)``); everything past the case holds a :class:`ModelRef`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import UnknownNameError

CONTROL_KINDS: tuple[str, ...] = ("randomized", "shuffled_perts")
"""The control arms a backend may build for a model."""
_SEPARATOR = "~"


@dataclass(frozen=True)
class ModelRef:
    """A model of the suite (``name``), or its ``control`` arm (one of :data:`CONTROL_KINDS`)."""

    name: str
    control: str | None = None

    def __post_init__(self) -> None:
        if self.control is not None and self.control not in CONTROL_KINDS:
            raise UnknownNameError(f"control kind (of model {self.name!r})", self.control, CONTROL_KINDS)

    def __str__(self) -> str:
        return self.name if self.control is None else f"{self.name}{_SEPARATOR}{self.control}"

    @classmethod
    def parse(cls, text: str | ModelRef) -> ModelRef:
        """``"NAME"`` or ``"NAME~KIND"`` as a reference (a reference is returned as it is)."""
        if isinstance(text, ModelRef):
            return text
        name, sep, control = str(text).partition(_SEPARATOR)
        if sep and control not in CONTROL_KINDS:  # a control of a control included
            raise UnknownNameError(f"control kind (in model name {str(text)!r})", control, CONTROL_KINDS)
        return cls(name, control if sep else None)

    @property
    def trained(self) -> ModelRef:
        """The trained model this reference is an arm of (itself when it is one)."""
        return ModelRef(self.name)

    def with_control(self, kind: str) -> ModelRef:
        """The ``kind`` control arm of this reference's trained model."""
        return ModelRef(self.name, kind)


ModelName = ModelRef | str
"""What backend code accepts for a model: a reference, or its label (read with :meth:`ModelRef.parse`)."""


def axis_values(models: Iterable[str]) -> list[str]:
    """The ``model`` axis values of a suite with ``models``: each model, then each of its control arms."""
    names = list(models)
    return [*names, *(str(ModelRef(m, kind)) for m in names for kind in CONTROL_KINDS)]
