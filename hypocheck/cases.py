"""Hypotheses → cases: one per combination of axis values, with a stable id and seed."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

from .errors import HypothesisFileError, Location, UnknownNameError
from .expect import Expectation, literal_bounds, upper_p_bounds
from .models import BASELINES_ARM, DATA_ARM, ModelRef
from .registry import ProbeSpec, get_probe, registered_probes
from .schema import Hypothesis, Stability, Verdict
from .stats import derive_seed
from .yamlsource import KeyPath, SourceDoc


@dataclass(frozen=True)
class Case:
    """One test: a hypothesis at one combination of axis values."""

    hypothesis: Hypothesis
    probe: ProbeSpec
    params: pydantic.BaseModel
    inputs: pydantic.BaseModel
    """The hypothesis's ``inputs:`` validated against the probe's ``inputs`` model."""
    axes: Mapping[str, str | int | float]
    expectations: tuple[Expectation, ...]
    file_stem: str
    location: Location
    reported: Mapping[str, float] = field(default_factory=dict)
    expected: Verdict | None = None
    p_metrics: tuple[str, ...] = ()
    """p-value metrics that the expectations require to be small (claims of presence): they are corrected."""
    family_size: int = 1
    """How many cases the hypothesis tests: the Bonferroni factor of its p-values."""
    min_effect: float | None = None
    """The minimum effect of interest that the effect's CI must clear (presence claims only)."""
    margin: float | None = None
    """A claim of absence's margin: set exactly when the hypothesis claims absence (see ``decisions``)."""
    doc: SourceDoc | None = field(default=None, compare=False, repr=False)
    """The hypothesis file, for locating a key of this case's hypothesis (``locate``)."""
    key_base: KeyPath = ()
    """The hypothesis's key path in its file (``()`` for a file holding one hypothesis)."""

    def locate(self, *keys: str | int) -> Location:
        """Where a key of this case's hypothesis is (``case.locate("inputs", "genes", 2)``): file, line and key."""
        return self.doc.locate((*self.key_base, *keys)) if self.doc is not None else self.location

    @property
    def absence(self) -> bool:
        """Whether the case claims absence (decided by the probe's rule on the effect's CI, not expectations)."""
        return self.margin is not None

    @property
    def label(self) -> str:
        """Axis values joined by '-', e.g. ``fewshot-hepg2-splicing``."""
        return "-".join(str(v) for v in self.axes.values())

    @property
    def name(self) -> str:
        """The pytest item name: ``<hypothesis id>[<axis values>]``."""
        return f"{self.hypothesis.id}[{self.label}]" if self.axes else self.hypothesis.id

    @property
    def case_id(self) -> str:
        """``<file stem>::<hypothesis id>[<axis values>]``, stable across runs."""
        return f"{self.file_stem}::{self.name}"

    @property
    def seed(self) -> int:
        """Derived from the hypothesis seed and id + axis values (not the file), so order and -n do not matter."""
        return derive_seed(self.hypothesis.seed, self.name)

    @property
    def model(self) -> ModelRef | None:
        """The model the case runs on (a control arm included), typed; ``None`` without a ``model`` axis."""
        return ModelRef.parse(str(self.axes["model"])) if "model" in self.axes else None

    @property
    def effect_metric(self) -> str:
        return self.hypothesis.effect or self.probe.effect

    @property
    def references(self) -> tuple[str, ...]:
        """The reference arms this case runs beside its model (its own model, when listed, left out)."""
        own = str(self.model.trained) if self.model is not None else None
        return tuple(arm for arm in self.hypothesis.references or () if arm not in (own, BASELINES_ARM))

    @property
    def stability_samples(self) -> int:
        """How many control samples the case runs on (1: only its own)."""
        return self.hypothesis.stability.seeds if self.hypothesis.stability is not None else 1


