"""``python -m hypocheck.gate [SUMMARY]``: the same as ``hypocheck gate [SUMMARY]`` (``hypocheck.cli``).

Exits non-zero when a run's summary holds errors or verdicts that differ from the planted truth
(``hypocheck.decisions.GATE``): a claim that fails is a finding, an error or a contradicted planted truth is a
defect.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .decisions import GATE, run_problems
from .records import RunRecord

DEFAULT_SUMMARY = Path("reports/summary.json")


def gate(path: Path) -> int:
    """Print the summary's counts and its defects; 0 without defects, 1 with, 2 when there is no summary."""
    if not path.is_file():
        print(f"{path}: no summary; did the suite run?", file=sys.stderr)
        return 2
    run = RunRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
    problems = run_problems(run, GATE)
    print(f"{path}: " + ", ".join(f"{n} {k}" for k, n in run.counts.items()))
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return gate(Path(args[0]) if args else DEFAULT_SUMMARY)


if __name__ == "__main__":
    raise SystemExit(main())
