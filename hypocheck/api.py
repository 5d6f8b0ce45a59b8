"""The notebook interface: run hypothesis files from Python and get the cases and claims as tables.

Usage (in Jupyter, or any Python)::

    import hypocheck
    result = hypocheck.run(["hypotheses/paper"], suite="suite.yaml")
    result                     # the claim and case tables, rendered
    result.claims              # a pandas DataFrame, one row per claim
    result.cases[result.cases.verdict == "fail"]

It is the pytest run itself (in this process, the plugin and its one judge), so a notebook and ``pytest`` give
the same verdicts; the reports (summary files, Allure results when asked) are written as a pytest run writes them.
"""

from __future__ import annotations

import base64
import difflib
import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .cases import Case
from .errors import HypocheckError
from .formatting import fmt
from .records import CaseVerdict, RunRecord
from .registry import ProbeResult
from .reporters import case_plots
from .summary import references_text, stability_text

if TYPE_CHECKING:
    import pandas as pd


Plot = tuple[str, bytes | str]
"""A plot's title and its PNG (or, for a plot that failed, why)."""


class _Collect:
    """The plugin ``run`` adds: it keeps the run record the engine hands to every reporter, and each case's plots
    (made in this process, so ``run`` keeps them only without xdist workers)."""

    def __init__(self, plots: bool) -> None:
        self.run: RunRecord | None = None
        self.plots: dict[str, list[Plot]] | None = {} if plots else None

    def pytest_hypocheck_case_judged(self, case: Case, verdict: CaseVerdict, result: ProbeResult, inputs: Any) -> None:
        if self.plots is not None:
            self.plots[verdict.id] = case_plots(case, verdict, result, inputs)

    def pytest_hypocheck_run_finished(self, config: pytest.Config, run: RunRecord) -> None:
        self.run = run


