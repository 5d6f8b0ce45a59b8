"""The expectation language: parsed into data, never executed.

Grammar (one expectation per string)::

    z > 2                                   comparison (< <= > >= == !=)
    0 <= mean_spearman <= 0.2               chained comparison
    within_mean_cosine > background_mean_cosine
    pearson in [0.05, 0.3]                  closed range
    pearson ~= 0.119 +- 0.05                approx, absolute tolerance (also ≈ and ±)
    pearson ~= 0.119 +- 10%                 approx, relative tolerance
    delta > references.perturb_mean.delta + min_effect
                                            sums and differences of names and numbers
    significant                             the probe's p-value below the hypothesis alpha
    significant at 0.01                     … below a given alpha

Operands are metric names, numbers, or sums and differences of them; a name is a metric of the probe,
``references.<arm>.<metric>`` (the same metric on a reference arm) or ``min_effect``. A failed check
explains itself with the measured values, e.g. ``z > 2 failed: z = 1.37``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ExpectationSyntaxError, UnknownNameError

_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)"
    r"|(?P<op><=|>=|==|!=|~=|\+-|[-+<>≈±%\[\],]))"
)
_COMPARATORS = {"<", "<=", ">", ">=", "==", "!="}
_MIRRORED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class Operand:
    """A metric name, a literal number, or a sum of signed such terms (``a + b - 0.05``)."""

    metric: str | None = None
    value: float | None = None
    terms: tuple[tuple[int, Operand], ...] = ()

    def resolve(self, metrics: Mapping[str, float]) -> float:
        if self.terms:
            return sum(sign * term.resolve(metrics) for sign, term in self.terms)
        return float(metrics[self.metric]) if self.metric is not None else float(self.value)  # type: ignore[arg-type]

    def names(self) -> list[str]:
        """The metric names this operand reads."""
        if self.terms:
            return [name for _, term in self.terms for name in term.names()]
        return [self.metric] if self.metric is not None else []

    def __str__(self) -> str:
        if self.terms:
            signed = [(-sign, Operand(value=-term.value)) if term.value is not None and term.value < 0 else (sign, term)
                      for sign, term in self.terms]
            text = " ".join(f"{'+' if sign > 0 else '-'} {term}" for sign, term in signed)
            return text[2:] if text.startswith("+ ") else text
        return self.metric if self.metric is not None else f"{self.value:g}"


@dataclass(frozen=True)
class Outcome:
    """The result of checking one expectation."""

    holds: bool | None  # None: cannot be decided (a metric is NaN)
    text: str  # the expectation, with the measured values


@dataclass(frozen=True)
class Expectation:
    """One parsed expectation: a chain of comparisons, an approx or a significance test."""

    source: str
    kind: str  # "compare" | "approx" | "significant"
    operands: tuple[Operand, ...] = ()
    comparators: tuple[str, ...] = ()
    target: float = 0.0
    tolerance: float = 0.0
    relative: bool = False
    alpha: float | None = None

    @property
    def allowed(self) -> float:
        """An approx expectation's absolute tolerance (relative ones scale with the target)."""
        return self.tolerance * abs(self.target) if self.relative else self.tolerance

    def metrics_used(self) -> list[str]:
        return list(dict.fromkeys(name for o in self.operands for name in o.names()))

    def evaluate(self, metrics: Mapping[str, float], p_metric: str | None, alpha: float) -> Outcome:
        """Check against measured metrics; NaN operands make the outcome undecided."""
        if self.kind == "significant":
            if p_metric is None or p_metric not in metrics:
                return Outcome(None, f"{self.source}: the probe reports no p-value")
            p, level = float(metrics[p_metric]), self.alpha if self.alpha is not None else alpha
            if math.isnan(p):
                return Outcome(None, f"{self.source}: {p_metric} is NaN")
            return Outcome(p < level, f"{p_metric} = {p:.4g} {'<' if p < level else '>='} alpha {level:g}")
        values = [o.resolve(metrics) for o in self.operands]
        shown = ", ".join(f"{name} = {float(metrics[name]):.4g}" for name in self.metrics_used())
        if any(math.isnan(v) for v in values):
            return Outcome(None, f"{self.source}: undecidable ({shown})")
        if self.kind == "approx":
            measured = values[0]
            allowed = self.allowed
            ok = abs(measured - self.target) <= allowed
            gap = abs(measured - self.target)
            return Outcome(ok, f"{self.source}: {shown} (|Δ| = {gap:.4g}, allowed {allowed:.4g})")
        ok = all(_compare(a, op, b) for a, op, b in zip(values, self.comparators, values[1:], strict=False))
        return Outcome(ok, f"{self.source}: {shown}")


