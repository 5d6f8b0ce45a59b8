"""Start-up benchmark: wall time of ``pytest --help`` and ``pytest --co`` on the shipped suite.

Usage::

    python -m tools.bench.startup_bench                      # this checkout
    python -m tools.bench.startup_bench --repo /tmp/old --label before

Each command runs ``--repeat`` times in a fresh process (median reported); the
table goes to stdout and a JSON record to ``reports/bench/startup.json``
(records keyed by label, so a 'before' and an 'after' sit side by side).
The machine's load average is recorded with each run: a record taken while
other work ran is marked ``under_load``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hypocheck.atomic import atomic_write_text

COMMANDS = {
    "pytest --help": ["--help"],
    "pytest --co -q hypotheses": ["--co", "-q", "hypotheses"],
}


def time_command(repo: Path, args: list[str], repeat: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider"], cwd=repo, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="checkout to time (default: here)")
    parser.add_argument("--label", default="after", help="record name, e.g. before / after")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/startup.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = {name: time_command(args.repo.resolve(), cmd, args.repeat) for name, cmd in COMMANDS.items()}
    load_after = os.getloadavg()[0]
    record = {
        "label": args.label,
        "repo_commit": subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"],
                                      capture_output=True, text=True, check=False).stdout.strip(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "under_load": max(load_before, load_after) > 0.5 * (os.cpu_count() or 1),
        "median_s": {name: round(statistics.median(t), 2) for name, t in rows.items()},
        "all_s": {name: [round(x, 2) for x in t] for name, t in rows.items()},
    }
    existing = json.loads(args.out.read_text()) if args.out.is_file() else {}
    existing[args.label] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(existing, indent=2) + "\n")
    print(f"{'command':<30} {'median s':>9}   ({args.label}, {args.repeat} runs, load {record['load_average_1min']})")
    for name, value in record["median_s"].items():
        print(f"{name:<30} {value:>9.2f}")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
