"""The whole paper suite measured end to end on CPU, as a user runs it: every claim on every knockdown.

``make bench-suite`` runs ``pytest hypotheses/paper`` on the scale world (``make scale-world``: 2,000 genes,
2,023 knockdowns × 64 cells, two real-size ST models) with its own config (``device: cpu``, Grams ``auto``),
on both cores (pytest-xdist, ``--dist loadgroup``: cases of one model on one worker), with a fresh artifact
cache that both workers share, so claims reuse each other's ΔY, features and Grams as in a real run; control
twins included. Nothing is extrapolated and nothing is subset.

The record (appended to ``runs`` in ``reports/bench/suite_e2e.json``) holds the wall time, each claim's time
(the sum of its cases' wall time on whichever worker ran them: an artifact's cost lands on the first case
that needs it), the cases' outcomes, the peak resident memory of the process tree (sampled each second) and
of its largest process, ``/proc/loadavg`` at start and end, the commit, each claim's floor (the floating-point
operations of its model work as if it ran alone, ``tools.bench.flops``: forward passes of all knockdowns,
layer-feature passes, knockouts, JVP columns of the Grams, on every control sample and twin) and the run's floor
(each artifact the run computed counted once, from its cache index), at the single-core rate measured here
before the run.

Usage::

    make bench-suite                                                    # real size: hours (see the README)
    make bench-suite BENCH_SIZE=small                                   # a small world, in about a minute
    python -m tools.bench.suite_e2e --size small --out /tmp/e2e.json    # what the test runs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import yaml

from hypocheck.atomic import atomic_write_text
from tools.bench import flops
from tools.bench.jacobian_bench import device_name
from tools.demo.scale import SCALE_LINES, SCALE_TEMPLATES, ScaleTrainConfig, build_untrained
from tools.demo.world import WorldSpec

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "hypotheses" / "paper"
OUT = ROOT / "reports" / "bench" / "suite_e2e.json"
SMALL_SPEC = WorldSpec(lines=SCALE_LINES, templates=SCALE_TEMPLATES, n_control=32, n_per_kd=1, n_genes=256,
                       n_knockdowns=254)
SMALL_CFG = ScaleTrainConfig(hidden=16, layers=2, heads=2, head_dim=8, intermediate=32, cell_set_len=8)
SMALL_CELLS = 16
SKETCH_DIRECTIONS = 32  # what `directions: auto` settles on at real size (reports/bench/sketch.json)
# Per claim, as if it ran alone: sentence forwards of all knockdowns (ΔY), layer-feature passes of all knockdowns
# (stopped after block 4), knockout forwards, Grams (and their knockdowns). Every case of claims 1–4 runs on
# three samples of control cells (`stability: {seeds: 3}`: "samples"); the control twins (randomized, shuffled
# perts) of claims 1 and 2 run on the first sample with their own ΔY and features ("twins").
CLAIM_WORK: dict[str, dict[str, Any]] = {
    "claim1_pert_encoder_clustering": {"forwards": 1 * 4, "samples": 3, "twins": 2},  # ‖ΔY‖, fewshot, 4 lines
    "claim2_mito_output_clustering": {"forwards": 2 * 2, "features": 2 * 2, "samples": 3, "twins": 2},
    "claim3_er_no_output_clustering": {"forwards": 2 * 2, "features": 2 * 2, "samples": 3},  # claim 2's, in a run
    "claim4_knockout_transfer": {"knockouts": 200 * 2 * 2, "samples": 3},  # 200 genes × 2 lines × 2 models
    # ΔY of all knockdowns and the Gram of the 225 selected (15 per ΔY cluster × 15), 2 models, HepG2
    "claim5_routing_backbone": {"forwards": 2 * 1, "grams": 2, "gram_knockdowns": 15 * 15},
}
FEATURE_LAYER = 4  # the paper's claims 2 and 3 cluster the residual stream after block 4

FLOOR_RULE = (f"matrix products of the sentence forwards, layer-feature passes, knockout forwards and sketched "
              f"Gram columns ({SKETCH_DIRECTIONS} directions; claim 5: of its 225 selected knockdowns), per claim as "
              "if alone (control samples and twins included), at the single-core rate; the run's floor counts each "
              "artifact the run computed once (its cache index)")


# ------------------------------------------------------------------------------------------ the world
def prepare(size: str, world: Path, work: Path) -> Path:
    """The world to run on, with ``bench-e2e.yaml`` (its suite config on the CPU) beside ``suite.yaml``."""
    if size == "small":
        world = work / "small"
        build_untrained(world, SMALL_SPEC, SMALL_CFG, sentence_cells=SMALL_CELLS)
    elif not (world / "suite.yaml").is_file():
        raise SystemExit(f"{world}: no suite.yaml; generate the scale world first (make scale-world)")
    data = yaml.safe_load((world / "suite.yaml").read_text())
    data["device"] = "cpu"
    (world / "bench-e2e.yaml").write_text("# Written by tools/bench/suite_e2e.py from suite.yaml\n"
                                          + yaml.safe_dump(data, sort_keys=False))
    return world / "bench-e2e.yaml"


def model_sizes(config_path: Path) -> tuple[flops.Sizes, int]:
    """The fewshot model's sizes (with the suite's sentence length) and its number of knockdowns."""
    from hypocheck.fixtures.config import SuiteConfig
    from hypocheck.fixtures.suite import LoadedSuite

    config = SuiteConfig.load(config_path)
    suite = LoadedSuite(config)
    adapter: Any = suite.model("fewshot")
    basal, _ = suite.control_sentence(config.cell_lines[0], "fewshot")
    return flops.Sizes.of_model(adapter.model, int(basal.shape[0])), len(suite.knockdowns("fewshot"))


# ------------------------------------------------------------------------------------- the floor
def single_core_rate(sizes: flops.Sizes, seconds: float = 2.0) -> float:
    """Floating-point operations per second of one thread on the model's largest product as the engine batches
    it (cells × sketch directions rows, hidden × MLP, float32), the rate the floor is stated at."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = sizes.cells * SKETCH_DIRECTIONS
        a, b = torch.randn(rows, sizes.hidden), torch.randn(sizes.hidden, sizes.mlp)
        a @ b  # warm-up
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            n += 1
        return 2 * rows * sizes.hidden * sizes.mlp * n / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def claim_floor(sizes: flops.Sizes, knockdowns: int, rate: float, workers: int) -> dict[str, dict[str, Any]]:
    """Each claim's counted model work and the seconds it takes at ``rate`` (one core, and over ``workers``)."""
    out = {}
    for claim, work in CLAIM_WORK.items():
        runs = work.get("samples", 1) + work.get("twins", 0)
        flop = runs * (work.get("forwards", 0) * knockdowns * sizes.forward()
                       + work.get("features", 0) * knockdowns * sizes.forward_to(FEATURE_LAYER))
        flop += work.get("samples", 1) * work.get("knockouts", 0) * sizes.forward()
        gram_kds = work.get("gram_knockdowns", knockdowns)
        flop += work.get("grams", 0) * sizes.sketched_gram(gram_kds, SKETCH_DIRECTIONS)
        out[claim] = {"flop": flop, "work": work, "floor_s_one_core": flop / rate,
                      f"floor_s_{workers}_cores": flop / rate / workers}
    return out


