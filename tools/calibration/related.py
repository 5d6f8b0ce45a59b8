"""A world of configured gene sets for the matched null's exclusions: two sets of one program, a no-effect set and
a low-magnitude set beside it.

Knockdown features follow the same confound as the other synthetic worlds (``default / (1 + m) + m · direction
+ noise``). Two sets of ``size`` knockdowns belong to one program: their true magnitudes are drawn (uniformly in
log) from the top band of the other knockdowns' magnitudes, a band so narrow that the program's knockdowns
outnumber the other knockdowns in it ``dominance`` to one, and with ``program_weight`` > 0 their directions share
the program's direction. A set drawn from the weakest ``no_effect_share`` of the knockdowns is the no-effect trap;
a set drawn from the lowest ``low_share`` (which splits a ‖ΔY‖ decile) is the low-magnitude set off the old bin
edges (weakest as measured, with the measurement noise of ‖ΔY‖, as in the other low-magnitude designs). All
four are configured, so by default the null of each leaves out the members of the other three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RelatedWorld:
    """Features and measured ‖ΔY‖ of every knockdown, and the four configured sets (index arrays)."""

    features: np.ndarray
    magnitude: np.ndarray
    sets: dict[str, np.ndarray]

    def others(self, name: str) -> np.ndarray:
        """Members of every configured set but ``name``: what the null leaves out by default (other_sets)."""
        return np.unique(np.concatenate([m for s, m in self.sets.items() if s != name]))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def related_world(
    rng: np.random.Generator, n_kds: int, dim: int, size: int, dominance: float, program_weight: float,
    no_effect_share: float = 0.15, low_share: float = 0.25,
) -> RelatedWorld:
    """One world (see the module's docstring); sets named program_a, program_b, no_effect, low_magnitude."""
    default = _unit(rng.normal(size=dim))
    magnitude = rng.lognormal(-0.5, 1.0, n_kds)
    order = rng.permutation(n_kds)
    program = order[: 2 * size]
    rest = np.sort(order[2 * size :])
    band = 2 * size / dominance  # knockdowns of the rest in the program's band
    low = np.quantile(np.log(magnitude[rest]), 1 - band / rest.size)
    magnitude[program] = np.exp(rng.uniform(low, np.log(magnitude[rest]).max(), 2 * size))
    directions = _unit(rng.normal(size=(n_kds, dim)))
    if program_weight > 0:
        shared = _unit(rng.normal(size=dim))
        directions[program] = _unit(program_weight * shared + directions[program])
    noise = 0.05 * rng.normal(size=(n_kds, dim)) / math.sqrt(dim)
    features = default / (1 + magnitude[:, None]) + magnitude[:, None] * directions + noise
    measured = magnitude * np.exp(0.1 * rng.normal(size=n_kds))
    by_strength = rest[np.argsort(measured[rest])]  # weak as measured, as the other low-magnitude designs
    no_effect = rng.choice(by_strength[: round(no_effect_share * n_kds)], size, replace=False)
    low_pool = np.setdiff1d(by_strength[: round(low_share * n_kds)], no_effect)
    sets = {"program_a": np.sort(program[:size]), "program_b": np.sort(program[size:]),
            "no_effect": np.sort(no_effect), "low_magnitude": np.sort(rng.choice(low_pool, size, replace=False))}
    return RelatedWorld(features, measured, sets)
