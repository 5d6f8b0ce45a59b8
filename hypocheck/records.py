"""The typed records that reporters receive: one judged case, its parts, a claim's result, drift, a whole run.

Every record is a frozen dataclass with ONE JSON form (``to_json`` / ``from_json``): the form xdist workers send
to the controller, summary.json holds and baselines are compared against. Decisions live in
``hypocheck.decisions``; these are only the records those decisions produce::

    record = CaseVerdict.from_json(json.loads(line))      # e.g. one case of summary.json["cases"]
    record.checks[0].holds, record.p_values["p"].adjusted, record.null.draws if record.null else None
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from .schema import Verdict

CaseOutcome = Literal["pass", "fail", "inconclusive", "error"]
OUTCOMES: tuple[CaseOutcome, ...] = ("pass", "fail", "inconclusive", "error")


def finite_or_none(value: Any) -> Any:
    """NaN/inf → None (recursively, tuples as lists), so that the JSON is standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def _json(record: Any) -> Any:
    return finite_or_none(asdict(record))


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _ci(value: Any) -> tuple[float | None, float | None]:
    low, high = (value or (None, None))[:2]
    return low, high


@dataclass(frozen=True)
class Check:
    """One expectation of a case: its text, whether it held (``None``: undecidable) and the measured detail."""

    expectation: str
    holds: bool | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"expectation": self.expectation, "holds": self.holds, "detail": self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Check:
        return cls(str(data["expectation"]), data.get("holds"), str(data.get("detail", "")))


@dataclass(frozen=True)
class PValue:
    """A p-value a check used: raw, corrected within the claim, and the smallest its test can attain."""

    raw: float | None
    adjusted: float | None
    floor: float | None = None

    def to_json(self) -> dict[str, Any]:
        return finite_or_none({"raw": self.raw, "adjusted": self.adjusted, "floor": self.floor})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PValue:
        return cls(data.get("raw"), data.get("adjusted"), data.get("floor"))


@dataclass(frozen=True)
class NullSummary:
    """The null distribution a probe compared against: mean, SD, number of draws and what it is."""

    mean: float
    sd: float | None
    draws: float
    kind: str = "null"

    def to_json(self) -> dict[str, Any]:
        return finite_or_none({"mean": self.mean, "sd": self.sd, "draws": self.draws, "kind": self.kind})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NullSummary:
        return cls(data["mean"], data.get("sd"), data["draws"], str(data.get("kind", "null")))


@dataclass(frozen=True)
class ControlOutcome:
    """The same case judged on one control model: its verdict, effect, CI and p."""

    verdict: CaseOutcome
    effect: float | None
    ci: tuple[float | None, float | None]
    p: float | None

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ControlOutcome:
        return cls(data["verdict"], data.get("effect"), _ci(data.get("ci")), data.get("p"))


ReferenceVerdict = Literal["pass", "fail", "inconclusive", "error", "not applicable"]


@dataclass(frozen=True)
class ReferenceOutcome:
    """The same case judged on one reference arm (the observed data, or a baseline model of the suite): its
    verdict, effect, CI, p, every metric (what ``references.<arm>.<metric>`` reads) and what it measured; or
    *not applicable*, with why (the data have no Jacobian, a mean baseline no backbone layer)."""

    verdict: ReferenceVerdict
    effect: float | None = None
    ci: tuple[float | None, float | None] = (None, None)
    p: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    measured: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferenceOutcome:
        return cls(data["verdict"], data.get("effect"), _ci(data.get("ci")), data.get("p"),
                   dict(data.get("metrics") or {}), str(data.get("reason", "")), dict(data.get("measured") or {}))


