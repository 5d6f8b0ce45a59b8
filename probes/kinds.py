"""The input kinds of this distribution's probes: what each probe takes, and the options that say how it is built.

Each kind is a frozen record (:class:`hypocheck.inputs.InputRecord`) whose fields are the arrays a probe takes
as keyword arguments; its ``options`` model is what a hypothesis's ``inputs:`` may set. The backend provides
each kind once (the suite backend: ``hypocheck.fixtures.providers``). This module holds no probe: it is the
contract between the probes and a backend, and the one module of this package a backend imports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hypocheck.inputs import InputRecord

# ---------------------------------------------------------------- options (a hypothesis's `inputs:`)

NullExcludes = Literal["other_sets", "related", "none"] | list[str]
"""Which gene sets' knockdowns a magnitude-matched null leaves out (the tested set's own members always stay)."""


class MatchedNullInputs(BaseModel):
    """Which knockdowns the magnitude-matched null may draw from."""

    model_config = ConfigDict(extra="forbid")
    null_excludes: NullExcludes = Field(
        "other_sets", description="Knockdowns the magnitude-matched null does not draw, because a set of the "
        "same program shares the tested set's effect magnitude and would carry its clustering into the null: "
        "other_sets = members of every configured gene set other than the tested one; related = members of the "
        "sets declared related to it (`related:` under the suite config's gene_sets); none = no knockdown left "
        "out; or a list of gene set names. The tested set's own members always stay candidates.")


class OutputFeatureInputs(MatchedNullInputs):
    """How the per-knockdown output features are made."""

    layer: int | None = Field(None, ge=1, description="Backbone block (1-based); default: the SAE's layer, "
                                                        "else the middle block.")
    features: Literal["auto", "sae", "residual", "delta_y"] = Field(
        "auto", description="SAE features of the residual stream at `layer`, the stream itself, or ΔY (the "
                            "model's output change, no layer). auto: SAE features when an SAE for this model is "
                            "configured, else the residual stream after the middle block; ΔY for a model without "
                            "backbone layers (a mean baseline) and for the data arm (the observed ΔY). Each case "
                            "names what it measured (summary.json: measured).")


class CrossModelInputs(BaseModel):
    """The second model of a cross-model comparison."""

    model_config = ConfigDict(extra="forbid")
    other_model: str = Field(..., description="The model whose embeddings are compared with the case's model.")


class KnockoutInputs(BaseModel):
    """Which genes are knocked out in silico, and in which two lines."""

    model_config = ConfigDict(extra="forbid")
    lines: tuple[str, str] | None = Field(None, description="The two cell lines (default: the first two configured).")
    genes: list[str] | None = Field(None, description="Input genes to knock out (default: the most expressed).")
    max_genes: int = Field(200, ge=2, description="At most this many genes when `genes` is not given.")
    min_mean: float = Field(0.1, ge=0, description="Expressed = control-sentence mean above this in both lines.")


Sampling = Literal["random", "stratified", "top_magnitude"]
"""How control cells are drawn for a sentence: seeded uniform draw, proportional over batch × total-expression
quintile, or the cells with the largest total expression."""


class SentenceInputs(BaseModel):
    """The control sentence the Jacobians are taken on; a case's ``sampling`` / ``cells`` axes override these."""

    model_config = ConfigDict(extra="forbid")
    sampling: Sampling = Field(
        "random", description="How control cells are drawn; 'random' with the suite's seed is the suite's sentence.")
    cells: int | None = Field(None, ge=1, description="Cells per sentence; default: the suite's count.")


class RoutingInputs(SentenceInputs):
    """Which Jacobian the routing probes correlate with ΔY."""

    jacobian: Literal["pert_repr", "onehot"] = Field(
        "pert_repr", description="∂Y/∂r at each knockdown's pert representation, or the one-hot Jacobian "
                                 "∂Y/∂p = J W_pert.")


class DifferenceInputs(RoutingInputs):
    """The two models whose routing coherence is compared."""

    models: list[str] | None = Field(None, min_length=2, max_length=2,
                                     description="[a, b]; default: the suite's first two models.")


class StabilityInputs(SentenceInputs):
    """The reference sentence and the knockdowns whose Jacobians are held and compared."""

    reference_sampling: Sampling = Field("random", description="Sampling of the reference sentence.")
    reference_cells: int | None = Field(None, ge=1, description="Cells of the reference sentence; default: the "
                                                                "suite's count.")
    max_kds: int = Field(32, ge=3, description="Hold the Jacobians of this many knockdowns, those with the largest "
                                               "‖ΔY‖ on the reference sentence.")
    curve: list[int] | None = Field(None, min_length=2, description="Cell counts whose Jacobians (same sampling) "
                                    "are compared with the reference too, drawn as a convergence curve.")


class PanelInputs(BaseModel):
    """A targeted panel: regulators whose input is moved, targets read out, concordant and control knockdowns."""

    model_config = ConfigDict(extra="forbid")
    regulators: list[str] = Field(..., min_length=1, description="Input genes moved in every control cell.")
    targets: list[str] = Field(..., min_length=1, description="Output genes whose response is read.")
    concordant_kds: list[str] = Field(..., min_length=1, description="Knockdowns expected to strengthen the "
                                                                      "coupling.")
    control_kds: list[str] = Field(..., min_length=1, description="Knockdowns of unrelated pathways.")


# ---------------------------------------------------------------- which knockdowns a routing analysis reads


