"""The hypothesis file schema (pydantic v2) and its published JSON Schema.

One YAML file holds one hypothesis (a mapping) or several (``hypotheses: [...]``).
Run ``hypocheck-schema > hypothesis.schema.json`` to regenerate the JSON Schema
for editor completion: it knows every registered probe, and checks each
probe's ``params`` and ``inputs`` with that probe's own models.
``probe_catalog()`` describes the probes for ``hypocheck probes``.
"""

from __future__ import annotations

import json
import os
import sys
import types
import typing
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from .errors import ExpectationSyntaxError, HypothesisFileError
from .expect import Expectation, check_satisfiable, parse_expectation
from .yamlsource import SourceDoc

Verdict = Literal["pass", "fail", "inconclusive"]
AxisValue = str | int | float
_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*$"


def _parses(text: str) -> str:
    try:
        parse_expectation(text)
    except ExpectationSyntaxError as exc:
        raise ValueError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None
    return text


ExpectationText = Annotated[str, AfterValidator(_parses)]


class Source(BaseModel):
    """Where the claim comes from in the original analysis."""

    model_config = ConfigDict(extra="forbid")
    claim: int | None = Field(None, description="Number of the headline claim it checks, if any.")
    notebook: str | None = Field(None, description="Notebook of the original analysis, e.g. NB02.")
    note: str | None = Field(None, description="Free text: figure, table or page.")


class Tolerance(BaseModel):
    """How far a metric may move from a baseline before it counts as drift."""

    model_config = ConfigDict(extra="forbid")
    abs: float = Field(1e-6, ge=0, description="Absolute tolerance.")
    rel: float = Field(1e-4, ge=0, description="Relative tolerance.")


class Stability(BaseModel):
    """Rerun each case on other samples of its inputs, to see whether its verdict holds."""

    model_config = ConfigDict(extra="forbid")
    seeds: int = Field(..., ge=2, le=100, description="How many control samples each case runs on (its own "
                                                       "first, then ones drawn with other seeds).")


