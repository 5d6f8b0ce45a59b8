"""One exception family: every user error says what, where and what is valid."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where in a user file an error sits (1-based line and column)."""

    file: str
    line: int | None = None
    column: int | None = None
    key_path: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.key_path:
            where += f" (at {self.key_path})"
        return where


def close_matches(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """The valid names closest to ``name`` (case-insensitive), best first."""
    pool = sorted({str(v) for v in valid})
    lowered = {v.lower(): v for v in pool}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


def valid_hint(name: str, valid: Iterable[str], limit: int = 12) -> str:
    """'did you mean …? valid: …' text for an unknown name."""
    pool = sorted({str(v) for v in valid})
    parts = []
    near = close_matches(name, pool)
    if near:
        parts.append("did you mean " + " or ".join(repr(m) for m in near) + "?")
    shown = ", ".join(pool[:limit]) + (f", … ({len(pool)} in all)" if len(pool) > limit else "")
    parts.append(f"valid: {shown}" if pool else "nothing is valid here")
    return "; ".join(parts)


class HypocheckError(Exception):
    """Base of every error this project raises for bad input or bad files."""

    def __init__(self, message: str, location: Location | None = None, hint: str | None = None):
        self.message = message
        self.location = location
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}" if self.location else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class HypothesisFileError(HypocheckError):
    """A hypothesis YAML file is unreadable, malformed or fails the schema."""


class ExpectationSyntaxError(HypocheckError):
    """An expectation string does not parse."""


class UnknownNameError(HypocheckError):
    """A probe, metric, model, cell line or gene set name that does not exist."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], location: Location | None = None):
        self.kind = kind
        self.name = name
        self.valid = sorted({str(v) for v in valid})
        super().__init__(f"unknown {kind} {name!r}", location, valid_hint(name, self.valid))


class ModelLoadError(HypocheckError):
    """A run directory, checkpoint or SAE cannot be loaded, or is not trusted."""


class DataError(HypocheckError):
    """An AnnData file or a data configuration is missing keys or holds bad values."""

    config_key: str | None = None
    """The data config key (e.g. ``gene_key``) whose value the file lacks, when that is the problem."""


class ConfigError(HypocheckError):
    """The suite configuration (models, data, keys) is invalid."""


class ProbeError(HypocheckError):
    """A probe was given inputs it cannot work with."""


class NotApplicableError(HypocheckError):
    """A case's inputs cannot exist for this model or arm (the observed data has no Jacobian, a mean baseline no
    backbone layer, a dense perturbation map no one-hot): the case or arm is *not applicable*, never an error."""