def artifact_floor(index: Path, sizes: flops.Sizes, knockdowns: int, rate: float) -> dict[str, Any]:
    """The run's floor from what it computed: each artifact of the cache ``index`` (one JSON line per artifact)
    counted once, at ``rate``."""
    counts: Counter[str] = Counter()
    flop = 0
    for line in index.read_text().splitlines():
        row = json.loads(line)
        kind = str(row["artifact"])
        counts[kind] += 1
        if kind == "delta_y":
            flop += knockdowns * sizes.forward()
        elif kind == "output_features":
            flop += knockdowns * sizes.forward_to(int(row.get("layer", sizes.layers)))
        elif kind == "knockout_profiles":
            flop += (len(row.get("genes", [])) + 1) * sizes.forward()
        elif kind == "jacobian_gram":
            rows = len(row["rows"]) if "rows" in row else knockdowns
            flop += sizes.sketched_gram(rows, SKETCH_DIRECTIONS)
    return {"artifacts": dict(sorted(counts.items())), "flop": flop, "floor_s_one_core": flop / rate}


# ------------------------------------------------------------------------------------------- the run
class TreeRss(threading.Thread):
    """Samples the resident memory of a process and its descendants each ``every`` seconds; keeps the peak."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.stop = pid, every, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.peak = max(self.peak, tree_rss(self.pid))


def tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and every process below it (from /proc)."""
    parent, rss = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parent[int(entry.name)] = int(fields.get("PPid", "0").strip() or 0)
        rss[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    tree, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(rss.get(p, 0) for p in tree)


def commit() -> str:
    """The checkout's commit, ``+dirty`` when tracked files differ from it (what the record measured)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if git("status", "--porcelain", "-uno")
                                                                 else "")


def loadavg() -> list[float]:
    """The 1-, 5- and 15-minute load averages."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def run_suite(config: Path, workers: int, work: Path) -> dict[str, Any]:
    """``pytest hypotheses/paper`` on ``config`` with a fresh shared artifact cache; wall, RSS, the junit file."""
    junit = work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", str(PAPER), "--suite-config", str(config), "-q", "-p", "no:randomly",
           "--artifact-cache", str(work / "cache"), "--clear-artifact-cache", "--hypocheck-reports",
           str(work / "reports"), f"--junitxml={junit}", "-o", "junit_family=xunit1"]
    cmd += ["-n", str(workers), "--dist", "loadgroup"] if workers > 1 else ["-n", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HYPOCHECK_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeRss(proc.pid)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - start
    sampler.stop.set()
    import resource

    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"command": " ".join(cmd), "returncode": proc.returncode, "wall_s": wall, "junit": junit,
            "peak_rss_tree_bytes": sampler.peak, "peak_rss_largest_process_bytes": largest,
            "output_tail": output[-3000:]}


