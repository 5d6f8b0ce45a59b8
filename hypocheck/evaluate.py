"""One case from its inputs to its final verdict, the same path for every caller (the pytest plugin's items,
benchmarks): inputs → probe → reference arms → verdict (decided once) → controls → stability over control samples.
"""

from __future__ import annotations

from typing import Any

from . import progress
from .backend import ProbeContext, run_probe
from .cases import Case
from .controls import with_controls
from .decisions import judge, with_inputs
from .records import CaseVerdict
from .references import run_references
from .registry import ProbeResult
from .stability import with_samples


def evaluate_case(case: Case, context: ProbeContext) -> tuple[CaseVerdict, ProbeResult, Any]:
    """The case's verdict, the probe's live result and the inputs it ran on (``None`` when the probe is not
    applicable to the case's model: then the result is inconclusive with the reason); each step under a progress
    stage."""
    result, inputs = run_probe(context, case)  # inconclusive, no inputs, where the model cannot have them
    with progress.stage("reference arms"):
        references = run_references(case, context)
    with progress.stage("verdict and controls"):
        # how the inputs were computed and what they measure, beside the verdict
        judged = with_inputs(judge(case, result, references), inputs)
        verdict = with_controls(case, judged, context)
    with progress.stage("stability"):
        verdict = with_samples(case, verdict, context, references)
    return verdict, result, inputs
