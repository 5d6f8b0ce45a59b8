"""Claims of absence are equivalence tests on the effect's CI, decided by the engine's one rule.

Hand-built probe results: a CI below, above or straddling the margin; significant but negligible effects; the
same effect read as presence and as absence; expectations added to or left out of an absence hypothesis.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from hypocheck import registry
from hypocheck.cases import Case, expand
from hypocheck.decisions import judge
from hypocheck.errors import HypocheckError
from hypocheck.registry import ProbeResult, probe, registered_probes
from hypocheck.schema import hypotheses_from_doc
from hypocheck.yamlsource import load_yaml

VOCAB = {"model": ["m"], "gene_set": ["s"]}


@pytest.fixture(autouse=True)
def toy_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Toy probes of these tests, in a registry of their own: other tests of the process list the shipped ones."""
    registered_probes()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @probe("absence_toy", metrics=("effect", "p", "n"), effect="effect", p="p", min_effect=0.05, absence="below",
           kinds={"count": ("n",)})
    def absence_toy(*, params, rng):  # type: ignore[no-untyped-def]
        """A stand-in: the tests judge hand-built results of its shape."""
        return ProbeResult(metrics={"effect": 0.0, "p": 1.0, "n": 10})


    @probe("difference_toy", metrics=("difference", "p"), effect="difference", p="p", absence="within")
    def difference_toy(*, params, rng):  # type: ignore[no-untyped-def]
        """A stand-in for a two-sided difference with no minimum effect of its own."""
        return ProbeResult(metrics={"difference": 0.0, "p": 1.0})


    @probe("no_absence_toy", metrics=("effect",), effect="effect")
    def no_absence_toy(*, params, rng):  # type: ignore[no-untyped-def]
        """A probe without a rule for absence."""
        return ProbeResult(metrics={"effect": 0.0})


def case_of(tmp_path: Path, body: str, probe_name: str = "absence_toy") -> Case:
    path = tmp_path / "h.yaml"
    path.write_text(f"id: h\nclaim: c\nprobe: {probe_name}\ncases: {{model: [m], gene_set: [s]}}\n{body}")
    doc = load_yaml(path)
    (case,) = [c for hyp, base in hypotheses_from_doc(doc) for c in expand(hyp, doc, base, VOCAB)]
    return case


def result(effect: float, ci: tuple[float, float], p: float, name: str = "effect") -> ProbeResult:
    return ProbeResult(metrics={name: effect, "p": p, "n": 10}, cis={name: ci}, attainable={"p": 1e-4})


@pytest.mark.parametrize(
    "ci, p, verdict, words",
    [
        ((-0.01, 0.03), 0.4, "pass", "lies below the margin 0.05"),
        ((0.0012, 0.0021), 0.0002, "pass", "lies below the margin 0.05"),  # significant but negligible
        ((0.06, 0.2), 0.0002, "fail", "lies above the margin 0.05"),
        ((0.05, 0.2), 0.3, "fail", "lies above the margin 0.05"),  # at the margin counts as above
        ((0.01, 0.09), 0.01, "inconclusive", "straddles the margin 0.05"),
    ],
)
def test_below_above_straddling(tmp_path: Path, ci: tuple[float, float], p: float, verdict: str,
                                words: str) -> None:
    judged = judge(case_of(tmp_path, "absence: true\n"), result(sum(ci) / 2, ci, p))
    assert judged.verdict == verdict and words in judged.reason
    assert judged.claim_kind == "absence" and judged.margin == 0.05
    assert (verdict == "pass" and p < 0.05) == any("detectable but below the margin" in n for n in judged.notes)
    assert judged.checks[0].holds is {"pass": True, "fail": False, "inconclusive": None}[verdict]


def test_within_for_a_two_sided_difference(tmp_path: Path) -> None:
    case = case_of(tmp_path, "absence: true\nmargin: 0.1\n", "difference_toy")
    verdicts = {ci: judge(case, result(sum(ci) / 2, ci, 0.5, "difference")).verdict
                for ci in [(-0.05, 0.08), (-0.17, -0.05), (0.1, 0.3), (-0.4, -0.1), (-0.2, 0.2)]}
    assert verdicts == {(-0.05, 0.08): "pass", (-0.17, -0.05): "inconclusive", (0.1, 0.3): "fail",
                        (-0.4, -0.1): "fail", (-0.2, 0.2): "inconclusive"}


def test_the_data_reason_and_a_missing_ci_are_inconclusive(tmp_path: Path) -> None:
    case = case_of(tmp_path, "absence: true\n")
    few = ProbeResult(metrics={"effect": math.nan, "p": math.nan, "n": 2}, inconclusive="2 set members found")
    assert judge(case, few).verdict == "inconclusive" and "2 set members" in judge(case, few).reason
    no_ci = ProbeResult(metrics={"effect": 0.01, "p": 0.5, "n": 10})
    assert judge(case, no_ci).verdict == "inconclusive" and "no finite 95% CI" in judge(case, no_ci).reason


GRID_CIS = [(lo, lo + width) for lo in (-0.02, 0.0, 0.01, 0.03, 0.049, 0.05, 0.07) for width in (0.005, 0.02, 0.1)]


@pytest.mark.parametrize("p", [0.0002, 0.03, 0.4])
def test_presence_and_absence_partition_one_effect(tmp_path: Path, p: float) -> None:
    """Over a grid of CIs: one effect never passes both claims, and never fails both when it is negligible
    (its CI reaches below the margin)."""
    presence = case_of(tmp_path, "expect: [significant]\n")
    absence = case_of(tmp_path, "absence: true\n")
    assert presence.min_effect == absence.margin == 0.05
    for ci in GRID_CIS:
        res = result(sum(ci) / 2, ci, p)
        pair = (judge(presence, res).verdict, judge(absence, res).verdict)
        assert pair != ("pass", "pass"), (ci, p)
        if ci[0] < 0.05:
            assert pair != ("fail", "fail"), (ci, p)
        if ci[1] < 0.05:
            assert pair == ("fail", "pass"), (ci, p)


@pytest.mark.parametrize("expect", ["", "expect: [p >= 0.05]\n", "expect: [p < 0.05, effect > 1]\n",
                                    "expect: [effect < 1]\n"])
def test_expectations_never_change_an_absence_verdict(tmp_path: Path, expect: str) -> None:
    plain = case_of(tmp_path, "absence: true\n")
    with_exp = case_of(tmp_path, "absence: true\n" + expect)
    for ci, p in itertools.product(GRID_CIS, (0.0002, 0.4)):
        res = result(sum(ci) / 2, ci, p)
        assert judge(with_exp, res).verdict == judge(plain, res).verdict, (expect, ci, p)


def test_what_an_absence_hypothesis_may_say(tmp_path: Path) -> None:
    def error(body: str, probe_name: str = "absence_toy") -> str:
        with pytest.raises(HypocheckError) as info:
            case_of(tmp_path, body, probe_name)
        return str(info.value)

    assert "needs at least one expectation" in error("")
    assert "'margin:' is the margin of a claim of absence" in error("margin: 0.1\nexpect: [significant]\n")
    assert "has no rule for a claim of absence" in error("absence: true\n", "no_absence_toy")
    assert "absence_toy" in error("absence: true\n", "no_absence_toy")
    assert "needs a margin" in error("absence: true\n", "difference_toy")
    assert case_of(tmp_path, "absence: true\nmin_effect: 0.2\n").margin == 0.2
    assert case_of(tmp_path, "absence: true\nmargin: 0.3\nmin_effect: 0.2\n").margin == 0.3
