"""Floating-point operation counts of the ST model's forward pass and of forward-mode Jacobian work.

The benchmarks judge a measured time against the time these counts take at a measured rate (the floor no
implementation beats by much): ``tools/bench/gpu_run.py`` budgets its stages with them, and
``tools/bench/suite_e2e.py`` states the limit each claim is measured against.

Counted: matrix products (2 operations per multiply-add) and attention's two products; elementwise work
(norms, activations, residual adds) is left out, so the floor is a little low. At ST-HVG-Replogle sizes
(G = 2000, H = 328, 8 layers, q/k/v 768, MLP 3072, 64 cells) one forward pass of a sentence is 4.4 GFLOP and
one JVP column (one knockdown, one input direction of ``r``) 4.4 GFLOP: the tangent runs the backbone and the
output projection, not the encoders, but attention's tangent costs twice its primal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """What sizes an ST model's arithmetic: genes in/out, hidden, layers, q/k/v width, MLP width, cells."""

    genes: int = 2000
    hidden: int = 328
    layers: int = 8
    attention: int = 768  # heads × head_dim
    mlp: int = 3072
    cells: int = 64

    @classmethod
    def of_model(cls, model: Any, cells: int) -> Sizes:
        """The sizes of an arc-state ``StateTransitionPerturbationModel`` (its Llama backbone's config)."""
        cfg = model.transformer_backbone.config
        return cls(genes=int(model.output_dim), hidden=int(cfg.hidden_size), layers=int(cfg.num_hidden_layers),
                   attention=int(cfg.num_attention_heads * cfg.head_dim), mlp=int(cfg.intermediate_size),
                   cells=cells)

    def _block(self) -> int:
        """Multiply-adds of one layer's projections per cell: q, k, v, o and the gated MLP."""
        return 4 * self.hidden * self.attention + 3 * self.hidden * self.mlp

    def forward(self) -> int:
        """One forward pass of one sentence: basal encoder, backbone, output projection."""
        s = self.cells
        per_cell = 2 * (self.genes * self.hidden + self.layers * self._block() + self.hidden * self.genes)
        return s * per_cell + 4 * self.layers * s * s * self.attention

    def forward_to(self, layer: int) -> int:
        """A forward pass of one sentence stopped after block ``layer`` (layer features): basal encoder and the
        first ``layer`` blocks."""
        s = self.cells
        return s * 2 * (self.genes * self.hidden + layer * self._block()) + 4 * layer * s * s * self.attention

    def jvp_column(self) -> int:
        """One (knockdown, direction) column of ``∂Ȳ/∂r``: the tangent through backbone and output projection."""
        s = self.cells
        products = s * 2 * (self.layers * self._block() + self.hidden * self.genes)
        return products + 8 * self.layers * s * s * self.attention

    def sketched_gram(self, knockdowns: int, directions: int) -> int:
        """A Gram of ``knockdowns`` from ``directions`` input directions: its JVP columns and their products."""
        return knockdowns * directions * self.jvp_column() + self.gram_accumulation(knockdowns, directions)

    def gram_accumulation(self, knockdowns: int, directions: int) -> int:
        """The Gram's products: one ``(K × G) · (G × K)`` per direction."""
        return 2 * knockdowns * knockdowns * self.genes * directions


def seconds(flop: float, rate: float) -> float:
    """``flop`` at ``rate`` operations per second."""
    return flop / rate if rate > 0 else float("inf")
