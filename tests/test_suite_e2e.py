"""The end-to-end suite benchmark's own arithmetic: claims read from a junit report, the FLOPs floor, the
process tree's memory. (The run itself, `make bench-suite BENCH_SIZE=small`, takes about a minute.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.bench import flops
from tools.bench.suite_e2e import CLAIM_WORK, PAPER, claim_floor, loadavg, per_claim, tree_rss

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="hypotheses.paper.claim2_mito_output_clustering" name="mito[fewshot-hepg2]" time="2.5"/>
<testcase classname="hypotheses.paper.claim2_mito_output_clustering" name="mito[zeroshot-hepg2]" time="1.5">
 <failure message="fail"/></testcase>
<testcase classname="hypotheses.paper.claim5_routing_backbone" name="routing[fewshot]" time="10">
 <skipped message="inconclusive"/></testcase>
</testsuite></testsuites>"""


def test_claims_are_read_from_the_junit_report(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    claims = per_claim(path)
    assert claims["claim2_mito_output_clustering"] == {"cases": 2, "cases_s": 4.0,
                                                       "outcomes": {"passed": 1, "failure": 1}}
    assert claims["claim5_routing_backbone"]["outcomes"] == {"skipped": 1}


def test_every_paper_claim_has_counted_work() -> None:
    assert set(CLAIM_WORK) == {p.stem for p in PAPER.glob("*.yaml")}


def test_floor_counts_forwards_controls_and_gram_columns() -> None:
    sizes = flops.Sizes()
    floor = claim_floor(sizes, knockdowns=2023, rate=1e9, workers=2)
    claim1 = floor["claim1_pert_encoder_clustering"]
    assert claim1["flop"] == 3 * 4 * 2023 * sizes.forward()  # four lines, trained + two control twins
    assert claim1["floor_s_2_cores"] == pytest.approx(claim1["floor_s_one_core"] / 2)
    claim5 = floor["claim5_routing_backbone"]
    grams = 2 * 225 * 32 * sizes.jvp_column() + 2 * sizes.gram_accumulation(225, 32)  # of the 225 selected
    assert claim5["flop"] == 2 * 2023 * sizes.forward() + grams
    assert claim5["floor_s_one_core"] == pytest.approx(claim5["flop"] / 1e9)


def test_tree_rss_and_load_are_read_from_proc() -> None:
    assert tree_rss(os.getpid()) > 10 * 2**20
    assert tree_rss(1) >= tree_rss(os.getpid())
    assert len(loadavg()) == 3 and all(x >= 0 for x in loadavg())
