"""Property-based fuzzing: the loader and the expectation parser accept input or raise the project's own
error — never anything else (no KeyError, TypeError, RecursionError … from YAML)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

import hypocheck.probes  # noqa: F401  (registers probes)
from hypocheck.cases import expand
from hypocheck.errors import ExpectationSyntaxError, HypocheckError
from hypocheck.expect import parse_expectation
from hypocheck.schema import hypotheses_from_doc
from hypocheck.yamlsource import load_yaml

VOCAB = {"model": ["fewshot", "zeroshot"], "gene_set": ["ribosome", "splicing"], "cell_line": ["hepg2"]}
KEYS = ["id", "claim", "probe", "cases", "params", "expect", "reported", "expected", "seed", "marks", "alpha",
        "source", "effect", "tags", "tolerance", "inputs", "hypotheses", "bogus"]
TOKENS = ["z", "p", "within_mean_cosine", ">", "<", ">=", "==", "~=", "+-", "±", "%", "in", "[", "]", ",",
          "significant", "at", "0.05", "2", "-1", "1e9", "nan", "(", ")", "__import__", "'", "and"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["fewshot", "splicing", "pert_embedding_clustering",
                                                           "z > 2", "pass", "significant"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from([*KEYS, "model", "gene_set"]),
                                                                       inner, max_size=4)), max_leaves=12)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)
expectations = st.lists(st.sampled_from(TOKENS), min_size=0, max_size=7).map(" ".join) | st.text(max_size=30)


def load_all(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8")
        doc = load_yaml(path)
        for hyp, base in hypotheses_from_doc(doc):
            expand(hyp, doc, base, VOCAB)


@given(documents)
def test_any_document_is_accepted_or_refused_with_own_error(document: dict) -> None:
    try:
        load_all(yaml.safe_dump(document, allow_unicode=True))
    except HypocheckError:
        pass


@given(st.text(max_size=200))
def test_any_text_is_accepted_or_refused_with_own_error(text: str) -> None:
    try:
        load_all(text)
    except HypocheckError:
        pass


@given(expectations)
def test_any_expectation_parses_or_raises_syntax_error(text: str) -> None:
    try:
        parsed = parse_expectation(text)
    except ExpectationSyntaxError:
        return
    outcome = parsed.evaluate({m: 1.0 for m in parsed.metrics_used()} | {"p": 0.01}, "p", 0.05)
    assert outcome.holds in (True, False, None)