def _compare(a: float, op: str, b: float) -> bool:
    return {
        "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b,
    }[op]


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ExpectationSyntaxError(
                f"cannot read {text[pos:]!r} in expectation {text!r}",
                hint="write e.g. 'z > 2', '0 <= r <= 0.2', 'r in [0, 0.3]', 'r ~= 0.12 +- 0.05' "
                "or 'significant at 0.05'",
            )
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _number(token: tuple[str, str], source: str) -> float:
    if token[0] != "num":
        raise ExpectationSyntaxError(f"expected a number, found {token[1]!r} in {source!r}")
    return float(token[1])


def _operand(token: tuple[str, str], source: str) -> Operand:
    kind, text = token
    if kind == "num":
        return Operand(value=float(text))
    if kind == "name":
        return Operand(metric=text)
    raise ExpectationSyntaxError(f"expected a metric name or a number, found {text!r} in {source!r}")


def _term(toks: list[tuple[str, str]], i: int, source: str) -> tuple[int, Operand, int]:
    """One signed term at ``toks[i]``: ``-x``, ``+ 2``, ``name``; its sign, operand and the next index."""
    sign = 1
    if i < len(toks) and toks[i] in (("op", "-"), ("op", "+")):
        sign, i = (-1 if toks[i][1] == "-" else 1), i + 1
    if i >= len(toks) or toks[i][0] == "op":
        raise ExpectationSyntaxError(
            f"incomplete expectation {source!r}: a name or number is missing "
            + (f"before {toks[i][1]!r}" if i < len(toks) else "at the end"),
            hint="a comparison reads 'metric > 2', '0 <= metric <= 1' or 'a > b + 0.05'")
    return sign, _operand(toks[i], source), i + 1


def _expression(toks: list[tuple[str, str]], i: int, source: str) -> tuple[Operand, int]:
    """An operand at ``toks[i]``: a name or number, or a sum of them (``a + b - 0.05``); and the next index."""
    sign, first, i = _term(toks, i, source)
    terms = [(sign, first)]
    while i < len(toks):
        kind, text = toks[i]
        if kind == "op" and text in {"+", "-"}:
            sign, term, i = _term(toks, i, source)
        elif kind == "num" and text[0] in "+-":  # 'a -0.05' reads as 'a - 0.05'
            sign, term, i = 1, Operand(value=float(text)), i + 1
        else:
            break
        terms.append((sign, term))
    if len(terms) == 1 and sign > 0:
        return first, i
    if len(terms) == 1 and first.value is not None:
        return Operand(value=-first.value), i
    return Operand(terms=tuple(terms)), i


def parse_expectation(text: str) -> Expectation:
    """Parse one expectation string (see the module docstring for the grammar)."""
    if not isinstance(text, str) or not text.strip():
        raise ExpectationSyntaxError(f"an expectation must be a non-empty string, got {text!r}")
    source = " ".join(text.split())
    toks = _tokens(source)
    words = [t[1] for t in toks]
    if words[0] == "significant":
        if len(words) == 1:
            return Expectation(source, "significant")
        if len(words) == 3 and words[1] == "at":
            alpha = _number(toks[2], source)
            if not 0 < alpha < 1:
                raise ExpectationSyntaxError(f"alpha must lie in (0, 1), got {alpha:g} in {source!r}")
            return Expectation(source, "significant", alpha=alpha)
        raise ExpectationSyntaxError(f"write 'significant' or 'significant at <alpha>', not {source!r}")
    if len(words) >= 2 and words[1] == "in":
        if len(toks) != 7 or words[2] != "[" or words[4] != "," or words[6] != "]":
            raise ExpectationSyntaxError(f"a range reads 'metric in [low, high]', not {source!r}")
        low, high = _number(toks[3], source), _number(toks[5], source)
        if low > high:
            raise ExpectationSyntaxError(f"empty range [{low:g}, {high:g}] in {source!r}: low exceeds high")
        metric = _operand(toks[0], source)
        return Expectation(source, "compare", (Operand(value=low), metric, Operand(value=high)), ("<=", "<="))
    if len(words) >= 2 and words[1] in {"~=", "≈"}:
        if len(toks) not in (5, 6) or words[3] not in {"+-", "±"} or (len(toks) == 6 and words[5] != "%"):
            raise ExpectationSyntaxError(f"approx reads 'metric ~= value +- tolerance[%]', not {source!r}")
        target, tol = _number(toks[2], source), _number(toks[4], source)
        if tol < 0:
            raise ExpectationSyntaxError(f"tolerance must be ≥ 0, got {tol:g} in {source!r}")
        relative = len(toks) == 6
        return Expectation(
            source, "approx", (_operand(toks[0], source),), target=target,
            tolerance=tol / 100 if relative else tol, relative=relative,
        )
    first, i = _expression(toks, 0, source)
    operands, comparators = [first], []
    while i < len(toks):
        if toks[i][1] not in _COMPARATORS:
            raise ExpectationSyntaxError(
                f"expected a comparator (< <= > >= == !=), found {toks[i][1]!r} in {source!r}"
            )
        comparators.append(toks[i][1])
        operand, i = _expression(toks, i + 1, source)
        operands.append(operand)
    if not comparators:
        raise ExpectationSyntaxError(
            f"incomplete expectation {source!r}", hint="a comparison reads 'metric > 2' or '0 <= metric <= 1'"
        )
    if not any(o.names() for o in operands):
        raise ExpectationSyntaxError(f"{source!r} compares only numbers; name a metric")
    parsed = Expectation(source, "compare", tuple(operands), tuple(comparators))
    check_satisfiable([parsed])
    return parsed