def _matches(key: str, axes: Mapping[str, Any]) -> int | None:
    """How many axis values a 'a/b' key names, or None when one of them is not this case's."""
    values = {str(v) for v in axes.values()}
    parts = [p for p in key.split("/") if p]
    return len(parts) if all(p in values for p in parts) else None


def reported_for(reported: Mapping[str, float], axes: Mapping[str, Any]) -> dict[str, float]:
    """The reported figures that apply to a case: 'metric' or 'value/…/metric', the most specific wins."""
    chosen: dict[str, tuple[int, float]] = {}
    for key, value in reported.items():
        *qualifiers, metric = key.split("/")
        score = _matches("/".join(qualifiers), axes)
        if score is not None and score >= chosen.get(metric, (-1, 0.0))[0]:
            chosen[metric] = (score, value)
    return {metric: value for metric, (_, value) in chosen.items()}


def expected_for(expected: Verdict | Mapping[str, Verdict] | None, axes: Mapping[str, Any]) -> Verdict | None:
    """The expected verdict of a case: a single verdict, or the most specific matching key ('default' last)."""
    if expected is None or isinstance(expected, str):
        return expected
    best: tuple[int, Verdict | None] = (-1, expected.get("default"))
    for key, verdict in expected.items():
        if key == "default":
            continue
        score = _matches(key, axes)
        if score is not None and score > best[0]:
            best = (score, verdict)
    return best[1]


def _check_keys(hyp: Hypothesis, doc: SourceDoc, base: KeyPath, vocabulary: Mapping[str, Sequence[str]]) -> None:
    values = {str(v) for vs in vocabulary.values() for v in vs} | {str(v) for vs in hyp.cases.values() for v in vs}
    for section in ("reported", "expected"):
        mapping = getattr(hyp, section)
        if not isinstance(mapping, dict):
            continue
        for key in mapping:
            if key == "default" and section == "expected":
                continue
            qualifiers = key.split("/")[:-1] if section == "reported" else key.split("/")
            for part in qualifiers:
                if part not in values:
                    raise UnknownNameError("axis value", part, values, doc.locate((*base, section, key), at_key=True))


def _validated(model: type[pydantic.BaseModel], data: Mapping[str, Any], section: str, kind: str,
               doc: SourceDoc, base: KeyPath) -> pydantic.BaseModel:
    """``data`` (a hypothesis's ``params:`` or ``inputs:``) validated by the probe's model, errors at file:line."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = (*base, section, *err["loc"])
        if err["type"] == "extra_forbidden":
            where = doc.locate(loc, at_key=True)
            raise UnknownNameError(kind, str(err["loc"][-1]), model.model_fields, where) from None
        name = ".".join(str(p) for p in err["loc"])
        label = "bad probe parameter" if section == "params" else "bad input option"
        raise HypothesisFileError(f"{label} {name!r}: {err['msg']}", doc.locate(loc)) from None


REFERENCES_PREFIX = "references."
"""How an expectation names a reference arm's metric: ``references.<arm>.<metric>``."""
MIN_EFFECT_NAME = "min_effect"
"""How an expectation names the case's minimum effect of interest (its own, else the probe's)."""


def _check_references(hyp: Hypothesis, doc: SourceDoc, base: KeyPath, vocabulary: Mapping[str, Sequence[str]]) -> None:
    """Each reference arm is ``data`` or a model of the suite, and the cases have a ``model`` axis to run it beside."""
    if not hyp.references:
        return
    if "model" not in hyp.cases:
        raise HypothesisFileError("references need a 'model' axis: each case runs again on each reference arm",
                                  doc.locate((*base, "references")))
    # 'baselines' is left only where no suite config said which models are baselines: then it names none
    valid = [DATA_ARM, BASELINES_ARM,
             *(str(m) for m in vocabulary.get("model", []) if ModelRef.parse(str(m)).arm is None)]
    for i, arm in enumerate(hyp.references):
        if arm not in valid:
            raise UnknownNameError("reference arm ('data' or a model of the suite)", arm, valid,
                                   doc.locate((*base, "references", i)))
    if len(set(hyp.references)) != len(hyp.references):
        raise HypothesisFileError(f"references repeat an arm: {hyp.references}", doc.locate((*base, "references")))