@dataclass(frozen=True)
class Stability:
    """A case rerun on other samples of its inputs (control sentences drawn with other seeds): each sample's label,
    verdict and effect, the first being the case's own; ``agree`` of them give the case's verdict."""

    samples: tuple[str, ...]
    verdicts: tuple[CaseOutcome, ...]
    effects: tuple[float | None, ...]
    agree: int
    fragile: bool

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Stability:
        return cls(tuple(data["samples"]), tuple(data["verdicts"]), tuple(data["effects"]), int(data["agree"]),
                   bool(data["fragile"]))

    @property
    def text(self) -> str:
        """``stable: 5 of 5 samples agree`` or ``FRAGILE: 3 of 5 samples give pass (2 fail)``."""
        n = len(self.verdicts)
        if not self.fragile:
            return f"stable: {self.agree} of {n} control samples agree"
        others = Counter(v for v in self.verdicts if v != self.verdicts[0])
        return (f"FRAGILE: {self.agree} of {n} control samples give {self.verdicts[0]} ("
                + ", ".join(f"{k} {v}" for k, v in others.items()) + ")")


@dataclass(frozen=True)
class CaseVerdict:
    """Everything a report needs about one judged case (JSON form: ``to_json`` / ``from_json``)."""

    id: str
    hypothesis: str
    claim: str
    probe: str
    axes: dict[str, Any]
    verdict: CaseOutcome
    effect_metric: str | None
    effect: float | None
    ci: tuple[float | None, float | None]
    p: float | None
    seed: int | None
    metrics: dict[str, float]
    reported: dict[str, float]
    checks: tuple[Check, ...]
    reason: str
    location: str
    source: dict[str, Any] = field(default_factory=dict)
    expected: Verdict | None = None
    truth: Literal["matches", "differs"] | None = None
    alpha: float = 0.05
    p_adj: float | None = None
    """The probe's p-value corrected within the hypothesis (what the verdict used), ``None`` without one."""
    family_size: int = 1
    p_values: dict[str, PValue] = field(default_factory=dict)
    """Every p-value a check used: raw, corrected (``adjusted``) and smallest attainable (``floor``)."""
    null: NullSummary | None = None
    """The null distribution the probe compared against, when it has one."""
    min_effect: float | None = None
    holds_if: str | int = "all"
    notes: Sequence[str] = ()
    p_run_bh: float | None = None
    """Benjamini–Hochberg adjusted p across the run (set when the run ends; informational)."""
    nodeid: str = ""
    tolerance: dict[str, float] | None = None
    """The hypothesis's fixed drift tolerance, when it sets one."""
    fingerprints: dict[str, str] = field(default_factory=dict)
    """Checkpoints and data this case ran on (baseline runs)."""
    controls: dict[str, ControlOutcome] = field(default_factory=dict)
    """Per control model kind: the same case's verdict, effect, CI and p on that control."""
    specific_to_training: bool | None = None
    """For a passing case with controls: False when it holds as strongly on a control."""
    metric_kinds: dict[str, str] = field(default_factory=dict)
    """What each metric is, as its probe declares it (effect, p, observed, descriptive, count, ci_low, ci_high)."""
    claim_kind: Literal["presence", "absence"] = "presence"
    """A claim of presence (judged by its expectations and minimum effect) or of absence (by the CI vs margin)."""
    margin: float | None = None
    """A claim of absence's margin (the effect's CI is judged against it)."""
    measured: dict[str, Any] = field(default_factory=dict)
    """What the case measured, as its inputs' provider names it (features and layer, Jacobian, lines …)."""
    references: dict[str, ReferenceOutcome] = field(default_factory=dict)
    """Per reference arm (``data``, a baseline model): the same case judged there, side by side with the model."""
    stability: Stability | None = None
    """The case rerun on other control samples (``stability:``); ``None`` when not asked."""

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> CaseVerdict:
        """The typed record back from its JSON form (as xdist workers send it, as summary.json holds it)."""
        data = _known(cls, record)
        data["ci"] = _ci(data.get("ci"))
        data["checks"] = tuple(Check.from_json(c) for c in data.get("checks") or ())
        data["p_values"] = {k: PValue.from_json(v) for k, v in (data.get("p_values") or {}).items()}
        data["null"] = NullSummary.from_json(data["null"]) if data.get("null") else None
        data["controls"] = {k: ControlOutcome.from_json(v) for k, v in (data.get("controls") or {}).items()}
        data["references"] = {k: ReferenceOutcome.from_json(v) for k, v in (data.get("references") or {}).items()}
        data["stability"] = Stability.from_json(data["stability"]) if data.get("stability") else None
        data["notes"] = tuple(data.get("notes") or ())
        return cls(**data)

    def kind_of(self, metric: str) -> str | None:
        """The declared kind of one of this case's metrics (``None`` when the record does not say)."""
        return self.metric_kinds.get(metric)

    def with_run_bh(self, p_run_bh: float | None) -> CaseVerdict:
        return replace(self, p_run_bh=p_run_bh)