def ward_labels(points: np.ndarray, n_clusters: int) -> np.ndarray:
    """Ward clustering (scipy ``linkage(method='ward')`` + ``fcluster(maxclust=n_clusters)``), labels 1 … n."""
    from scipy.cluster.hierarchy import fcluster, linkage

    points = np.asarray(points, dtype=np.float64)
    if points.shape[0] < 2:
        return np.ones(points.shape[0], dtype=int)
    return np.asarray(fcluster(linkage(points, method="ward"), t=n_clusters, criterion="maxclust"), dtype=int)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def routing_clusters(delta_y: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit ΔY rows (zero rows stay zero), their Ward clusters (cosine geometry) and ‖ΔY‖."""
    unit = unit_rows(delta_y)
    return unit, ward_labels(unit, n_clusters), np.linalg.norm(np.asarray(delta_y, dtype=np.float64), axis=1)


def routing_rows(
    clusters: np.ndarray, magnitude: np.ndarray, zero_norm: np.ndarray, selection: Literal["top", "all"],
    top_per_cluster: int,
) -> np.ndarray:
    """The knockdowns a routing analysis takes: those without a zero Jacobian (``zero_norm``, a mask), the
    ``top_per_cluster`` largest ‖ΔY‖ of each ΔY cluster (selection 'top') or all ('all'), ordered by cluster
    then by decreasing ‖ΔY‖.

    Part of the contract: the rule needs no Jacobian beyond which are zero, so a backend computes the
    Jacobians of these knockdowns alone (NB05 took the 225 it selected).
    """
    usable = np.flatnonzero(~np.asarray(zero_norm, dtype=bool))
    if selection == "top":
        chosen = [
            members[np.argsort(-magnitude[members], kind="stable")[:top_per_cluster]]
            for members in (usable[clusters[usable] == c] for c in np.unique(clusters[usable]))
        ]
        index = np.concatenate(chosen) if chosen else np.array([], dtype=int)
    else:
        index = usable
    return index[np.lexsort((-magnitude[index], clusters[index]))]


# ---------------------------------------------------------------- the records


@dataclass(frozen=True)
class SetEmbeddings(InputRecord):
    """Every knockdown's pert representation ``r_k``, the set's members among them, their names, each
    knockdown's effect magnitude ‖ΔY‖ (mean over the configured lines, for magnitude-matched nulls) and the
    knockdowns those nulls do not draw."""

    embeddings: np.ndarray
    members: np.ndarray
    names: Sequence[str] | None = None
    magnitude: np.ndarray | None = None
    null_excluded: np.ndarray | None = None
    options: ClassVar[type[BaseModel]] = MatchedNullInputs


@dataclass(frozen=True)
class PairedEmbeddings(InputRecord):
    """The same knockdowns' representations in two models (rows aligned by name), and a set's members."""

    embeddings_a: np.ndarray
    embeddings_b: np.ndarray
    members: np.ndarray | None = None
    options: ClassVar[type[BaseModel]] = CrossModelInputs


@dataclass(frozen=True)
class LayerFeatures(InputRecord):
    """Per knockdown: layer (or SAE) features averaged over the control sentence, its ‖ΔY‖, the set's members, and
    the knockdowns the magnitude-matched null does not draw (members of related gene sets)."""

    features: np.ndarray
    members: np.ndarray
    magnitude: np.ndarray
    noeffect_floor: float | None = None
    null_excluded: np.ndarray | None = None
    options: ClassVar[type[BaseModel]] = OutputFeatureInputs


@dataclass(frozen=True)
class KnockoutProfiles(InputRecord):
    """In-silico knockout response profiles of the same genes in two lines, and planted regulator groups."""

    profiles_a: np.ndarray
    profiles_b: np.ndarray
    gene_names: Sequence[str]
    shared_regulators: Sequence[int] | None = None
    specific_regulators: Sequence[int] | None = None
    options: ClassVar[type[BaseModel]] = KnockoutInputs


@dataclass(frozen=True)
class RoutingArrays(InputRecord):
    """ΔY and the pert representation of every knockdown on one sentence of one line, and the Jacobian Gram of
    the knockdowns in ``gram_rows`` (``None``: of every knockdown)."""

    delta_y: np.ndarray
    jacobian_gram: np.ndarray
    names: Sequence[str]
    pert_repr: np.ndarray
    gram_rows: np.ndarray | None = None
    options: ClassVar[type[BaseModel]] = RoutingInputs


@dataclass(frozen=True)
class RoutingPair(InputRecord):
    """The routing arrays of two models on the same line (``_a`` and ``_b``)."""

    delta_y_a: np.ndarray
    jacobian_gram_a: np.ndarray
    names_a: Sequence[str]
    pert_repr_a: np.ndarray
    delta_y_b: np.ndarray
    jacobian_gram_b: np.ndarray
    names_b: Sequence[str]
    pert_repr_b: np.ndarray
    gram_rows_a: np.ndarray | None = None
    gram_rows_b: np.ndarray | None = None
    options: ClassVar[type[BaseModel]] = DifferenceInputs


@dataclass(frozen=True)
class HeldJacobians(InputRecord):
    """Jacobians of the strongest knockdowns on a sentence and on the reference one (and along a cell-count
    curve), with their ΔY."""

    jacobians: np.ndarray
    reference_jacobians: np.ndarray
    delta_y: np.ndarray
    curve: Mapping[int, np.ndarray] | None = None
    options: ClassVar[type[BaseModel]] = StabilityInputs


@dataclass(frozen=True)
class InputDerivatives(InputRecord):
    """∂Ȳ[target]/∂X[regulator] under a panel's concordant and control knockdowns."""

    derivatives: np.ndarray
    kd_names: Sequence[str]
    concordant: Sequence[int]
    control: Sequence[int]
    regulators: Sequence[str]
    targets: Sequence[str]
    options: ClassVar[type[BaseModel]] = PanelInputs
