"""The probe ↔ backend seam: a probe declares the input kind it takes, the backend provides each kind once, and
every probe's metrics carry a declared kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hypocheck import registry
from hypocheck.errors import HypothesisFileError, Location
from hypocheck.fixtures.backend import SuiteBackend
from hypocheck.fixtures.providers import provided_kinds, provider_for
from hypocheck.inputs import Arrays, InputRecord, as_record
from hypocheck.probes.kinds import SetEmbeddings
from hypocheck.registry import METRIC_KINDS, ProbeResult, probe, registered_probes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes registered here stay here: other tests of the process list the shipped probes only."""
    registered_probes()  # the shipped ones, loaded into the real registry first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@dataclass(frozen=True)
class Lengths(InputRecord):
    lengths: np.ndarray


def test_every_shipped_probe_takes_a_kind_the_suite_backend_provides() -> None:
    shipped = {n: s for n, s in registered_probes().items() if s.fn.__module__.startswith("hypocheck.probes.")}
    assert len(shipped) == 10
    for name, spec in shipped.items():
        assert spec.takes is not Arrays, name
        assert provider_for(spec.takes) is not None, name
        assert set(spec.input_arrays()) <= set(spec.takes.argument_names()), name
        assert set(spec.metric_kinds) == set(spec.metrics), name
        assert set(spec.metric_kinds.values()) <= set(METRIC_KINDS), name
        assert spec.kind_of(spec.effect) == "effect"
        assert spec.p is None or spec.kind_of(spec.p) == "p"
        assert spec.kind_of(f"{spec.effect}_ci_low") == "ci_low" and spec.kind_of("no_such_metric") is None
    assert len(provided_kinds()) == len({s.takes for s in shipped.values()}) == 8


def test_a_probe_taking_what_its_kind_lacks_is_refused_at_registration() -> None:
    with pytest.raises(ValueError, match=r"takes \['widths'\], which are not fields of its input kind Lengths"):
        @probe("needs_widths", takes=Lengths, metrics=("m",), effect="m")
        def needs_widths(*, widths, params, rng):  # type: ignore[no-untyped-def]
            return ProbeResult(metrics={"m": 0.0})


def test_metric_kinds_are_declared_not_read_from_names() -> None:
    with pytest.raises(ValueError, match="unknown metric kind 'pvalue'"):
        probe("bad_kind", metrics=("m", "q"), effect="m", kinds={"pvalue": ("q",)})
    with pytest.raises(ValueError, match="p metric 'q' is not among its metrics"):
        probe("bad_name", metrics=("m",), effect="m", kinds={"p": ("q",)})

    @probe("kind_declared", takes=Lengths, metrics=("m", "p_like", "q"), effect="m", kinds={"p": ("q",)})
    def kind_declared(*, lengths, params, rng):  # type: ignore[no-untyped-def]
        return ProbeResult(metrics={"m": float(np.mean(lengths)), "p_like": 0.5, "q": 0.5})

    spec = registered_probes()["kind_declared"]
    assert spec.kind_of("q") == "p" and spec.kind_of("p_like") == "descriptive"
    result = spec.run(Lengths(lengths=np.array([1.0, 3.0])), params=spec.params(), rng=np.random.default_rng(0))
    assert result.metrics["m"] == 2.0


def test_a_mapping_from_a_project_backend_becomes_the_kind_or_says_what_is_wrong() -> None:
    record = as_record(SetEmbeddings, {"embeddings": np.eye(3), "members": np.array([0, 1])})
    assert isinstance(record, SetEmbeddings) and record.magnitude is None
    with pytest.raises(TypeError, match=r"\['widths'\], which are not fields of SetEmbeddings"):
        as_record(SetEmbeddings, {"embeddings": np.eye(3), "members": np.array([0]), "widths": 1})
    with pytest.raises(TypeError, match="do not make a SetEmbeddings"):
        as_record(SetEmbeddings, {"embeddings": np.eye(3)})
    with pytest.raises(TypeError, match="the backend provided Lengths, the probe takes SetEmbeddings"):
        as_record(SetEmbeddings, Lengths(lengths=np.ones(2)))
    assert as_record(Arrays, {"x": 1}).arguments(()) == {"x": 1}


def test_the_suite_backend_names_the_kinds_it_provides_for_a_probe_it_cannot_feed() -> None:
    @probe("orphan_lengths", takes=Lengths, metrics=("m",), effect="m")
    def orphan_lengths(*, lengths, params, rng):  # type: ignore[no-untyped-def]
        return ProbeResult(metrics={"m": 0.0})

    backend = SuiteBackend.from_file(ROOT / "suite.yaml")
    case = SimpleNamespace(probe=registered_probes()["orphan_lengths"], location=Location("h.yaml", 3), axes={})
    with pytest.raises(HypothesisFileError) as err:
        backend.check_case(case)  # type: ignore[arg-type]
    text = str(err.value)
    assert "takes Lengths, which the suite backend cannot provide" in text and "h.yaml:3" in text
    assert "SetEmbeddings" in text and "hypocheck.inputs" in text