def literal_bounds(exp: Expectation) -> dict[str, tuple[float, float]]:
    """Per metric, the interval that literal bounds in ``exp`` allow (``-inf``/``inf`` when open)."""
    bounds: dict[str, tuple[float, float]] = {}

    def narrow(metric: str, low: float = -math.inf, high: float = math.inf) -> None:
        lo, hi = bounds.get(metric, (-math.inf, math.inf))
        bounds[metric] = (max(lo, low), min(hi, high))

    if exp.kind == "approx" and exp.operands[0].metric:
        narrow(exp.operands[0].metric, exp.target - exp.allowed, exp.target + exp.allowed)
    if exp.kind != "compare":
        return bounds
    for a, op, b in zip(exp.operands, exp.comparators, exp.operands[1:], strict=False):
        if b.metric and a.value is not None:
            a, op, b = b, _MIRRORED[op], a  # '2 < z' reads as 'z > 2'
        if not (a.metric and b.value is not None):
            continue
        if op in {"<", "<="}:
            narrow(a.metric, high=b.value)
        elif op in {">", ">="}:
            narrow(a.metric, low=b.value)
        elif op == "==":
            narrow(a.metric, b.value, b.value)
    return bounds


def upper_p_bounds(exp: Expectation, p_metric: str | None, alpha: float) -> dict[str, float]:
    """Metrics that ``exp`` requires to be *below* a literal (``significant`` asks it of the probe's p-value):
    for p-values, the thresholds a presence claim must reach."""
    if exp.kind == "significant":
        return {p_metric: exp.alpha if exp.alpha is not None else alpha} if p_metric else {}
    return {metric: high for metric, (_, high) in literal_bounds(exp).items() if math.isfinite(high)}


def check_satisfiable(expectations: list[Expectation]) -> None:
    """Reject expectations whose literal bounds on one metric can never all hold (``z > 2`` with ``z < 1``)."""
    combined: dict[str, tuple[float, float, list[str]]] = {}
    for exp in expectations:
        for metric, (low, high) in literal_bounds(exp).items():
            lo, hi, sources = combined.get(metric, (-math.inf, math.inf, []))
            combined[metric] = (max(lo, low), min(hi, high), [*sources, exp.source])
    for metric, (lo, hi, sources) in combined.items():
        if lo > hi:
            raise ExpectationSyntaxError(
                f"expectations on {metric!r} can never all hold: {' and '.join(repr(s) for s in sources)}"
                f" (need {lo:g} ≤ {metric} ≤ {hi:g})"
            )


def check_metrics(expectations: list[Expectation], produced: set[str], location_hint: str = "") -> None:
    """Every metric an expectation names must be one the probe produces."""
    for exp in expectations:
        for metric in exp.metrics_used():
            if metric not in produced:
                raise UnknownNameError("metric", metric, produced)


def is_name(text: str) -> bool:
    """Whether ``text`` is a valid metric name."""
    return bool(_NAME.match(text))
