"""Gene sets select single perturbations unless a set asks for combinations, and say which would-be members a
case does not use, and why."""

from __future__ import annotations

import json
from pathlib import Path

from hypocheck.fixtures.genesets import DEFAULT_GENE_SETS, GeneSetDefinition, gene_sets_from_config

NAMES = ["MAPK1", "MAPK3", "MAP2K3+MAP2K6", "MAPK7", "TP53"]


def test_patterns_match_single_perturbations_unless_combinations_are_asked_for() -> None:
    single = GeneSetDefinition("mapk", (r"^MAP",))
    assert single.select(NAMES) == ["MAPK1", "MAPK3", "MAPK7"]
    assert GeneSetDefinition("mapk", (r"^MAP",), combinations=True).select(NAMES) == NAMES[:4]
    assert GeneSetDefinition("pair", (), ("MAP2K3+MAP2K6",)).select(NAMES) == ["MAP2K3+MAP2K6"]  # named explicitly
    sets = gene_sets_from_config({"mapk": {"patterns": ["^MAP"], "combinations": True}})
    assert sets["mapk"].combinations and not DEFAULT_GENE_SETS["ribosome"].combinations


def test_the_account_names_every_unused_member_and_why() -> None:
    definition = GeneSetDefinition("mapk", (r"^MAP",), ("MAPKX",))
    used = ["MAPK1"]  # the model's knockdowns that the data have
    known = ["MAPK1", "MAPK3", "MAP2K3+MAP2K6", "TP53"]  # the model's perturbations
    in_data = ["MAPK1", "MAPK7", "TP53"]
    assert definition.account(used, known, in_data) == {
        "MAPKX": "not a perturbation of the model", "MAP2K3+MAP2K6": "a combined perturbation",
        "MAPK3": "not in the data", "MAPK7": "not a perturbation of the model"}


def test_a_demo_case_says_how_many_members_it_used_and_names_the_others() -> None:
    """On the demo world: the count a case reports is the set's members among the model's knockdowns that the
    data have, and an explicit member the demo model lacks (SDHC of the OXPHOS set) is named with why."""
    from hypocheck.fixtures.config import SuiteConfig
    from hypocheck.fixtures.suite import LoadedSuite

    root = Path(__file__).resolve().parents[1]
    suite = LoadedSuite(SuiteConfig.load(root / "suite.yaml"))
    used, dropped = suite.member_account("fewshot", "oxphos")
    knockdowns = suite.knockdowns("fewshot")
    assert used == len(DEFAULT_GENE_SETS["oxphos"].select(knockdowns)) > 0
    assert all(why in {"not a perturbation of the model", "not in the data", "a combined perturbation"}
               for why in dropped.values())
    assert ("SDHC" in dropped) == ("SDHC" not in knockdowns)
    assert json.dumps(dropped)  # plain data for every output