def per_claim(junit: Path) -> dict[str, dict[str, Any]]:
    """Each claim file's cases from the junit report: count, summed wall time, outcomes."""
    claims: dict[str, dict[str, Any]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        where = f"{case.get('file', '')} {case.get('classname', '')} {case.get('name', '')}"
        claim = next((p.stem for p in PAPER.glob("*.yaml") if p.stem in where), "other")
        rec = claims.setdefault(claim, {"cases": 0, "cases_s": 0.0, "outcomes": Counter()})
        rec["cases"] += 1
        rec["cases_s"] += float(case.get("time", 0.0))
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        rec["outcomes"][outcome] += 1
    return {k: {**v, "outcomes": dict(v["outcomes"])} for k, v in sorted(claims.items())}


def save(record: dict[str, Any], path: Path) -> None:
    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    body = {"about": "the whole paper suite end to end (tools/bench/suite_e2e.py)", "runs": [*data.get("runs", []),
                                                                                             record]}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(body, indent=1, default=str) + "\n")


def refloor(path: Path, index: Path, note: str) -> dict[str, Any]:
    """Recompute the floors of the last run in ``path`` from its own sizes, knockdowns and rate (this module's
    counting) and its run floor from ``index`` (a copy of that run's cache index); ``note`` says why."""
    data = json.loads(path.read_text())
    record = data["runs"][-1]
    sizes, knockdowns = flops.Sizes(**record["sizes"]), int(record["knockdowns"])
    rate = float(record["single_core_flop_per_s"])
    floor = claim_floor(sizes, knockdowns, rate, int(record["workers"]))
    for name, rec in record["claims"].items():
        for key in [k for k in rec if k.startswith("floor_s_") or k in ("flop", "work")]:
            del rec[key]
        rec.update(floor.get(name, {}))
    record.pop("floor_s_one_core", None)
    record.update(run_floor=artifact_floor(index, sizes, knockdowns, rate), floor_rule=FLOOR_RULE, refloored=note)
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["real", "small"], default=os.environ.get("BENCH_SIZE") or "real",
                        help="real: the scale world (--world); small: a small untrained world built here")
    parser.add_argument("--world", type=Path, default=ROOT / "worlds" / "scale")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (one thread each)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--refloor", type=Path, metavar="INDEX",
                        help="recount the floors of the last run in --out (its cache index copied to INDEX); no run")
    parser.add_argument("--note", default="", help="with --refloor: why the floors were recounted")
    args = parser.parse_args(argv)
    if args.refloor is not None:
        rec = refloor(args.out, args.refloor, args.note)
        print(json.dumps({k: rec[k] for k in ("run_floor", "refloored")}, indent=1))
        return
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    measured_commit = commit()
    load_start = loadavg()
    with tempfile.TemporaryDirectory(prefix="suite-e2e-") as tmp:
        work = Path(tmp)
        config = prepare(args.size, args.world, work)
        sizes, knockdowns = model_sizes(config)
        rate = single_core_rate(sizes)
        floor = claim_floor(sizes, knockdowns, rate, args.workers)
        print(f"{args.size}: {knockdowns} knockdowns, {sizes}; one core {rate / 1e9:.1f} GFLOP/s; running the "
              f"suite on {args.workers} workers ...", flush=True)
        run = run_suite(config, args.workers, work)
        claims = per_claim(run.pop("junit")) if (work / "junit.xml").is_file() else {}
        index = work / "cache" / "index.jsonl"
        computed = artifact_floor(index, sizes, knockdowns, rate) if index.is_file() else {}
    load_end = loadavg()
    for name, rec in claims.items():
        rec.update(floor.get(name, {}))
    record = {"timestamp": started, "commit": measured_commit, "size": args.size,
              "world": str(args.world) if args.size == "real" else "small",
              "device": device_name(torch.device("cpu")), "cores": os.cpu_count(), "workers": args.workers,
              "torch": torch.__version__, "knockdowns": knockdowns, "sizes": sizes.__dict__,
              "single_core_flop_per_s": rate, "load_avg_start": load_start, "load_avg_end": load_end,
              **run, "claims": claims,
              "run_floor": computed, "floor_rule": FLOOR_RULE}
    save(record, args.out)
    print(f"{'claim':<34} {'cases':>5} {'cases s':>9} {'floor 1 core s':>15}  outcomes")
    for name, rec in claims.items():
        print(f"{name:<34} {rec['cases']:>5} {rec['cases_s']:>9.1f} {rec.get('floor_s_one_core', 0):>15.1f}  "
              f"{rec['outcomes']}")
    if computed:
        print(f"run floor (each computed artifact once): {computed['floor_s_one_core']:.0f} s on one core, "
              f"{computed['floor_s_one_core'] / args.workers:.0f} s over {args.workers}; {computed['artifacts']}")
    print(f"wall {run['wall_s']:.1f} s, peak RSS {run['peak_rss_tree_bytes'] / 2**30:.2f} GiB (tree), load "
          f"{load_start[0]:.2f} -> {load_end[0]:.2f}; pytest exit {run['returncode']}; wrote {args.out}")
    if run["returncode"] not in (0, 1):  # 1: some case failed its claim, which is a result, not an error
        raise SystemExit(f"pytest exited {run['returncode']}:\n{run['output_tail']}")


if __name__ == "__main__":
    main()
