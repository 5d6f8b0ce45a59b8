"""Typed model references: a configured model, one of its control arms, or the observed data beside it.

A case names its model on the ``model`` axis. A plain name is a configured model; ``NAME~KIND`` is the
``KIND`` control of model ``NAME`` (a weight-randomized copy, or one with shuffled perturbation embeddings),
as a hypothesis may list it or as ``controls:`` asks for it; ``NAME~data`` is the observed data on model
``NAME``'s knockdowns and genes (the *data* reference arm: what a probe measures on the data themselves). That
text is only the label: it is read once (:meth:`ModelRef.parse`) and written once (``str(ref)``); everything past
the case holds a :class:`ModelRef`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import UnknownNameError

CONTROL_KINDS: tuple[str, ...] = ("randomized", "shuffled_perts")
"""The control arms a backend may build for a model."""
DATA_ARM = "data"
"""The arm that stands for the observed data on a model's knockdowns (a reference, not a control)."""
ARM_KINDS: tuple[str, ...] = (*CONTROL_KINDS, DATA_ARM)
BASELINES_ARM = "baselines"
"""In a ``references:`` list, the suite's baseline models (its ``baselines:``; none where it names none), so one
hypothesis file serves suites with and without baselines."""
_SEPARATOR = "~"


@dataclass(frozen=True)
class ModelRef:
    """A model of the suite (``name``), or one of its arms (one of :data:`ARM_KINDS`): a control, or the data."""

    name: str
    arm: str | None = None

    def __post_init__(self) -> None:
        if self.arm is not None and self.arm not in ARM_KINDS:
            raise UnknownNameError(f"control kind or arm (of model {self.name!r})", self.arm, ARM_KINDS)

    def __str__(self) -> str:
        return self.name if self.arm is None else f"{self.name}{_SEPARATOR}{self.arm}"

    @property
    def control(self) -> str | None:
        """The control kind of a control arm (``None`` for a trained model or the data arm)."""
        return self.arm if self.arm in CONTROL_KINDS else None

    @property
    def observed(self) -> bool:
        """Whether this is the data arm: the observed data on the model's knockdowns, not a model."""
        return self.arm == DATA_ARM

    @classmethod
    def parse(cls, text: str | ModelRef) -> ModelRef:
        """``"NAME"`` or ``"NAME~KIND"`` as a reference (a reference is returned as it is)."""
        if isinstance(text, ModelRef):
            return text
        name, sep, control = str(text).partition(_SEPARATOR)
        if sep and control not in ARM_KINDS:  # an arm of an arm included
            raise UnknownNameError(f"control kind or arm (in model name {str(text)!r})", control, ARM_KINDS)
        return cls(name, control if sep else None)

    @property
    def trained(self) -> ModelRef:
        """The trained model this reference is an arm of (itself when it is one)."""
        return ModelRef(self.name)

    def with_control(self, kind: str) -> ModelRef:
        """The ``kind`` control arm of this reference's trained model."""
        return ModelRef(self.name, kind)

    @property
    def data(self) -> ModelRef:
        """The data arm of this reference's trained model."""
        return ModelRef(self.name, DATA_ARM)


ModelName = ModelRef | str
"""What backend code accepts for a model: a reference, or its label (read with :meth:`ModelRef.parse`)."""


def axis_values(models: Iterable[str]) -> list[str]:
    """The ``model`` axis values of a suite with ``models``: each model, then each of its arms (controls, data)."""
    names = list(models)
    return [*names, *(str(ModelRef(m, kind)) for m in names for kind in ARM_KINDS)]
