"""The expectation language: parsing, evaluation, and the errors it gives."""

from __future__ import annotations

import math

import pytest

from hypocheck.errors import ExpectationSyntaxError
from hypocheck.expect import check_satisfiable, parse_expectation


def holds(text: str, **metrics: float) -> bool | None:
    return parse_expectation(text).evaluate(metrics, "p", 0.05).holds


@pytest.mark.parametrize(
    ("text", "metrics", "expected"),
    [
        ("z > 2", {"z": 2.5}, True),
        ("z > 2", {"z": 2.0}, False),
        ("z >= 2", {"z": 2.0}, True),
        ("0 <= r <= 0.2", {"r": 0.057}, True),
        ("0 <= r <= 0.2", {"r": 0.3}, False),
        ("within > background", {"within": 0.58, "background": 0.27}, True),
        ("r in [0.05, 0.3]", {"r": 0.119}, True),
        ("r in [0.05, 0.3]", {"r": 0.01}, False),
        ("r ~= 0.119 +- 0.05", {"r": 0.16}, True),
        ("r ≈ 0.119 ± 0.05", {"r": 0.2}, False),
        ("r ~= 0.1 +- 10%", {"r": 0.109}, True),
        ("r ~= 0.1 +- 10%", {"r": 0.111}, False),
        ("significant", {"p": 0.01}, True),
        ("significant", {"p": 0.05}, False),
        ("significant at 0.01", {"p": 0.02}, False),
        ("n != 0", {"n": 3}, True),
        ("x == 1e-3", {"x": 0.001}, True),
    ],
)
def test_evaluates(text: str, metrics: dict[str, float], expected: bool) -> None:
    assert holds(text, **metrics) is expected


def test_nan_is_undecidable() -> None:
    outcome = parse_expectation("z > 2").evaluate({"z": math.nan}, "p", 0.05)
    assert outcome.holds is None and "undecidable" in outcome.text


def test_failure_text_shows_measured_values() -> None:
    outcome = parse_expectation("within > background").evaluate({"within": 0.2, "background": 0.3}, None, 0.05)
    assert outcome.holds is False
    assert "within = 0.2" in outcome.text and "background = 0.3" in outcome.text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "non-empty"),
        ("z >", "incomplete"),
        ("z => 2", "cannot read"),
        ("1 < 2", "name a metric"),
        ("r in [0.3, 0.1]", "low exceeds high"),
        ("r in 0.1, 0.3", "range reads"),
        ("r ~= 0.1", "approx reads"),
        ("r ~= 0.1 +- -1", "tolerance"),
        ("significant at 2", "alpha"),
        ("2 < z < 1", "never all hold"),
        ("__import__('os').system('x')", "cannot read"),
        ("z and 2", "comparator"),
    ],
)
def test_bad_expectations_raise_own_error(text: str, fragment: str) -> None:
    with pytest.raises(ExpectationSyntaxError, match=fragment):
        parse_expectation(text)


def test_contradictory_expectations_across_lines() -> None:
    with pytest.raises(ExpectationSyntaxError, match="never all hold"):
        check_satisfiable([parse_expectation("z > 2"), parse_expectation("z < 1")])
    check_satisfiable([parse_expectation("z > 2"), parse_expectation("z < 10")])