class Hypothesis(BaseModel):
    """One claim: a probe run over crossed inputs, judged by expectations."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., pattern=_ID_PATTERN, description="Unique id across the run: letters, digits, _.")
    claim: str = Field(..., min_length=1, description="The claim in words; the test's title.")
    source: Source = Field(default_factory=Source, description="Which claim / notebook it checks.")
    probe: str = Field(..., description="Registered probe name (`hypocheck probes` lists them).")
    cases: dict[str, list[AxisValue]] = Field(
        default_factory=dict,
        description="Named axes to cross (model × cell_line × gene_set …); one test per combination.",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Probe parameters (validated by the probe).")
    inputs: dict[str, Any] = Field(
        default_factory=dict,
        description="Options for how the project builds the probe's inputs (e.g. layer, features: sae|residual); "
        "validated by the project's input builder.",
    )
    absence: bool = Field(
        False, description="A claim of absence (no clustering, no transfer, no difference): decided by the probe's "
                           "rule on its effect's 95% CI against the margin, not by expectations: pass when the CI "
                           "lies below the margin, fail when it lies above, inconclusive when it straddles it.")
    margin: float | None = Field(
        None, gt=0, description="The margin of a claim of absence (default: the probe's minimum effect of "
                                "interest, the same floor a claim of presence must clear).")
    expect: list[ExpectationText] = Field(
        default_factory=list, validate_default=True,
        description="Expectations over the probe's metrics (at least one for a claim of presence; a claim of "
                    "absence needs none, and those it lists are reported, never deciding).")
    effect: str | None = Field(None, description="Metric reported as the effect size (default: the probe's).")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level for 'significant' and BH.")
    reported: dict[str, float] = Field(
        default_factory=dict,
        description="Figures the original analysis reported: 'metric' or 'axisvalue/…/metric' → number.",
    )
    expected: Verdict | dict[str, Verdict] | None = Field(
        None,
        description="Verdict the planted truth implies (demo world): one for all cases, or "
        "'axisvalue/…' → verdict, with 'default' for the rest. The test passes when they agree.",
    )
    seed: int = Field(0, ge=0, description="Base seed; each case's seed derives from it and the case id.")
    marks: list[str] = Field(default_factory=list, description="pytest marks to add (select with -m).")
    tags: list[str] = Field(default_factory=list, description="Free labels, shown in reports.")
    tolerance: Tolerance | None = Field(
        None, description="Drift tolerance for baselines (default: a metric drifts when it moves by more than its "
                          "own uncertainty; see the README).")
    min_effect: float | None = Field(
        None, description="Minimum effect of interest: a claim of presence passes only when the CI of its effect "
                          "metric clears this (default: the probe's documented floor).")
    controls: list[str] = Field(
        default_factory=list,
        description="Control models every case also runs on (e.g. randomized: weights re-drawn; shuffled_perts: "
                    "knockdowns routed to each other's embeddings); a claim that holds as strongly on a control is "
                    "flagged as not specific to training.")
    references: list[str] | None = Field(
        None,
        description="Reference arms every case also runs on, shown beside the model: 'data' (the same probe on the "
                    "observed data: what the data themselves show) and models of the suite (e.g. simple baselines "
                    "trained on the same data). Expectations may name their metrics: "
                    "'references.<arm>.<metric>'. Default: the suite's 'references:'; [] for none.")
    stability: Stability | None = Field(
        None, description="Rerun every case on other control samples and report how many give its verdict; a "
                          "case whose verdict flips is labelled fragile. Default: the suite's 'stability:'.")
    holds_if: Literal["all", "any"] | int = Field(
        "all", description="When the claim holds, from its cases: all of them pass (default), any one, or at "
                           "least this many.")

    @field_validator("cases")
    @classmethod
    def _axes_non_empty(cls, cases: dict[str, list[AxisValue]]) -> dict[str, list[AxisValue]]:
        for axis, values in cases.items():
            if not values:
                raise ValueError(f"axis {axis!r} lists no values")
            if len(set(map(str, values))) != len(values):
                raise ValueError(f"axis {axis!r} repeats a value: {values}")
        return cases

    @field_validator("marks")
    @classmethod
    def _marks_are_names(cls, marks: list[str]) -> list[str]:
        for mark in marks:
            if not mark.isidentifier():
                raise ValueError(f"mark {mark!r} is not a valid name")
        return marks

    @field_validator("expect")
    @classmethod
    def _expectations_satisfiable(cls, expect: list[str], info: ValidationInfo) -> list[str]:
        if not expect and not info.data.get("absence", False):
            raise ValueError("a claim of presence needs at least one expectation (a claim of absence says "
                             "'absence: true' and needs none)")
        try:  # a field validator, so that the error points at 'expect:'
            check_satisfiable([parse_expectation(text) for text in expect])
        except ExpectationSyntaxError as exc:
            raise ValueError(exc.message) from None
        return expect

    def parsed_expectations(self) -> list[Expectation]:
        """The expectations as parsed objects (never executed code)."""
        return [parse_expectation(text) for text in self.expect]


class HypothesisFile(BaseModel):
    """A file with several hypotheses."""

    model_config = ConfigDict(extra="forbid")
    hypotheses: list[Hypothesis] = Field(..., min_length=1)


def hypotheses_from_doc(doc: SourceDoc) -> list[tuple[Hypothesis, tuple[str | int, ...]]]:
    """Validate a parsed YAML document; each hypothesis with its key path. Errors carry file:line."""
    data = doc.data
    if not isinstance(data, dict):
        raise HypothesisFileError(
            f"a hypothesis file holds a mapping, not {type(data).__name__}", doc.locate(()),
            "start with 'id:', 'claim:', 'probe:', 'expect:' (or 'hypotheses:' and a list)",
        )
    try:
        if "hypotheses" in data:
            many = HypothesisFile.model_validate(data)
            return [(h, ("hypotheses", i)) for i, h in enumerate(many.hypotheses)]
        return [(Hypothesis.model_validate(data), ())]
    except ValidationError as exc:
        raise _schema_error(doc, exc) from None


def _schema_error(doc: SourceDoc, exc: ValidationError) -> HypothesisFileError:
    first = exc.errors()[0]
    # drop pydantic's union-member tags ('str', "literal['pass',…]", 'dict[str,…]') from the key path
    path = tuple(p for p in first["loc"] if not (isinstance(p, str) and (p in {"str", "int", "float"} or "[" in p)))
    message = first["msg"]
    hint = None
    if first["type"] == "extra_forbidden":
        from .errors import valid_hint

        fields = Hypothesis.model_fields if len(path) <= 3 else {}
        parent = _model_at(path[:-1])
        fields = parent.model_fields if parent is not None else fields
        message = f"unknown key {path[-1]!r}"
        hint = valid_hint(str(path[-1]), fields)
    elif first["type"] == "missing":
        message = f"missing required key {path[-1]!r}"
    elif first["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    at_key = first["type"] in {"extra_forbidden"}
    return HypothesisFileError(message, doc.locate(path, at_key=at_key), hint)


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema model a key path points into (for listing valid keys)."""
    model: type[BaseModel] = Hypothesis
    parts = list(path)
    if parts[:1] == ["hypotheses"]:
        parts = parts[2:]
    for part in parts:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return None
    return model


