"""Verdict stability: a case rerun on other samples of its inputs (control cells drawn with other seeds).

The control sentence a case runs on is one sample of the line's control cells. With ``stability: {seeds: N}`` (a
hypothesis's, or the suite's default) every case runs on N samples, its own first, each judged by the same rule
with the same reference arms; the record says how many give the case's verdict, and a case whose verdict flips is
labelled *fragile* in every output. The context must be able to draw other samples (the backend's
:class:`~hypocheck.backend.Resamplable` capability). The rule: :mod:`hypocheck.decisions`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .backend import ProbeContext, Resamplable
from .cases import Case
from .decisions import judge, stability_of, with_stability
from .errors import HypocheckError
from .records import CaseVerdict, ReferenceOutcome


def with_samples(case: Case, verdict: CaseVerdict, context: ProbeContext,
                 references: Mapping[str, ReferenceOutcome]) -> CaseVerdict:
    """``verdict`` with its stability over ``case.stability_samples`` control samples (itself the first)."""
    n = case.stability_samples
    if n < 2:
        return verdict
    if not isinstance(context, Resamplable):
        raise HypocheckError(f"stability: this backend's context ({type(context).__name__}) cannot draw other "
                             "control samples", case.location)
    labels, verdicts = [context.resampled(0)[1]], [verdict]
    for sample in range(1, n):
        other, label = context.resampled(sample)
        result = case.probe.run(other.prepare(case), params=case.params, rng=np.random.default_rng(case.seed))
        labels.append(label)
        verdicts.append(judge(case, result, references))
    return with_stability(verdict, stability_of(labels, verdicts))