def error_verdict(case_id: str, reason: str, location: str, *, hypothesis: str = "", claim: str = "",
                  probe: str = "", axes: dict[str, Any] | None = None, nodeid: str = "",
                  expected: Verdict | None = None, holds_if: str | int = "all") -> CaseVerdict:
    """A case that could not be judged: the probe or model failed, the file did not load, the worker died."""
    return CaseVerdict(
        id=case_id, hypothesis=hypothesis, claim=claim, probe=probe, axes=axes or {}, verdict="error",
        effect_metric=None, effect=None, ci=(None, None), p=None, seed=None, metrics={}, reported={}, checks=(),
        reason=reason, location=location, expected=expected, holds_if=holds_if, nodeid=nodeid,
    )


@dataclass(frozen=True)
class RunStatus:
    """Which run a summary is: its id (also its folder under ``reports/runs/``), when it ended, and whether it ran
    the whole selection to the end (``complete``), stopped early (``interrupted``: Ctrl-C, ``-x``, a crash) or
    ran a narrowed selection (``narrowed``: ``-k``, ``-m``, some files); ``last_complete`` is where the latest
    complete run's summary is (this one's own folder when it is complete)."""

    id: str
    finished: str
    state: Literal["complete", "interrupted", "narrowed"]
    why: str = ""
    last_complete: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RunStatus:
        return cls(**_known(cls, record))


@dataclass(frozen=True)
class ClaimResult:
    """One hypothesis's answer, from its cases by its ``holds_if`` rule (``hypocheck.decisions.claim_result``)."""

    hypothesis: str
    claim: str
    verdict: CaseOutcome
    rule: str | int
    counts: dict[str, int]
    cases: tuple[str, ...]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClaimResult:
        known = _known(cls, data)
        return cls(**{**known, "cases": tuple(known.get("cases") or ())})


@dataclass(frozen=True)
class RunCorrection:
    """How the run's significant case p-values fare under BH across the whole run: reported, never a verdict."""

    method: str
    alpha: float
    tested: int
    significant_raw: int
    significant_after: int
    not_after_correction: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunCorrection:
        known = _known(cls, data)
        return cls(**{**known, "not_after_correction": tuple(known.get("not_after_correction") or ())})


DriftKind = Literal["added", "gone", "verdict", "metric", "metric_added", "metric_gone"]


