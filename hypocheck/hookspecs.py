"""Hooks a project may implement (in a conftest.py or a plugin) to change what the engine uses or to report.

Reporters (the terminal lines, summary files, Allure, baselines, plots: ``hypocheck.reporters``) are plugins
on three hooks that carry typed records (``hypocheck.records``). Under ``pytest -n`` a case runs on an xdist
worker and its record travels to the controller, so each hook says on which process it is called:

=====================================  ==========================  ===============================================
hook                                   called on                   with
=====================================  ==========================  ===============================================
``pytest_hypocheck_case_judged``       the process that ran the    the live case, its final ``CaseVerdict``, the
                                       case (a worker under -n)    ``ProbeResult`` (arrays, null draws, tables)
                                                                   and the probe's inputs
``pytest_hypocheck_case_recorded``     the controller (the only    each case's ``CaseVerdict`` as it arrives, errors
                                       process without -n)         and cases that never finished included
``pytest_hypocheck_run_finished``      the controller, once        the ``RunRecord``: cases, claims, environment,
                                                                   the run-wide correction, drift
=====================================  ==========================  ===============================================

A reporter that writes files from records (JSON lines, a database) implements the controller's two hooks; one
that needs the probe's arrays (plots, Allure attachments) implements ``pytest_hypocheck_case_judged``. An
implementation may take any subset of a hook's arguments. Register one with ``-p module`` or from a
conftest.py (``config.pluginmanager.register(...)`` in ``pytest_configure``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .backend import Backend
    from .cases import Case
    from .records import CaseVerdict, RunRecord
    from .registry import ProbeResult


@pytest.hookspec(firstresult=True)
def pytest_hypocheck_backend(config: pytest.Config) -> Backend | None:
    """The backend that gives case axes their valid values and builds probe inputs.

    The plugin's own implementation (called last) reads the suite config file with the backend named by the
    ini option ``hypocheck_backend``; a project that brings its own models and data some other way returns
    its own object here (see ``hypocheck.backend.Backend``).
    """


@pytest.hookspec
def pytest_hypocheck_case_judged(config: pytest.Config, case: Case, verdict: CaseVerdict, result: ProbeResult,
                                 inputs: Any) -> None:
    """A case was judged, on the process that ran it (an xdist worker under ``-n``), inside its test item.

    ``verdict`` is final (controls included); ``result`` is the probe's live result and ``inputs`` what the
    backend prepared for it (``None`` when the probe was not applicable to the model). Not called for a case
    whose probe or model raised (its record, an error, reaches
    ``pytest_hypocheck_case_recorded``). Allure's per-case results and the plots are written here.
    """


@pytest.hookspec
def pytest_hypocheck_case_recorded(config: pytest.Config, verdict: CaseVerdict, duration: float) -> None:
    """A case's record reached the controller: once per case, errors and cases that never finished included.

    ``duration`` is the seconds its item took (setup, call and teardown). Called on the controller only.
    """


@pytest.hookspec
def pytest_hypocheck_run_finished(config: pytest.Config, run: RunRecord) -> None:
    """The run ended: called once, on the controller, with every case, claim, the environment, the run-wide
    correction and (with ``--baseline``) the drift. The summary files, the baseline and Allure's run
    metadata are written here; the exit status is decided after it (``hypocheck.decisions.run_problems``).
    """
