"""The pytest items of a hypothesis file: one per case, or one standing for a file that does not load.

A case's evidence (its inputs, the probe's result, the verdict) is built in the item's **setup**, after the
fixtures (the models, the data); its **call** turns the verdict into the pytest outcome. So a case that cannot
run is pytest's *error* (``E``, ``errors`` in pytest's counts and JUnit's ``<error>``), as its verdict (error)
says, and a claim that does not hold is pytest's *failure* — the mapping of ``hypocheck.decisions.case_outcome``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple, cast

import pytest

from . import progress
from .backend import ProbeContext
from .baseline import case_fingerprints
from .cases import Case
from .decisions import case_outcome
from .errors import HypocheckError, Location
from .evaluate import evaluate_case
from .records import CaseVerdict, error_verdict
from .registry import ProbeResult
from .runsummary import ENV_KEY, RECORD_KEY, wants_fingerprints
from .summary import failure_text


class BrokenFileItem(pytest.Item):
    """Stands for a hypothesis file that could not be loaded: an error (raised in setup) with the file:line
    message."""

    def __init__(self, *, error: HypocheckError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def setup(self) -> None:
        self.user_properties.append((RECORD_KEY, error_record(None, self.nodeid, self.error, str(self.path),
                                                              self.nodeid)))
        raise self.error

    def runtest(self) -> None:  # never reached: setup raised
        raise self.error

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, (self.error.location.line or 1) - 1 if self.error.location else 0, self.name


class Judged(NamedTuple):
    """What a case's setup built: the probe's inputs and result, and the verdict decided on them."""

    inputs: Any
    result: ProbeResult
    verdict: CaseVerdict


class CaseItem(pytest.Function):
    """A pytest Function running one case; fixtures resolve through pytest as usual, then the setup judges the
    case (an exception there is the case's error), and the call concludes (:func:`run_case`)."""

    case: Case
    judged: Judged | None = None

    def setup(self) -> None:
        with progress.stage("loading"):  # the fixtures: the models, the data
            super().setup()
        if not self.config.option.setuponly:
            self.judged = judge_case(self, cast(ProbeContext, self.funcargs["hypocheck_context"]))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, (self.case.location.line or 1) - 1, self.case.case_id

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, HypocheckError):
            return f"{self.case.case_id}: {excinfo.value}"
        return super().repr_failure(excinfo)


def error_record(case: Case | None, case_id: str, error: BaseException, location: str, nodeid: str) -> dict[str, Any]:
    """The JSON record of a case (or a file) that could not run, with the error as its reason."""
    where = error.location if isinstance(error, HypocheckError) and error.location else Location(location)
    reason = str(error) if isinstance(error, HypocheckError) else f"{type(error).__name__}: {error}"
    if case is None:
        return error_verdict(case_id, reason, str(where), nodeid=nodeid).to_json()
    return error_verdict(case_id, reason, str(where), hypothesis=case.hypothesis.id, claim=case.hypothesis.claim,
                         probe=case.probe.name, axes=dict(case.axes), nodeid=nodeid, expected=case.expected,
                         holds_if=case.hypothesis.holds_if).to_json()


def judge_case(item: CaseItem, context: ProbeContext) -> Judged:
    """The case's one path (:func:`hypocheck.evaluate.evaluate_case`: inputs → probe → reference arms → verdict →
    controls → stability), in the item's setup; an exception records the case as an error and propagates, so that
    pytest reports an error."""
    case = item.case
    try:
        verdict, result, inputs = evaluate_case(case, context)
    except Exception as exc:  # a crashing probe or model is an error of the run, not a missing case
        item.user_properties.append((ENV_KEY, dict(context.environment())))
        item.user_properties.append((RECORD_KEY, error_record(case, case.case_id, exc, str(case.location),
                                                              item.nodeid)))
        raise
    return Judged(inputs, result, verdict)


def run_case(hypocheck_context: ProbeContext, request: pytest.FixtureRequest) -> None:
    """The call of every case item: the verdict its setup decided → record → the same pytest outcome."""
    item = request.node
    assert isinstance(item, CaseItem) and item.judged is not None
    case, (inputs, result, verdict) = item.case, item.judged
    env = dict(hypocheck_context.environment())
    item.user_properties.append((ENV_KEY, env))
    verdict = dataclasses.replace(verdict, nodeid=item.nodeid)
    if wants_fingerprints(item.config):
        values = [*case.axes.values(), *case.params.model_dump().values(), *case.inputs.model_dump().values()]
        verdict = dataclasses.replace(verdict, fingerprints=case_fingerprints(values, env))
    item.user_properties.append((RECORD_KEY, verdict.to_json()))
    item.config.hook.pytest_hypocheck_case_judged(config=item.config, case=case, verdict=verdict, result=result,
                                                  inputs=inputs)
    conclude(verdict)


def conclude(verdict: CaseVerdict) -> None:
    """The pytest outcome is the verdict (``hypocheck.decisions.case_outcome``): pass → passed, fail → failed,
    inconclusive → skipped (an error never gets here: it was raised in the setup)."""
    outcome = case_outcome(verdict.verdict)
    if outcome == "failed":
        pytest.fail(failure_text(verdict), pytrace=False)
    if outcome == "skipped":
        pytest.skip(f"inconclusive: {verdict.reason}")