@dataclass(frozen=True)
class DriftEntry:
    """One way a case differs from its baseline: a verdict flip, a metric beyond its allowance, new or gone."""

    kind: DriftKind
    name: str | None = None
    baseline: Any = None
    current: Any = None
    allowed: float | None = None
    rule: str | None = None
    delta: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.name is not None:
            out["name"] = self.name
        if self.kind not in {"added", "gone"}:
            out |= {"baseline": self.baseline, "current": self.current}
        out |= {k: v for k, v in (("allowed", self.allowed), ("rule", self.rule), ("delta", self.delta))
                if v is not None}
        return finite_or_none(out)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DriftEntry:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class Drift:
    """A run against a baseline: per-case entries, claims whose verdict flipped, cases gone, fingerprints."""

    baseline: str
    path: str
    checkpoints: dict[str, dict[str, str | None]]
    cases: dict[str, tuple[DriftEntry, ...]]
    claims: dict[str, dict[str, str]]
    gone: tuple[str, ...]
    unchecked: tuple[str, ...]
    gone_nodeids: dict[str, str] = field(default_factory=dict)
    """Where each gone case was defined in the baseline run (its pytest node id)."""

    @property
    def count(self) -> int:
        """Cases that drifted, including gone ones."""
        return len(self.cases) + len(self.gone)

    def to_json(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "path": self.path, "checkpoints": self.checkpoints,
                "cases": {k: [e.to_json() for e in v] for k, v in self.cases.items()}, "claims": self.claims,
                "gone": list(self.gone), "unchecked": list(self.unchecked), "gone_nodeids": self.gone_nodeids}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Drift:
        return cls(str(data["baseline"]), str(data.get("path", "")), dict(data.get("checkpoints") or {}),
                   {k: tuple(DriftEntry.from_json(e) for e in v) for k, v in (data.get("cases") or {}).items()},
                   dict(data.get("claims") or {}), tuple(data.get("gone") or ()), tuple(data.get("unchecked") or ()),
                   dict(data.get("gone_nodeids") or {}))


def _tally(verdicts: list[str]) -> dict[str, int]:
    counts = Counter(verdicts)
    return {k: counts.get(k, 0) for k in OUTCOMES}


@dataclass(frozen=True)
class RunRecord:
    """A finished run: every case (sorted by id, with its run-wide BH p), every claim, the environment, the
    run-wide correction and, against a baseline, the drift. Its JSON form is summary.json."""

    cases: tuple[CaseVerdict, ...]
    claims: tuple[ClaimResult, ...]
    environment: dict[str, Any]
    run_correction: RunCorrection
    drift: Drift | None = None
    status: RunStatus | None = None
    """Whether the run was complete, interrupted or narrowed (``hypocheck.decisions.run_status``)."""

    @property
    def counts(self) -> dict[str, int]:
        return _tally([c.verdict for c in self.cases])

    @property
    def claim_counts(self) -> dict[str, int]:
        return _tally([c.verdict for c in self.claims])

    @property
    def mismatches(self) -> list[str]:
        """Cases whose verdict differs from the planted truth."""
        return [c.id for c in self.cases if c.truth == "differs"]

    @property
    def truth(self) -> dict[str, Any]:
        compared = [c for c in self.cases if c.truth is not None]
        return {"compared": len(compared), "matches": sum(c.truth == "matches" for c in compared),
                "differs": self.mismatches}

    @property
    def not_specific_to_training(self) -> list[str]:
        return [c.id for c in self.cases if c.specific_to_training is False]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "counts": self.counts,
            "claim_counts": self.claim_counts,
            "truth": self.truth,
            "mismatches": self.mismatches,
            "run_correction": self.run_correction.to_json(),
            "not_specific_to_training": self.not_specific_to_training,
            "claims": [c.to_json() for c in self.claims],
            "cases": [c.to_json() for c in self.cases],
            "environment": self.environment,
        }
        if self.drift is not None:
            doc["drift"] = self.drift.to_json()
        if self.status is not None:
            doc = {"run": self.status.to_json(), **doc}
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RunRecord:
        """A run back from summary.json."""
        return cls(tuple(CaseVerdict.from_json(c) for c in doc.get("cases") or ()),
                   tuple(ClaimResult.from_json(c) for c in doc.get("claims") or ()),
                   dict(doc.get("environment") or {}), RunCorrection.from_json(doc["run_correction"]),
                   Drift.from_json(doc["drift"]) if doc.get("drift") else None,
                   RunStatus.from_json(doc["run"]) if doc.get("run") else None)
