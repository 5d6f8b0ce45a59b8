"""Gene sets (pathways) of SPEC §3: regular expressions over knockdown names plus explicit members."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GeneSetDefinition:
    """A named set: knockdowns matching any pattern, plus explicit members."""

    name: str
    patterns: tuple[str, ...] = ()
    members: tuple[str, ...] = field(default_factory=tuple)

    def select(self, names: Iterable[str]) -> list[str]:
        """The given names that belong to this set, in their given order."""
        compiled = [re.compile(p) for p in self.patterns]
        explicit = set(self.members)
        return [n for n in names if n in explicit or any(c.search(n) for c in compiled)]


DEFAULT_GENE_SETS: dict[str, GeneSetDefinition] = {
    d.name: d
    for d in (
        GeneSetDefinition("ribosome", (r"^RP[SL]\d",)),
        GeneSetDefinition("mitoribosome", (r"^MRP[SL]\d",)),
        GeneSetDefinition("oxphos", (r"^NDUF",), ("SDHC",)),
        GeneSetDefinition("er_golgi", (r"^TRAPPC", r"^SRP", r"^SEC6"), ("SRPRB",)),
        GeneSetDefinition("proteasome", (r"^PSM",)),
        GeneSetDefinition("splicing", (r"^PRPF",), ("DHX15", "DHX16", "DDX46", "HNRNPU")),
    )
}

#: Groups of sets the claims talk about as one ("mitochondrial programs").
SET_GROUPS: dict[str, tuple[str, ...]] = {"mitochondrial": ("mitoribosome", "oxphos")}


def gene_sets_from_config(raw: Mapping[str, Mapping[str, Sequence[str]]] | None) -> dict[str, GeneSetDefinition]:
    """Defaults of SPEC §3, overridden or extended by ``{name: {patterns: [...], members: [...]}}``."""
    sets = dict(DEFAULT_GENE_SETS)
    for name, spec in (raw or {}).items():
        for pattern in spec.get("patterns", ()):
            re.compile(pattern)  # a bad pattern fails here, at configuration time
        sets[name] = GeneSetDefinition(name, tuple(spec.get("patterns", ())), tuple(spec.get("members", ())))
    return sets


def membership(
    names: Sequence[str], definitions: Mapping[str, GeneSetDefinition]
) -> dict[str, list[int]]:
    """Set name → indices into ``names`` of its members."""
    index = {n: i for i, n in enumerate(names)}
    return {s: [index[n] for n in d.select(names)] for s, d in definitions.items()}
