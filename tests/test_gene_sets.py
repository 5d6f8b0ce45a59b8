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


# ------------------------------------------------------------------------------------------ sets from files
def _suite(root: Path, gene_sets: dict) -> Path:
    """A suite config whose gene_sets: are ``gene_sets`` (models and data are not read by these tests)."""
    import yaml

    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump({"models": {"tiny": {"run_dir": "run"}}, "data": {"path": "tiny.h5ad"},
                                    "cell_lines": ["hepg2"], "gene_sets": gene_sets}))
    return path


GMT = ("# MSigDB-style export\n"
       "KEGG_A\thttp://example.org/a\tKD01\tKD02\tKD03\tKD02\t\n"  # a repeated gene, a trailing tab
       "\n"
       "KEGG_B\t\tKD04\tKD05\n"
       "KEGG_BIG\tmany\t" + "\t".join(f"KD{i:02d}" for i in range(12)) + "\n")


def test_gmt_tsv_and_yaml_files_give_sets_with_their_source(tmp_path: Path) -> None:
    from hypocheck.fixtures.config import SuiteConfig

    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "pathways.gmt").write_text(GMT)
    (tmp_path / "long.tsv").write_text("gene_set\tgene\nT1\tKD01\nT2\tKD07\nT1\tKD09\n")
    (tmp_path / "plain.tab").write_text("T3\tKD03\nT3\tKD04\n")  # no header: the first line is a member
    (tmp_path / "mine.yaml").write_text("Y1: [KD00, KD08]\n")
    (tmp_path / "enrichr.txt").write_text("E1\t\tKD10\n")
    config = SuiteConfig.load(_suite(tmp_path, {
        "from": ["sets/pathways.gmt", "long.tsv", "plain.tab", "mine.yaml", {"path": "enrichr.txt", "format": "gmt"}],
        "inline": {"patterns": ["^KD1"]}}))
    sets = config.gene_set_definitions()
    assert sets["KEGG_A"].members == ("KD01", "KD02", "KD03") and sets["KEGG_A"].source == "sets/pathways.gmt:2"
    assert sets["KEGG_B"].members == ("KD04", "KD05") and sets["KEGG_B"].source == "sets/pathways.gmt:4"
    assert len(sets["KEGG_BIG"].members) == 12
    assert sets["T1"].members == ("KD01", "KD09") and sets["T1"].source == "long.tsv:2"  # lines need not be adjacent
    assert sets["T2"].members == ("KD07",)
    assert sets["T3"].members == ("KD03", "KD04") and sets["T3"].source == "plain.tab:1"
    assert sets["Y1"].members == ("KD00", "KD08") and sets["Y1"].source == "mine.yaml:1"
    assert sets["E1"].members == ("KD10",)
    assert sets["inline"].patterns == ("^KD1",) and sets["inline"].source is None
    assert set(DEFAULT_GENE_SETS) < set(sets)  # the defaults stay
    assert config.gene_sets.keys() == {"inline"}  # the keys that name files are not inline sets
    # a file's members are selected by name, like an inline set's
    assert sets["KEGG_A"].select(["KD03", "KD01", "KD09"]) == ["KD03", "KD01"]


def test_size_bounds_keep_sets_within_them_and_a_file_may_set_its_own(tmp_path: Path) -> None:
    from hypocheck.fixtures.config import SuiteConfig

    (tmp_path / "a.gmt").write_text(GMT)
    (tmp_path / "b.gmt").write_text("SMALL\t\tKD01\nMID\t\tKD01\tKD02\tKD03\n")
    config = SuiteConfig.load(_suite(tmp_path, {"from": "a.gmt", "min_size": 3, "max_size": 10}))
    # KEGG_A (3 genes) is kept, KEGG_B (2) is below 3, KEGG_BIG (12) above 10
    assert set(config.gene_set_definitions()) - set(DEFAULT_GENE_SETS) == {"KEGG_A"}
    # a file's own bounds win over the shared ones: b.gmt keeps its one-gene set, a.gmt still 3 … 10
    config = SuiteConfig.load(_suite(tmp_path, {"from": ["a.gmt", {"path": "b.gmt", "min_size": 1, "max_size": 1}],
                                                "min_size": 3, "max_size": 10}))
    assert set(config.gene_set_definitions()) - set(DEFAULT_GENE_SETS) == {"KEGG_A", "SMALL"}


def test_a_file_set_with_a_defaults_name_replaces_it(tmp_path: Path) -> None:
    from hypocheck.fixtures.config import SuiteConfig

    (tmp_path / "own.gmt").write_text("ribosome\tmy own\tRPL3\tRPS6\n")
    sets = SuiteConfig.load(_suite(tmp_path, {"from": "own.gmt"})).gene_set_definitions()
    assert sets["ribosome"].members == ("RPL3", "RPS6") and sets["ribosome"].patterns == ()
    assert sets["ribosome"].source == "own.gmt:1"
