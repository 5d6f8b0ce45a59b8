"""Control models: run a case again on copies of its model that training did not shape.

A hypothesis with ``controls: [randomized, shuffled_perts]`` runs every case on its model's controls too
(typed references: :class:`~hypocheck.models.ModelRef` with a ``control`` arm): the model-randomization test
of Adebayo et al. ("Sanity checks for saliency maps", NeurIPS 2018) and a copy whose knockdowns are routed to
each other's embeddings. A claim of presence that holds as strongly on a control is no evidence about what
training learned: the case keeps its verdict and is flagged *not specific to training* in every output.
Decided inside the case's item, like the verdict itself (the rule: :mod:`hypocheck.decisions`).
"""

from __future__ import annotations

import dataclasses

from .backend import ProbeContext, run_probe
from .cases import Case
from .decisions import judge, with_control_outcomes
from .models import CONTROL_KINDS
from .records import CaseVerdict

__all__ = ["CONTROL_KINDS", "control_case", "with_controls"]


def control_case(case: Case, kind: str) -> Case:
    """The same case on the control ``kind`` of its model (no planted truth applies to a control)."""
    model = case.model
    if model is None:
        raise ValueError(f"{case.case_id}: controls need a 'model' axis")
    return dataclasses.replace(case, axes={**case.axes, "model": str(model.with_control(kind))}, expected=None)


def with_controls(case: Case, verdict: CaseVerdict, context: ProbeContext) -> CaseVerdict:
    """``verdict`` with each control's verdict, effect and CI, and the flag when one holds as strongly
    (the rule: ``hypocheck.decisions.with_control_outcomes``)."""
    if not case.hypothesis.controls:
        return verdict
    judged: dict[str, CaseVerdict] = {}
    for kind in case.hypothesis.controls:
        twin = control_case(case, kind)
        judged[kind] = judge(twin, run_probe(context, twin)[0])
    return with_control_outcomes(verdict, judged)
