"""Plots of a probe's result, as PNG bytes, for reports (matplotlib, Agg canvas, no pyplot state).

The convention: a probe puts what it would show a person into its
``ProbeResult`` — ``null`` (samples of the statistic under the null) and
named ``arrays``. This module maps known names to plot functions:

- ``null`` (with ``arrays['uniform_null']`` + ``arrays['matched_null']`` both
  drawn when present) → null distribution, observed value marked;
- ``arrays['similarity']`` (n × n) → similarity heatmap, the set's members
  first, or grouped by ``arrays['groups']`` (one set label per row);
- ``arrays['spearman']`` (per gene) → histogram of per-gene knockout Spearman r;
- ``arrays['jacobian']`` + ``arrays['delta_y']`` → scatter of paired values (routing: the Jacobian and
  ΔY similarity of each knockdown pair);
- ``arrays['cell_counts']`` + ``arrays['convergence']`` ((counts,) or
  (counts × repeats)) → convergence of a metric with the number of cells;
- ``arrays['purity']``, ``arrays['cosine']`` → histograms of per-member / per-knockdown values.

Other probes add their own with :func:`plot_for`::

    @plot_for("attention", title="attention by layer")
    def attention_heatmap(result: ProbeResult, info: PlotInfo) -> Figure:
        fig, ax = new_figure()
        ax.imshow(result.arrays["attention"])
        return fig

A plot function returns ``None`` when the data does not suit it (a plot is
never an error for the case: :func:`render_all` reports a plot that raised as
a failed plot, and the case goes on).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .registry import ProbeResult

PlotFn = Callable[[ProbeResult, "PlotInfo"], Figure | None]


@dataclass(frozen=True)
class PlotInfo:
    """What a plot may need beyond the result: the case's metrics, its set members, a title, and which metrics
    its probe declares as the p-value and as the observed statistic (``ProbeSpec.metrics_of_kind``)."""

    title: str = ""
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    members: np.ndarray | None = None
    labels: tuple[str, ...] | None = None
    p_metric: str | None = None
    observed_metric: str | None = None


@dataclass(frozen=True)
class PlotSpec:
    """A registered plot: its name, the attachment's title, the arrays it needs, and the function."""

    name: str
    title: str
    needs: tuple[str, ...]
    fn: PlotFn


_PLOTS: dict[str, PlotSpec] = {}


def plot_for(*needs: str, name: str | None = None, title: str | None = None) -> Callable[[PlotFn], PlotFn]:
    """Register ``fn`` to plot results holding all of ``needs`` (array names, or ``'null'``)."""

    def register(fn: PlotFn) -> PlotFn:
        key = name or title or "-".join(needs)
        _PLOTS[key] = PlotSpec(key, title or key, tuple(needs), fn)
        return fn

    return register


def registered_plots() -> dict[str, PlotSpec]:
    """All registered plots by name."""
    return dict(_PLOTS)


def _has(result: ProbeResult, key: str) -> bool:
    return result.null is not None if key == "null" else key in result.arrays


def new_figure(width: float = 6.0, height: float = 4.0) -> tuple[Figure, Axes]:
    """A figure on an Agg canvas (no pyplot, no global state) and its one axes."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def render_all(result: ProbeResult, info: PlotInfo) -> Iterator[tuple[str, bytes | str]]:
    """``(title, png)`` for every registered plot the result suits; ``(title, error text)`` for one that raised."""
    for spec in _PLOTS.values():
        if not all(_has(result, key) for key in spec.needs):
            continue
        try:
            fig = spec.fn(result, info)
        except Exception as exc:  # a broken plot must not break the case it illustrates
            yield spec.title, f"plot {spec.name!r} failed: {type(exc).__name__}: {exc}"
            continue
        if fig is not None:
            yield spec.title, png_bytes(fig)


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def observed_value(result: ProbeResult, info: PlotInfo) -> float | None:
    """The observed statistic the null is for: ``arrays['observed']``, else the metric the probe declares
    ``observed`` (``None`` when neither is there: the plot then draws the null alone)."""
    if "observed" in result.arrays:
        given = float(np.asarray(result.arrays["observed"], dtype=float).ravel()[0])
        return given if math.isfinite(given) else None
    if info.observed_metric is None:
        return None
    metrics: dict[str, float | None] = {**result.metrics, **info.metrics}
    value = metrics.get(info.observed_metric)
    return float(value) if value is not None and math.isfinite(value) else None


def set_title(ax: Axes, text: str, width: int = 64) -> None:
    """A title wrapped onto as many lines as it needs: never cut at the figure's edge."""
    ax.set_title(textwrap.fill(text, width), fontsize=9)


