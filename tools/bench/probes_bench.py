"""Benchmark: wall time of every probe on the demo world (inputs prepared beforehand).

``python -m tools.bench.probes_bench [--null-sets 1000] [--out reports/bench/probes.json]`` prints a table and
writes a JSON record per probe case: the probe functions alone are timed, on all knockdowns, with the
given number of null sets (permutations for the routing probes); building the inputs (model forward
passes, Jacobians) is timed separately and goes through the artifact cache (``--artifact-cache``, the
suite's ``.hypocheck-cache`` by default: after ``make demo`` the inputs are read, not recomputed).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hypocheck.fixtures.routing_inputs
import hypocheck.probes  # noqa: F401  (registers probes)
from hypocheck.atomic import atomic_write_text
from hypocheck.cache import ArtifactCache
from hypocheck.cases import Case
from hypocheck.errors import Location
from hypocheck.fixtures.config import SuiteConfig
from hypocheck.fixtures.context import SuiteContext
from hypocheck.registry import get_probe
from hypocheck.schema import Hypothesis

ROOT = Path(__file__).resolve().parents[2]
CASES: list[tuple[str, dict[str, str], dict[str, Any], dict[str, Any]]] = [
    ("pert_embedding_clustering", {"model": "fewshot", "gene_set": "mitoribosome"}, {}, {}),
    ("pert_neighbour_purity", {"model": "fewshot", "gene_set": "splicing"}, {}, {}),
    ("cross_model_cosine", {"model": "fewshot"}, {}, {"other_model": "zeroshot"}),
    ("output_set_clustering", {"model": "fewshot", "cell_line": "hepg2", "gene_set": "oxphos"}, {}, {}),
    ("output_set_clustering", {"model": "zeroshot", "cell_line": "jurkat", "gene_set": "ribosome"}, {}, {}),
    (
        "output_set_absence",
        {"model": "fewshot", "cell_line": "jurkat", "gene_set": "er_golgi"},
        {"reference_effect": 0.1},
        {},
    ),
    ("knockout_transfer", {"model": "fewshot"}, {}, {"lines": ["hepg2", "jurkat"], "max_genes": 200}),
    ("targeted_jacobian", {"model": "fewshot", "cell_line": "hepg2"}, {},
     {"regulators": ["HSPA5", "ATF4", "XBP1", "SEC24A"], "targets": ["ARFGEF2", "MFGE8", "PDIA3", "CALR", "ERO1A"],
      "concordant_kds": ["TRAPPC3", "TRAPPC5", "SRP54", "HSPA5"], "control_kds": ["MYC", "BRCA1", "CHEK1"]}),
    ("routing_coherence", {"model": "fewshot", "cell_line": "hepg2"}, {"selection": "all"}, {}),
    ("routing_coherence", {"model": "zeroshot", "cell_line": "hepg2"}, {"selection": "top"}, {"jacobian": "onehot"}),
    ("routing_coherence_difference", {"cell_line": "hepg2"}, {"selection": "top"}, {"models": ["fewshot", "zeroshot"]}),
    ("routing_stability", {"model": "fewshot", "cell_line": "hepg2", "sampling": "stratified"}, {}, {"max_kds": 32}),
]


def make_case(probe: str, axes: dict[str, str], params: dict[str, Any], inputs: dict[str, Any]) -> Case:
    spec = get_probe(probe)
    hyp = Hypothesis(
        id="bench",
        claim="benchmark",
        probe=probe,
        cases={k: [v] for k, v in axes.items()},
        params=params,
        inputs=inputs,
        expect=[f"{spec.effect} > -1e9"],
    )
    return Case(hyp, spec, spec.params.model_validate(params), spec.inputs.model_validate(inputs), axes, (), "bench",
                Location("bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--null-sets", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench" / "probes.json"))
    parser.add_argument("--artifact-cache", default=str(ROOT / ".hypocheck-cache"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctx = SuiteContext(SuiteConfig.load(ROOT / "suite.yaml"), ArtifactCache(args.artifact_cache))
    records: list[dict[str, Any]] = []
    for probe, axes, params, inputs in CASES:
        spec = get_probe(probe)
        for name in ("null_sets", "permutations"):
            if name in spec.params.model_fields:
                params = {**params, name: args.null_sets}
        case = make_case(probe, axes, params, inputs)
        start = time.perf_counter()
        prepared = ctx.prepare(case)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        spec.run(prepared, params=case.params, rng=np.random.default_rng(0))
        probe_s = time.perf_counter() - start
        records.append(
            {
                "probe": probe,
                "axes": axes,
                "null_sets": params.get("null_sets", params.get("permutations")),
                "inputs_s": build_s,
                "probe_s": probe_s,
                "device": "cpu",
                "threads": 1,
                "platform": platform.platform(),
            }
        )
        print(f"{probe:<28} {'-'.join(axes.values()):<32} inputs {build_s:7.2f} s   probe {probe_s:6.2f} s")
    total = sum(r["probe_s"] for r in records)
    print(f"{'total (probes alone)':<61} {total:6.2f} s")
    atomic_write_text(Path(args.out), json.dumps({"records": records, "total_probe_s": total}, indent=2) + "\n")


if __name__ == "__main__":
    main()