def _check_expectation_name(name: str, hyp: Hypothesis, spec: ProbeSpec, produced: set[str],
                            where: Location) -> None:
    """A name an expectation uses: a metric of the probe, ``references.<arm>.<metric>`` of a listed arm, or
    ``min_effect`` (when the hypothesis or probe has one)."""
    if name == MIN_EFFECT_NAME:
        if hyp.min_effect is None and spec.min_effect is None:
            raise HypothesisFileError(f"'min_effect': probe {spec.name!r} declares no minimum effect of interest",
                                      where, "set one with 'min_effect:' in the hypothesis")
        return
    if name.startswith(REFERENCES_PREFIX):
        arm, _, metric = name.removeprefix(REFERENCES_PREFIX).partition(".")
        if arm not in (hyp.references or []):
            raise UnknownNameError("reference arm (list it under 'references:')", arm, hyp.references or [], where)
        name = metric
    if name not in produced:
        raise UnknownNameError(f"metric (probe {spec.name!r} reports {', '.join(spec.metrics)})", name, produced,
                               where)


def with_suite_defaults(hyp: Hypothesis, defaults: Mapping[str, Any]) -> Hypothesis:
    """``hyp`` with the suite's ``references:`` and ``stability:`` where it sets none (references only where its
    cases have a ``model`` axis to run them beside), and ``baselines`` in its references replaced by the suite's
    baseline models."""
    update: dict[str, Any] = {}
    if hyp.references is None and defaults.get("references") and "model" in hyp.cases:
        update["references"] = list(defaults["references"])
    references = update.get("references", hyp.references)
    if references and BASELINES_ARM in references:  # the suite's baseline models, in its order, each once
        expanded = [a for r in references for a in ([*defaults.get("baselines", ())] if r == BASELINES_ARM else [r])]
        update["references"] = list(dict.fromkeys(expanded))
    if hyp.stability is None and defaults.get("stability"):
        update["stability"] = Stability.model_validate(defaults["stability"])
    return hyp.model_copy(update=update) if update else hyp


def _absence_margin(hyp: Hypothesis, spec: ProbeSpec, doc: SourceDoc, base: KeyPath) -> float | None:
    """A claim of absence's margin (its own, else its ``min_effect:``, else the probe's); ``None`` for presence."""
    if not hyp.absence:
        if hyp.margin is not None:
            raise HypothesisFileError("'margin:' is the margin of a claim of absence; add 'absence: true' (a claim "
                                      "of presence sets its floor with 'min_effect:')", doc.locate((*base, "margin")))
        return None
    where = doc.locate((*base, "absence"))
    if spec.absence is None:
        absent = sorted(n for n, s in registered_probes().items() if s.absence is not None)
        raise HypothesisFileError(f"probe {spec.name!r} has no rule for a claim of absence", where,
                                  "probes that have one: " + ", ".join(absent))
    margin = hyp.margin if hyp.margin is not None else hyp.min_effect if hyp.min_effect is not None else spec.min_effect
    if margin is None:
        raise HypothesisFileError(f"a claim of absence needs a margin, and probe {spec.name!r} declares no minimum "
                                  "effect of interest", where, "add e.g. 'margin: 0.1'")
    return float(margin)


