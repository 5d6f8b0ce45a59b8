"""Hypothesis files: schema validation, positions in errors, close matches, JSON Schema."""

from __future__ import annotations

from pathlib import Path

import pytest

import hypocheck.probes  # noqa: F401  (registers probes)
from hypocheck.cases import Case, expand
from hypocheck.errors import HypocheckError, HypothesisFileError, UnknownNameError
from hypocheck.schema import hypotheses_from_doc, json_schema
from hypocheck.yamlsource import load_yaml

VOCAB = {"model": ["fewshot", "zeroshot"], "gene_set": ["ribosome", "splicing", "er_golgi"], "cell_line": ["hepg2"]}

GOOD = """\
id: claim_one
claim: Splicing knockdowns cluster in pert space
source: {claim: 1, notebook: NB02}
probe: pert_embedding_clustering
cases:
  model: [fewshot, zeroshot]
  gene_set: [splicing, ribosome]
params: {null_sets: 500}
expect: ["z > 2", significant]
reported: {splicing/within_mean_cosine: 0.581, ribosome/within_mean_cosine: 0.497, background_mean_cosine: 0.267}
expected: {default: pass, zeroshot/ribosome: fail}
"""


def cases_of(tmp_path: Path, text: str, name: str = "h.yaml") -> list[Case]:
    path = tmp_path / name
    path.write_text(text)
    doc = load_yaml(path)
    return [c for hyp, base in hypotheses_from_doc(doc) for c in expand(hyp, doc, base, VOCAB)]


def error_of(tmp_path: Path, text: str) -> HypocheckError:
    with pytest.raises(HypocheckError) as info:
        cases_of(tmp_path, text)
    return info.value


def test_good_file_expands_to_crossed_cases(tmp_path: Path) -> None:
    cases = cases_of(tmp_path, GOOD)
    assert [c.case_id for c in cases] == [
        "h::claim_one[fewshot-splicing]", "h::claim_one[fewshot-ribosome]",
        "h::claim_one[zeroshot-splicing]", "h::claim_one[zeroshot-ribosome]",
    ]
    first = cases[0]
    assert first.reported == {"within_mean_cosine": 0.581, "background_mean_cosine": 0.267}
    assert first.params.null_sets == 500  # type: ignore[attr-defined]
    assert [c.expected for c in cases] == ["pass", "pass", "pass", "fail"]
    assert len({c.seed for c in cases}) == 4
    assert str(first.location).endswith("h.yaml:1:1 (at id)")


def test_seed_ignores_file_name(tmp_path: Path) -> None:
    a = cases_of(tmp_path, GOOD, "a.yaml")[0]
    b = cases_of(tmp_path, GOOD, "b.yaml")[0]
    assert a.seed == b.seed and a.case_id != b.case_id


def test_several_hypotheses_in_one_file(tmp_path: Path) -> None:
    body = "\n".join("  " + line if line else line for line in GOOD.splitlines())
    text = "hypotheses:\n" + body.replace("  id: claim_one", "- id: claim_one", 1)
    assert len(cases_of(tmp_path, text)) == 4


@pytest.mark.parametrize(
    ("mutation", "where", "fragment"),
    [
        (("probe: pert_embedding_clustering", "probe: pert_embeding_clustering"), ":4:8", "did you mean"),
        (("expect: [\"z > 2\", significant]", "expect: [\"zz > 2\"]"), ":9:", "unknown metric"),
        (("  model: [fewshot, zeroshot]", "  model: [fewshot, zeroshoot]"), ":6:20", "did you mean 'zeroshot'"),
        (("  gene_set: [splicing, ribosome]", "  gene_set: [splicng]"), ":7:", "did you mean 'splicing'"),
        (("params: {null_sets: 500}", "params: {nul_sets: 500}"), ":8:", "did you mean 'null_sets'"),
        (("params: {null_sets: 500}", "params: {null_sets: many}"), ":8:", "bad probe parameter"),
        (("source: {claim: 1, notebook: NB02}", "sourc: {claim: 1}"), ":3:1", "did you mean 'source'"),
        (("id: claim_one", "id: 'claim one'"), ":1:", "should match pattern"),
        (("expect: [\"z > 2\", significant]", "expect: [\"z > 2\", \"z < 1\"]"), ":", "never all hold"),
        (("expect: [\"z > 2\", significant]", "expect: [\"z >> 2\"]"), ":9:", "incomplete"),
        (("expect: [\"z > 2\", significant]", "expect: []"), ":9:", "at least 1"),
        (("  model: [fewshot, zeroshot]", "  modle: [fewshot]"), ":6:3", "unknown axis 'modle'"),
        (("  gene_set: [splicing, ribosome]", "  gene_set: []"), ":", "lists no values"),
        (("expected: {default: pass, zeroshot/ribosome: fail}", "expected: maybe"), ":11:", "expected"),
        (("reported: {splicing/", "reported: {splicng/"), ":10:", "unknown axis value 'splicng'"),
    ],
)
def test_errors_name_file_line_and_valid_choices(
    tmp_path: Path, mutation: tuple[str, str], where: str, fragment: str
) -> None:
    old, new = mutation
    assert old in GOOD
    error = error_of(tmp_path, GOOD.replace(old, new))
    text = str(error)
    assert f"h.yaml{where}" in text, text
    assert fragment in text, text


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"id: [unclosed\n", "YAML syntax error"),
        (b"\xff\xfe bad bytes", "not UTF-8"),
        (b"- a\n- b\n", "holds a mapping"),
        (b"a: &x [1]\nb: *x\n---\nc: 1\n", "exactly one YAML document"),
        (b"id: a\nid: b\n", "duplicate key 'id'"),
        (b"!!python/object/apply:os.system ['true']\n", "not allowed"),
        (b"[" * 200 + b"]" * 200, "nested deeper"),
    ],
)
def test_unreadable_files_give_own_error(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(HypothesisFileError, match=fragment) as info:
        hypotheses_from_doc(load_yaml(path))
    assert "bad.yaml" in str(info.value)


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(HypothesisFileError, match="more than"):
        load_yaml(path)


def test_unknown_probe_lists_close_matches(tmp_path: Path) -> None:
    error = error_of(tmp_path, GOOD.replace("pert_embedding_clustering", "embedding_clustering"))
    assert isinstance(error, UnknownNameError) and "pert_embedding_clustering" in str(error)


def test_json_schema_documents_every_field() -> None:
    schema = json_schema()
    single = schema["anyOf"][0]
    for field in ("id", "claim", "source", "probe", "cases", "params", "expect", "reported", "seed", "marks",
                  "expected", "alpha", "effect", "tags", "tolerance"):
        assert field in single["properties"], field
        assert single["properties"][field].get("description"), field
    committed = Path(__file__).resolve().parents[1] / "hypothesis.schema.json"
    import json

    assert json.loads(committed.read_text()) == schema, "run `make schema` to refresh hypothesis.schema.json"
