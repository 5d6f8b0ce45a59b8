"""The reporters the plugin registers, each a small plugin on the engine's hooks (``hypocheck.hookspecs``):

- terminal lines: ``hypocheck.summary.TerminalLines`` (run_finished; the ``hypocheck verdicts`` section);
- summary files: ``hypocheck.summary.SummaryFiles`` (run_finished; summary.json, summary.md);
- baselines and drift: ``hypocheck.baseline.BaselineReporter`` (run_finished; ``--save-baseline``, the
  ``hypocheck drift`` section);
- Allure results: ``hypocheck.allure_report.AllureReporter`` (case_judged on the process that ran the case,
  run_finished on the controller);
- plots, as Allure PNG attachments: :class:`PlotAttachments` (case_judged);
- progress lines: ``hypocheck.plugin.ProgressPlugin`` (case_recorded).

A project adds its own the same way: a module with ``pytest_hypocheck_case_recorded`` and
``pytest_hypocheck_run_finished`` functions, loaded with ``-p module`` (see ``docs/user-guide.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from .cases import Case
from .records import CaseVerdict
from .registry import ProbeResult


def _array(inputs: Any, name: str) -> np.ndarray | None:
    """A named array of a probe's inputs (a typed input record's field, or a mapping's key)."""
    values = inputs if isinstance(inputs, Mapping) else getattr(inputs, "values", None)
    value = values.get(name) if isinstance(values, Mapping) else getattr(inputs, name, None)
    return None if value is None else np.asarray(value)


def case_plots(case: Case, verdict: CaseVerdict, result: ProbeResult, inputs: Any) -> list[tuple[str, bytes | str]]:
    """Every plot of a judged case as ``(title, png)`` (``(title, error text)`` for a plot that failed): each one
    the probe's result suits (``hypocheck.plots``), and the model beside its reference arms when it has them."""
    from .plots import PlotInfo, arms_figure, png_bytes, render_all

    groups = result.arrays.get("groups")
    observed = case.probe.metrics_of_kind("observed")
    info = PlotInfo(title=f"{case.hypothesis.id} [{case.label}]" if case.axes else case.hypothesis.id,
                    metrics=verdict.metrics, members=_array(inputs, "members"),
                    labels=None if groups is None else tuple(str(g) for g in np.asarray(groups).ravel()),
                    p_metric=case.probe.p, observed_metric=observed[0] if observed else None)
    plots = list(render_all(result, info))
    arms = [("model", verdict.effect, verdict.ci),
            *((arm, ref.effect, ref.ci) for arm, ref in verdict.references.items())]
    figure = arms_figure(info.title, str(verdict.effect_metric), arms, verdict.min_effect or verdict.margin)
    if figure is not None:
        plots.append(("beside the data and baselines", png_bytes(figure)))
    return plots


class PlotAttachments:
    """Reporter: every plot of a case (:func:`case_plots`), attached to the case's Allure result as PNG, on the
    process that ran the case (matplotlib is imported by the first case reported)."""

    @pytest.hookimpl(trylast=True)  # after the Allure reporter's description and metrics
    def pytest_hypocheck_case_judged(self, case: Case, verdict: CaseVerdict, result: ProbeResult,
                                     inputs: Any) -> None:
        import allure

        for title, png in case_plots(case, verdict, result, inputs):
            kind = allure.attachment_type.PNG if isinstance(png, bytes) else allure.attachment_type.TEXT
            allure.attach(png, name=title, attachment_type=kind)


def register(config: pytest.Config) -> None:
    """Register the shipped reporters: Allure and plots when the run writes Allure results (every process);
    terminal lines, summary files and baselines on the controller."""
    from .allure_report import AllureReporter, results_dir

    manager = config.pluginmanager
    alluredir = results_dir(config)
    if alluredir is not None:
        manager.register(AllureReporter(alluredir), "hypocheck-allure")
        manager.register(PlotAttachments(), "hypocheck-plots")
    if not hasattr(config, "workerinput"):
        from .baseline import BaselineReporter
        from .summary import SummaryFiles, TerminalLines

        manager.register(TerminalLines(), "hypocheck-terminal")
        manager.register(SummaryFiles(), "hypocheck-summary-files")
        manager.register(BaselineReporter(), "hypocheck-baseline")