def expand(
    hyp: Hypothesis,
    doc: SourceDoc,
    base: KeyPath,
    vocabulary: Mapping[str, Sequence[str]],
) -> list[Case]:
    """All cases of ``hyp``; unknown probe, metric, axis or axis value raise with file:line and close matches."""
    try:
        spec = get_probe(hyp.probe)
    except UnknownNameError as exc:
        raise UnknownNameError("probe", hyp.probe, exc.valid, doc.locate((*base, "probe"))) from None
    params = _validated(spec.params, hyp.params, "params", f"parameter of probe {spec.name!r}", doc, base)
    inputs = _validated(spec.inputs, hyp.inputs, "inputs", f"input option of probe {spec.name!r}", doc, base)
    for i, kind in enumerate(hyp.controls):
        valid_kinds = [str(v) for v in vocabulary.get("control", [])]
        if kind not in valid_kinds:
            raise UnknownNameError("control model kind", kind, valid_kinds, doc.locate((*base, "controls", i)))
        if "model" not in hyp.cases:
            raise HypothesisFileError("controls need a 'model' axis: each case runs again on its model's controls",
                                      doc.locate((*base, "controls")))
    _check_references(hyp, doc, base, vocabulary)
    for axis, values in hyp.cases.items():
        if axis not in vocabulary:
            raise UnknownNameError("axis", axis, vocabulary, doc.locate((*base, "cases", axis), at_key=True))
        valid = [str(v) for v in vocabulary[axis]]
        for i, value in enumerate(values):
            if str(value) not in valid:
                raise UnknownNameError(axis.replace("_", " "), str(value), valid, doc.locate((*base, "cases", axis, i)))
    missing = [a for a in spec.axes if a not in hyp.cases]
    if missing:
        raise HypothesisFileError(
            f"probe {spec.name!r} needs the axes {list(spec.axes)}; missing {missing}",
            doc.locate((*base, "cases")),
            "add e.g. 'cases: {" + ", ".join(f"{a}: [...]" for a in missing) + "}'",
        )
    expectations = hyp.parsed_expectations()
    produced = spec.metric_names()
    for i, exp in enumerate(expectations):
        for metric in exp.metrics_used():
            _check_expectation_name(metric, hyp, spec, produced, doc.locate((*base, "expect", i)))
        for metric, (low, high) in literal_bounds(exp).items():
            if spec.kind_of(metric) == "p" and (low > 1 or high < 0):
                raise HypothesisFileError(
                    f"'{exp.source}' can never hold: {metric!r} is a p-value, in [0, 1]",
                    doc.locate((*base, "expect", i)),
                )
        if exp.kind == "significant" and spec.p is None:
            raise HypothesisFileError(
                f"'{exp.source}': probe {spec.name!r} reports no p-value", doc.locate((*base, "expect", i))
            )
    if hyp.effect is not None and hyp.effect not in produced:
        raise UnknownNameError("metric", hyp.effect, produced, doc.locate((*base, "effect")))
    for key in hyp.reported:
        metric = key.split("/")[-1]
        if metric not in produced:
            raise UnknownNameError("reported metric", metric, produced, doc.locate((*base, "reported", key)))
    _check_keys(hyp, doc, base, vocabulary)
    location = doc.locate((*base, "id"), at_key=True)
    axes_names = list(hyp.cases)
    margin = _absence_margin(hyp, spec, doc, base)
    p_metrics = [] if margin is not None else sorted(
        {m for exp in expectations for m in upper_p_bounds(exp, spec.p, hyp.alpha) if spec.kind_of(m) == "p"})
    n_cases = math.prod(len(hyp.cases[a]) for a in axes_names)
    min_effect = hyp.min_effect
    if min_effect is None and p_metrics and hyp.effect in (None, spec.effect):
        min_effect = spec.min_effect
    cases = []
    for combo in itertools.product(*(hyp.cases[a] for a in axes_names)):
        axes = dict(zip(axes_names, combo, strict=True))
        cases.append(
            Case(
                hypothesis=hyp,
                probe=spec,
                params=params,
                inputs=inputs,
                axes=axes,
                expectations=tuple(expectations),
                file_stem=doc.path.stem,
                location=location,
                reported=reported_for(hyp.reported, axes),
                expected=expected_for(hyp.expected, axes),
                p_metrics=tuple(p_metrics),
                family_size=n_cases if p_metrics else 1,
                min_effect=min_effect if p_metrics else None,
                margin=margin,
                doc=doc,
                key_base=tuple(base),
            )
        )
    return cases
