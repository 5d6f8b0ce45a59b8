"""The end-to-end suite benchmark's own arithmetic: claims read from a junit report, the FLOPs floor, the
process tree's memory. (The run itself, `make bench-suite BENCH_SIZE=small`, takes about a minute.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tools.bench import flops
from tools.bench.suite_e2e import (
    CLAIM_WORK,
    PAPER,
    artifact_floor,
    claim_floor,
    loadavg,
    per_claim,
    refloor,
    tree_rss,
)

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
    assert claim1["flop"] == (3 + 2) * 4 * 2023 * sizes.forward()  # four lines, three samples + two twins
    claim2 = floor["claim2_mito_output_clustering"]
    assert claim2["flop"] == 5 * 4 * 2023 * (sizes.forward() + sizes.forward_to(4))  # ΔY and block-4 features
    assert claim1["floor_s_2_cores"] == pytest.approx(claim1["floor_s_one_core"] / 2)
    claim5 = floor["claim5_routing_backbone"]
    grams = 2 * 225 * 32 * sizes.jvp_column() + 2 * sizes.gram_accumulation(225, 32)  # of the 225 selected
    assert claim5["flop"] == 2 * 2023 * sizes.forward() + grams
    assert claim5["floor_s_one_core"] == pytest.approx(claim5["flop"] / 1e9)


def test_tree_rss_and_load_are_read_from_proc() -> None:
    assert tree_rss(os.getpid()) > 10 * 2**20
    assert tree_rss(1) >= tree_rss(os.getpid())
    assert len(loadavg()) == 3 and all(x >= 0 for x in loadavg())


def test_the_run_floor_counts_each_computed_artifact_once(tmp_path: Path) -> None:
    sizes = flops.Sizes()
    index = tmp_path / "index.jsonl"
    rows = [{"artifact": "delta_y", "model": "m"}, {"artifact": "output_features", "layer": 4},
            {"artifact": "knockout_profiles", "genes": ["A", "B"]}, {"artifact": "jacobian_gram", "rows": [1, 2, 3]},
            {"artifact": "pert_embeddings"}]
    index.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = artifact_floor(index, sizes, knockdowns=10, rate=1e9)
    want = (10 * sizes.forward() + 10 * sizes.forward_to(4) + 3 * sizes.forward()
            + 3 * 32 * sizes.jvp_column() + sizes.gram_accumulation(3, 32))
    assert got["flop"] == want and got["floor_s_one_core"] == pytest.approx(want / 1e9)
    assert got["artifacts"] == {"delta_y": 1, "jacobian_gram": 1, "knockout_profiles": 1, "output_features": 1,
                                "pert_embeddings": 1}
    assert sizes.forward_to(sizes.layers) < sizes.forward()  # the output projection is left out


def test_refloor_recounts_a_stored_run_from_its_own_sizes(tmp_path: Path) -> None:
    sizes = flops.Sizes()
    record = {"sizes": sizes.__dict__, "knockdowns": 2023, "single_core_flop_per_s": 1e9, "workers": 2,
              "wall_s": 100.0, "claims": {"claim1_pert_encoder_clustering": {"cases": 3, "flop": 1, "work": {},
                                                                          "floor_s_one_core": 1.0}},
              "floor_s_one_core": 5.0}
    path, index = tmp_path / "e2e.json", tmp_path / "index.jsonl"
    path.write_text(json.dumps({"runs": [record]}))
    index.write_text(json.dumps({"artifact": "delta_y"}) + "\n")
    refloor(path, index, "counted anew")
    got = json.loads(path.read_text())["runs"][-1]
    want = claim_floor(sizes, 2023, 1e9, 2)["claim1_pert_encoder_clustering"]
    assert got["claims"]["claim1_pert_encoder_clustering"] == {"cases": 3, **json.loads(json.dumps(want))}
    assert got["run_floor"]["flop"] == 2023 * sizes.forward() and got["refloored"] == "counted anew"
    assert "floor_s_one_core" not in got and got["wall_s"] == 100.0
