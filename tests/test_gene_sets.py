"""Gene sets select single perturbations unless a set asks for combinations, and say which would-be members a
case does not use, and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


BAD_FILES = [  # (file name, its text, fragments the error must hold); '{f}' is the file's path
    ("spaces.gmt", "KEGG_A\tdesc\tKD01\nKEGG_B desc KD02 KD03\n",
     ["{f}:2: malformed GMT line: 1 tab-separated field (are they separated by spaces?)",
      "valid: GMT: one set per line, tab-separated: name, description, then at least one gene"]),
    ("no_genes.gmt", "# header\nKEGG_A\tdesc\t\t\n", ["{f}:2: malformed GMT line: no gene", "valid: GMT"]),
    ("no_name.gmt", "\tdesc\tKD01\n", ["{f}:1: malformed GMT line: no set name"]),
    ("twice.gmt", "A\t\tKD01\nB\t\tKD02\nA\t\tKD03\n", ["{f}:3: set 'A' is defined twice (also at line 1)"]),
    ("slash.gmt", "A/B\t\tKD01\n", ["{f}:1: set name 'A/B' holds '/'"]),
    ("three.tsv", "set\tgene\nT1\tKD01\tKD02\n",
     ["{f}:2: malformed TSV line: 3 columns", "valid: TSV: two tab-separated columns, set and gene"]),
    ("empty_col.tsv", "T1\tKD01\nT1\t\n", ["{f}:2: malformed TSV line: an empty column"]),
    ("header_only.tsv", "set\tgene\n", ["{f}: the gene set file holds no set", "valid: TSV"]),
    ("scalar.yaml", "Y1: [KD01]\nY2: KD02\n",
     ["{f}:2: set 'Y2': a list of gene names is needed, not 'KD02'", "valid: YAML: a mapping of set name"]),
    ("list.yaml", "- KD01\n- KD02\n", ["{f}:1: the file holds list, not a mapping"]),
    ("broken.yaml", "Y1: [KD01\nY2: [KD02]\n", ["{f}:", "valid: YAML"]),
    ("sets.txt", "A\t\tKD01\n", ["cannot tell the layout of a .txt gene set file", "format: gmt | tsv | yaml"]),
    ("latin1.gmt", b"A\t\tKD\xe901\n", ["{f}: not UTF-8 text"]),
]


@pytest.mark.parametrize(("name", "text", "fragments"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_set_file_is_refused_at_its_line_with_the_valid_layout(
    tmp_path: Path, name: str, text: str | bytes, fragments: list[str]
) -> None:
    """Each malformed file: one ConfigError naming the file and line, what is wrong and the valid layout, and
    where the suite config names the file."""
    from hypocheck.errors import ConfigError
    from hypocheck.fixtures.config import SuiteConfig

    target = tmp_path / name
    target.write_bytes(text if isinstance(text, bytes) else text.encode())
    config = _suite(tmp_path, {"from": name})
    with pytest.raises(ConfigError) as info:
        SuiteConfig.load(config)
    message = str(info.value)
    for fragment in fragments:
        assert fragment.replace("{f}", str(target)) in message, f"{fragment!r} not in:\n{message}"
    assert f"the file is named at {config}:" in message


def test_missing_files_bounds_that_keep_nothing_and_clashing_names_are_refused(tmp_path: Path) -> None:
    from hypocheck.errors import ConfigError
    from hypocheck.fixtures.config import SuiteConfig

    with pytest.raises(ConfigError, match="gene set file not found") as info:
        SuiteConfig.load(_suite(tmp_path, {"from": ["sets/none.gmt"]}))
    assert str(tmp_path / "sets" / "none.gmt") in str(info.value)
    assert f"named at {tmp_path / 'suite.yaml'}:" in str(info.value)
    (tmp_path / "a.gmt").write_text(GMT)
    nothing_kept = r"no set of this file has between 4 and 10 genes \(its 3 sets have 2 to 12\)"
    with pytest.raises(ConfigError, match=nothing_kept):
        SuiteConfig.load(_suite(tmp_path, {"from": "a.gmt", "min_size": 4, "max_size": 10}))
    with pytest.raises(ConfigError, match="min_size 5 is above max_size 3"):
        SuiteConfig.load(_suite(tmp_path, {"from": "a.gmt", "min_size": 5, "max_size": 3}))
    with pytest.raises(ConfigError, match="is named twice"):
        SuiteConfig.load(_suite(tmp_path, {"from": ["a.gmt", "a.gmt"]}))
    (tmp_path / "b.gmt").write_text("KEGG_B\t\tKD09\n")
    with pytest.raises(ConfigError, match=r"'KEGG_B' is defined twice: in a.gmt:4 and in b.gmt:1") as info:
        SuiteConfig.load(_suite(tmp_path, {"from": ["a.gmt", "b.gmt"]}))
    assert f"{tmp_path / 'b.gmt'}:1" in str(info.value)
    with pytest.raises(ConfigError, match=r"'KEGG_A' is defined twice: in a.gmt:2 and under gene_sets:") as info:
        SuiteConfig.load(_suite(tmp_path, {"from": "a.gmt", "KEGG_A": {"members": ["KD01"]}}))
    assert "(at gene_sets.KEGG_A)" in str(info.value)


def test_related_may_annotate_a_set_read_from_a_file(tmp_path: Path) -> None:
    from hypocheck.errors import ConfigError
    from hypocheck.fixtures.config import SuiteConfig
    from hypocheck.fixtures.genesets import related_sets

    (tmp_path / "a.gmt").write_text(GMT)
    sets = SuiteConfig.load(_suite(tmp_path, {"from": "a.gmt", "KEGG_A": {"related": ["KEGG_B"]}})
                            ).gene_set_definitions()
    assert sets["KEGG_A"].members and sets["KEGG_A"].source == "a.gmt:2"  # the file's members and source kept
    assert related_sets(sets, "KEGG_B") == ["KEGG_A"]
    with pytest.raises(ConfigError, match="'KEGG_A' is declared related to 'KEGG_Z', which is no gene set"):
        SuiteConfig.load(_suite(tmp_path, {"from": "a.gmt", "KEGG_A": {"related": ["KEGG_Z"]}}))
    with pytest.raises(ConfigError, match="'NEW' has only 'related'"):
        SuiteConfig.load(_suite(tmp_path, {"from": "a.gmt", "NEW": {"related": ["KEGG_A"]}}))