def json_schema() -> dict[str, Any]:
    """JSON Schema of a hypothesis file (one hypothesis or ``hypotheses: [...]``).

    ``probe`` is one of the registered probes, and an if/then rule per probe checks ``params`` and ``inputs``
    against that probe's models (unknown keys refused), so that an editor flags them while typing.
    """
    from pydantic.json_schema import models_json_schema

    from .registry import registered_probes

    probes = registered_probes()
    models: list[type[BaseModel]] = list(
        dict.fromkeys([Hypothesis, *(m for spec in probes.values() for m in (spec.params, spec.inputs))])
    )
    refs, top = models_json_schema([(m, "validation") for m in models], ref_template="#/$defs/{model}")
    defs = top["$defs"]
    single = defs.pop(refs[(Hypothesis, "validation")]["$ref"].rsplit("/", 1)[-1])
    single["properties"]["probe"]["enum"] = sorted(probes)
    single["allOf"] = [
        {
            "if": {"properties": {"probe": {"const": name}}, "required": ["probe"]},
            "then": {"properties": {"params": refs[(spec.params, "validation")],
                                    "inputs": refs[(spec.inputs, "validation")]}},
        }
        for name, spec in sorted(probes.items())
    ]
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hypocheck hypothesis file",
        "anyOf": [single, {"type": "object", "properties": {"hypotheses": {
            "type": "array", "items": {"$ref": "#/anyOf/0"}, "minItems": 1}},
            "required": ["hypotheses"], "additionalProperties": False}],
        "$defs": defs,
    }
    return schema


# ------------------------------------------------------------------ the probe catalogue


def type_text(annotation: Any, metadata: typing.Sequence[Any] = ()) -> str:
    """A field's type in the words of a YAML file: ``int (≥ 100)``, ``auto | sae | residual``, ``int | null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        text = "null"
    elif origin is Literal:
        text = " | ".join("null" if a is None else str(a) for a in args)
    elif origin is Annotated:
        return type_text(args[0], [*args[1:], *metadata])
    elif origin in (typing.Union, types.UnionType):
        text = " | ".join(type_text(a) for a in args)
    elif origin is tuple and Ellipsis not in args:  # a fixed-length YAML list: [str, str]
        text = "[" + ", ".join(type_text(a) for a in args) + "]"
    elif origin is not None:
        inner = ", ".join("…" if a is Ellipsis else type_text(a) for a in args)
        text = f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    elif isinstance(annotation, type):
        text = annotation.__name__
    else:
        text = str(annotation).replace("typing.", "")
    bounds = [_bound_text(m) for m in metadata if _bound_text(m)]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


_BOUNDS = {annotated_types.Ge: ("ge", "≥ {}"), annotated_types.Gt: ("gt", "> {}"), annotated_types.Le: ("le", "≤ {}"),
           annotated_types.Lt: ("lt", "< {}"), annotated_types.MinLen: ("min_length", "length ≥ {}"),
           annotated_types.MaxLen: ("max_length", "length ≤ {}")}


def _bound_text(constraint: Any) -> str:
    for kind, (attr, template) in _BOUNDS.items():
        if isinstance(constraint, kind):
            return template.format(getattr(constraint, attr))
    return ""


def field_entry(name: str, info: FieldInfo) -> dict[str, Any]:
    """One option of a probe's ``params:`` or ``inputs:``: name, type, default (when it has one) and meaning."""
    required = info.is_required()
    default = None if required else to_jsonable_python(info.get_default(call_default_factory=True))
    return {"name": name, "type": type_text(info.annotation, info.metadata), "required": required,
            "default": default, "description": (info.description or "").strip()}


def probe_catalog() -> list[dict[str, Any]]:
    """Every registered probe as plain data: what it measures, its case axes, arrays, options and metrics."""
    from .registry import registered_probes

    return [
        {
            "name": name,
            "description": spec.description.strip(),
            "axes": list(spec.axes),
            "input_arrays": list(spec.input_arrays()),
            "inputs": [field_entry(n, f) for n, f in spec.inputs.model_fields.items()],
            "params": [field_entry(n, f) for n, f in spec.params.model_fields.items()],
            "metrics": list(spec.metrics),
            "effect": spec.effect,
            "p": spec.p,
        }
        for name, spec in sorted(registered_probes().items())
    ]


def main() -> None:
    """Print the JSON Schema (``hypocheck-schema > hypothesis.schema.json``)."""
    try:
        json.dump(json_schema(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (`hypocheck-schema | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
