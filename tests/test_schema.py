"""Hypothesis files: schema validation, positions in errors, close matches, JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        (("expect: [\"z > 2\", significant]", "expect: []"), ":9:", "needs at least one expectation"),
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


def _follow(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with every ``$ref`` (a JSON pointer into ``schema``) followed."""
    while "$ref" in node:
        target: Any = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[int(part)] if isinstance(target, list) else target[part]
        node = target
    return node


def _probe_rule(schema: dict[str, Any], probe: str, key: str) -> dict[str, Any]:
    """The model schema that the if/then rule for ``probe`` applies to ``key`` (params or inputs)."""
    single = schema["anyOf"][0]
    [rule] = [r for r in single["allOf"] if r["if"]["properties"]["probe"] == {"const": probe}]
    assert rule["if"]["required"] == ["probe"]
    return _follow(schema, rule["then"]["properties"][key])


def test_json_schema_types_probe_params_and_inputs() -> None:
    """Checked on the schema's structure (the jsonschema package is not a dependency; see the next test)."""
    from hypocheck.registry import registered_probes

    schema = json_schema()
    single = schema["anyOf"][0]
    probes = registered_probes()
    assert single["properties"]["probe"]["enum"] == sorted(probes)
    assert len(single["allOf"]) == len(probes)
    params = _probe_rule(schema, "pert_embedding_clustering", "params")
    assert params["additionalProperties"] is False
    assert "null_sets" in params["properties"] and "nul_sets" not in params["properties"]
    assert params["properties"]["null_sets"]["minimum"] == 100
    inputs = _probe_rule(schema, "pert_embedding_clustering", "inputs")
    assert inputs["additionalProperties"] is False and set(inputs["properties"]) == {"null_excludes"}
    assert inputs["properties"]["null_excludes"]["anyOf"][0]["enum"] == ["other_sets", "related", "none"]
    routing = _probe_rule(schema, "routing_coherence", "inputs")
    assert routing["properties"]["sampling"]["enum"] == ["random", "stratified", "top_magnitude"]
    many = schema["anyOf"][1]["properties"]["hypotheses"]["items"]
    assert _follow(schema, many) is single  # the `hypotheses: [...]` form gets the same rules
    assert "SPEC" not in json.dumps(schema)


def test_json_schema_validates_params_per_probe(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    validator = jsonschema.Draft202012Validator(json_schema())
    good = yaml.safe_load(GOOD)
    assert not list(validator.iter_errors(good))
    assert not list(validator.iter_errors({"hypotheses": [good, {**good, "id": "claim_two"}]}))
    for bad in ({**good, "params": {"nul_sets": 500}}, {**good, "params": {"null_sets": 5}},
                {**good, "inputs": {"layer": 2}}, {**good, "probe": "embedding_clustering"}):
        assert list(validator.iter_errors(bad)), bad
        assert list(validator.iter_errors({"hypotheses": [good, bad]})), bad
    routing = {**good, "probe": "routing_coherence", "params": {"n_clusters": 10}, "inputs": {"sampling": "random"}}
    assert not list(validator.iter_errors(routing))
    assert list(validator.iter_errors({**routing, "inputs": {"sampling": "sometimes"}}))