@plot_for("null", name="null_distribution", title="null distribution")
def null_distribution(result: ProbeResult, info: PlotInfo) -> Figure | None:
    """Histogram of the null (and of the uniform and matched nulls when both exist), observed value marked."""
    series = {result.null_label: _finite(result.null)}
    if "uniform_null" in result.arrays and "matched_null" in result.arrays:
        series = {"uniform null": _finite(result.arrays["uniform_null"]),
                  "magnitude-matched null": _finite(result.arrays["matched_null"])}
    if not any(s.size for s in series.values()):
        return None
    fig, ax = new_figure()
    values = np.concatenate([s for s in series.values() if s.size])
    bins = np.histogram_bin_edges(values, bins=min(60, max(10, values.size // 20)))
    for label, sample in series.items():
        if sample.size:
            ax.hist(sample, bins=list(bins), alpha=0.55, label=f"{label} (n = {sample.size})")
    observed = observed_value(result, info)
    if observed is not None:
        ax.axvline(observed, color="crimson", linewidth=2, label=f"observed = {observed:.4g}")
        lo, hi = min(float(bins[0]), observed), max(float(bins[-1]), observed)
        pad = 0.04 * (hi - lo) if hi > lo else 1.0
        ax.set_xlim(lo - pad, hi + pad)
    p_value = info.metrics.get(info.p_metric) if info.p_metric else None
    if p_value is not None and math.isfinite(p_value):
        ax.text(0.99, 0.97, f"p = {p_value:.3g}", transform=ax.transAxes, ha="right", va="top")
    ax.set_xlabel("statistic")
    ax.set_ylabel("null draws")
    set_title(ax, info.title or "null distribution")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def set_order(n: int, members: np.ndarray | None, labels: tuple[str, ...] | None) -> tuple[np.ndarray, list[int]]:
    """Row order with set members first (or grouped by label), and the boundaries between groups."""
    if labels is not None and len(labels) == n:
        order = np.array(sorted(range(n), key=lambda i: (labels[i] == "", labels[i], i)), dtype=int)
        ordered = [labels[i] for i in order]
        return order, [i for i in range(1, n) if ordered[i] != ordered[i - 1]]
    if members is None or not np.size(members):
        return np.arange(n), []
    inside = np.unique(np.asarray(members, dtype=int))
    inside = inside[(inside >= 0) & (inside < n)]
    rest = np.setdiff1d(np.arange(n), inside)
    return np.concatenate([inside, rest]), [int(inside.size)]


@plot_for("similarity", name="similarity_heatmap", title="similarity heatmap")
def similarity_heatmap(result: ProbeResult, info: PlotInfo) -> Figure | None:
    """The knockdown × knockdown similarity, ordered so that the set's members come first."""
    sim = np.asarray(result.arrays["similarity"], dtype=float)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] < 2:
        return None
    order, cuts = set_order(sim.shape[0], info.members, info.labels)
    fig, ax = new_figure(6.0, 5.2)
    image = ax.imshow(sim[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    for cut in cuts:
        ax.axhline(cut - 0.5, color="black", linewidth=0.8)
        ax.axvline(cut - 0.5, color="black", linewidth=0.8)
    fig.colorbar(image, ax=ax, shrink=0.8, label="cosine")
    what = "set members first" if info.members is not None and info.labels is None else "grouped by set"
    set_title(ax, f"{info.title or 'similarity'} ({what})")
    ax.set_xlabel("knockdown")
    ax.set_ylabel("knockdown")
    return fig


def _histogram(values: np.ndarray, xlabel: str, title: str, marks: Mapping[str, float] | None = None) -> Figure | None:
    values = _finite(values)
    if values.size == 0:
        return None
    fig, ax = new_figure()
    ax.hist(values, bins=min(50, max(8, values.size // 4)), color="steelblue", alpha=0.8)
    ax.axvline(float(values.mean()), color="crimson", linewidth=2, label=f"mean = {values.mean():.3g}")
    for label, value in (marks or {}).items():
        ax.axvline(value, color="grey", linestyle="--", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    set_title(ax, f"{title} (n = {values.size})")
    ax.legend(fontsize=8)
    return fig


@plot_for("spearman", name="spearman_histogram", title="per-gene knockout Spearman")
def spearman_histogram(result: ProbeResult, info: PlotInfo) -> Figure | None:
    """Per-gene Spearman r between the knockout responses of two cell lines."""
    return _histogram(result.arrays["spearman"], "Spearman r", info.title or "per-gene knockout Spearman r",
                      {"r = 0": 0.0})


@plot_for("purity", name="purity_histogram", title="neighbour purity")
def purity_histogram(result: ProbeResult, info: PlotInfo) -> Figure | None:
    """Per-member share of nearest neighbours in the same set."""
    chance = info.metrics.get("chance_purity")
    marks = {f"chance = {chance:.3g}": chance} if chance is not None and math.isfinite(chance) else None
    return _histogram(result.arrays["purity"], "neighbour purity", info.title or "neighbour purity", marks)


@plot_for("cosine", name="cosine_histogram", title="per-knockdown cosine")
def cosine_histogram(result: ProbeResult, info: PlotInfo) -> Figure | None:
    """Per-knockdown cosine (e.g. the same knockdown in two models)."""
    return _histogram(result.arrays["cosine"], "cosine", info.title or "per-knockdown cosine", {"0": 0.0})


@plot_for("jacobian", "delta_y", name="jacobian_vs_delta_y", title="Jacobian vs ΔY")
def jacobian_scatter(result: ProbeResult, info: PlotInfo) -> Figure | None:
    """Paired Jacobian and ΔY values, one point per entry (routing: per knockdown pair, their similarities)."""
    x = np.asarray(result.arrays["jacobian"], dtype=float).ravel()
    y = np.asarray(result.arrays["delta_y"], dtype=float).ravel()
    if x.size != y.size or x.size < 2:
        return None
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2:
        return None
    fig, ax = new_figure(5.0, 5.0)
    ax.scatter(x, y, s=4, alpha=0.3, linewidths=0)
    r = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    ax.set_xlabel("Jacobian similarity")
    ax.set_ylabel("ΔY similarity")
    set_title(ax, f"{info.title or 'Jacobian vs ΔY'}: pairwise similarities (Pearson r = {r:.3g}, {x.size} pairs)")
    return fig


@plot_for("cell_counts", "convergence", name="convergence_curve", title="cell-count convergence")
def convergence_curve(result: ProbeResult, info: PlotInfo) -> Figure | None:
    """A metric against the number of cells: ``convergence`` is (counts,) or (counts × repeats)."""
    counts = np.asarray(result.arrays["cell_counts"], dtype=float).ravel()
    values = np.asarray(result.arrays["convergence"], dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    if values.shape[0] != counts.size or counts.size < 2:
        return None
    fig, ax = new_figure()
    mean = np.nanmean(values, axis=1)
    ax.plot(counts, mean, marker="o", label="mean")
    if values.shape[1] > 1:
        ax.fill_between(counts, np.nanmin(values, axis=1), np.nanmax(values, axis=1), alpha=0.25, label="range")
    ax.set_xscale("log")
    ax.set_xticks(counts, [f"{c:g}" for c in counts])
    ax.minorticks_off()
    ax.set_xlabel("cells")
    ax.set_ylabel("metric")
    set_title(ax, info.title or "convergence with the number of cells")
    ax.legend(fontsize=8)
    return fig


def arms_figure(title: str, metric: str, arms: Sequence[tuple[str, float | None, tuple[float | None, float | None]]],
                floor: float | None = None) -> Figure | None:
    """The effect with its 95% CI on the model and on each reference arm, side by side (``None`` when no arm has
    a finite effect besides the model); the minimum effect of interest dashed."""
    shown = [(name, value, ci) for name, value, ci in arms if value is not None and math.isfinite(value)]
    if len(shown) < 2:
        return None
    fig, ax = new_figure(1.6 + 1.1 * len(shown), 3.6)
    for x, (_, value, (low, high)) in enumerate(shown):
        ax.bar(x, value, color="#4878a8" if x == 0 else "#a0a0a0")
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
            ax.errorbar(x, value, yerr=[[value - low], [high - value]], color="black", capsize=4)
    if floor is not None:
        ax.axhline(floor, color="#c44e52", linestyle="--", linewidth=1, label=f"minimum effect {floor:g}")
        ax.legend(fontsize=8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(shown)), [name for name, _, _ in shown], fontsize=8)
    ax.set_ylabel(metric)
    set_title(ax, f"{title}: the model beside the data and baselines", width=48)
    return fig
