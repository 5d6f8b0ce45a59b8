"""Reference arms: the same case on the observed data and on simple baseline models, beside the model.

A structure in a model's output means little on its own: the same probe on the observed data says what the data
themselves show (the ceiling), and on a simple baseline trained on the same data (a per-perturbation mean, say)
what needs no learned mechanism (the floor). A hypothesis lists its arms (``references: [data, perturb_mean]``,
or the suite's default); every case runs again on each, is judged by the same rule, and keeps each arm's verdict,
effect and metrics beside its own, where expectations can name them (``references.perturb_mean.delta_cosine``).
An arm on which the probe's inputs cannot exist (the data have no Jacobian, a mean baseline no backbone layer)
is *not applicable*, with why. The rule that reads them: :mod:`hypocheck.decisions`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .backend import ProbeContext
from .cases import REFERENCES_PREFIX, Case
from .decisions import judge, not_applicable, reference_outcome
from .errors import NotApplicableError
from .models import DATA_ARM, ModelRef
from .records import ReferenceOutcome


def reference_case(case: Case, arm: str) -> Case:
    """The same case on reference arm ``arm`` (``data``: the observed data on the case's model's knockdowns; else
    a model of the suite), without expectations that name reference arms and without planted truth."""
    model = case.model
    if model is None:
        raise ValueError(f"{case.case_id}: reference arms need a 'model' axis")
    target = model.trained.data if arm == DATA_ARM else ModelRef(arm)
    own = tuple(e for e in case.expectations if not any(n.startswith(REFERENCES_PREFIX) for n in e.metrics_used()))
    return dataclasses.replace(case, axes={**case.axes, "model": str(target)}, expected=None, expectations=own)


def run_references(case: Case, context: ProbeContext) -> dict[str, ReferenceOutcome]:
    """Each of the case's reference arms, judged (the same probe, parameters and seed), or not applicable."""
    outcomes: dict[str, ReferenceOutcome] = {}
    for arm in case.references:
        twin = reference_case(case, arm)
        try:
            inputs = context.prepare(twin)
            result = case.probe.run(inputs, params=twin.params, rng=np.random.default_rng(twin.seed))
        except NotApplicableError as exc:
            outcomes[arm] = not_applicable(exc.message)
            continue
        judged = judge(twin, result)
        measured = dict(getattr(inputs, "measured", {}) or {})
        outcomes[arm] = reference_outcome(dataclasses.replace(judged, measured=measured))
    return outcomes