@dataclass(frozen=True)
class Result:
    """A finished run: its record (``run``, as summary.json holds it), pytest's exit code, and each case's plots
    (case id → ``(title, png)`` list; shown inline in Jupyter, under each case)."""

    run: RunRecord
    exit_code: int
    plots: Mapping[str, Sequence[Plot]] = field(default_factory=dict)

    def show(self, case_id: str) -> None:
        """Display one case's plots (in Jupyter; elsewhere their titles are printed)."""
        if case_id not in self.plots:
            close = difflib.get_close_matches(case_id, list(self.plots), n=3, cutoff=0.5)
            raise KeyError(f"no case {case_id!r} with plots in this result"
                           + (f"; did you mean {', '.join(map(repr, close))}?" if close else
                              f"; {len(self.plots)} cases have plots (see result.cases.id)"))
        try:
            from IPython.display import Image, display
        except ImportError:  # not in a notebook
            print("\n".join(title for title, _ in self.plots[case_id]))
            return
        for _, png in self.plots[case_id]:
            display(Image(png) if isinstance(png, bytes) else png)

    @property
    def cases(self) -> pd.DataFrame:
        """One row per case: id, hypothesis, its axes, verdict, effect with CI, p (raw, within the claim, BH across
        the run), what it measured, and why."""
        import pandas as pd

        rows = []
        for c in self.run.cases:
            rows.append({"id": c.id, "hypothesis": c.hypothesis, **{k: v for k, v in c.axes.items()},
                         "verdict": c.verdict, "claim_kind": c.claim_kind, "effect_metric": c.effect_metric,
                         "effect": c.effect, "ci_low": c.ci[0], "ci_high": c.ci[1], "p": c.p, "p_adj": c.p_adj,
                         "p_run_bh": c.p_run_bh, "margin": c.margin, "truth": c.truth,
                         **{f"{arm}_effect": ref.effect for arm, ref in c.references.items()},
                         **{f"{arm}_verdict": ref.verdict for arm, ref in c.references.items()},
                         "stability": stability_text(c), "fragile": c.stability.fragile if c.stability else None,
                         "measured": "; ".join(f"{k}: {v}" for k, v in c.measured.items()), "reason": c.reason})
        return pd.DataFrame(rows)

    @property
    def claims(self) -> pd.DataFrame:
        """One row per claim (hypothesis): its verdict by its rule, the counts of its cases, and why."""
        import pandas as pd

        return pd.DataFrame([{"hypothesis": c.hypothesis, "claim": c.claim, "verdict": c.verdict,
                              **{k: n for k, n in c.counts.items()}, "reason": c.reason} for c in self.run.claims])

    def _repr_html_(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in self.run.counts.items())
        head = f"<p><b>hypocheck</b>: {html.escape(counts)}"
        if self.run.status is not None and self.run.status.state != "complete":
            head += f" ({html.escape(self.run.status.state)}: {html.escape(self.run.status.why)})"
        claims = "".join(f"<tr><td><code>{html.escape(c.hypothesis)}</code></td><td><b>{c.verdict}</b></td>"
                         f"<td>{html.escape(c.reason)}</td></tr>" for c in self.run.claims)
        cases = "".join(f"<tr><td><code>{html.escape(c.id)}</code></td><td><b>{c.verdict}</b></td>"
                        f"<td>{html.escape(str(c.effect_metric))} = {fmt(c.effect)} [{fmt(c.ci[0])}, {fmt(c.ci[1])}]"
                        f"</td><td>{fmt(c.p)}</td><td>{html.escape(references_text(c))}</td>"
                        f"<td>{html.escape(stability_text(c))}</td></tr>" for c in self.run.cases)
        return (head + "</p><table><tr><th>claim</th><th>verdict</th><th>rule and cases</th></tr>" + claims
                + "</table><table><tr><th>case</th><th>verdict</th><th>effect [95% CI]</th><th>p</th>"
                + "<th>beside the data and baselines</th><th>stability</th></tr>" + cases + "</table>"
                + self._plots_html())

    def _plots_html(self) -> str:
        """Each case's plots, inline, under a fold per case."""
        out = []
        for case_id, plots in self.plots.items():
            images = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
                             f'alt="{html.escape(title)}"/><figcaption>{html.escape(title)}</figcaption></figure>'
                             if isinstance(png, bytes) else f"<p>{html.escape(png)}</p>" for title, png in plots)
            if images:
                out.append(f"<details><summary>plots: <code>{html.escape(case_id)}</code></summary>{images}</details>")
        return "".join(out)

    def __repr__(self) -> str:
        return f"Result({', '.join(f'{n} {k}' for k, n in self.run.counts.items())}; exit code {self.exit_code})"


PathLike = str | os.PathLike[str]


def run(paths: Sequence[PathLike] | PathLike, *, suite: PathLike | None = None, reports: PathLike | None = None,
        args: Sequence[str] = (), plots: bool = True) -> Result:
    """Run the hypothesis files or folders ``paths`` (with the suite config ``suite``) as ``pytest`` would, in this
    process, and return the result; ``reports``: where the summary files go; ``args``: more pytest arguments
    (``-k``, ``-m``, ``--baseline NAME`` …); ``plots``: keep each case's plots (shown inline in Jupyter). Raises
    ``HypocheckError`` when nothing ran (no case was collected, or the configuration was refused: pytest's message
    is printed above)."""
    targets = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    argv = [*(str(Path(p)) for p in targets), "-p", "no:cacheprovider", "-q"]
    if suite is not None:
        argv += ["--suite-config", str(suite)]
    if reports is not None:
        argv += ["--hypocheck-reports", str(reports)]
    collect = _Collect(plots)
    code = pytest.main([*argv, *args], plugins=[collect])
    if collect.run is None:
        raise HypocheckError(f"no case ran (pytest exit code {int(code)}): see pytest's output above",
                             hint="check the paths and the suite config; `pytest --co` lists what is collected")
    return Result(collect.run, int(code), collect.plots or {})
