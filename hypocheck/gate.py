"""Exit non-zero when a run's summary holds errors or verdicts that differ from the expected ones.

``python -m hypocheck.gate reports/summary.json`` — used by ``make demo``: a
claim that fails is a finding, but an error or a demo verdict that contradicts
the planted truth is a defect.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "reports/summary.json")
    if not path.is_file():
        print(f"{path}: no summary; did the suite run?", file=sys.stderr)
        return 2
    summary = json.loads(path.read_text(encoding="utf-8"))
    errors = [c["id"] for c in summary["cases"] if c["verdict"] == "error"]
    problems = [f"error: {i}" for i in errors]
    problems += [f"verdict differs from the planted truth: {i}" for i in summary["mismatches"]]
    counts = ", ".join(f"{n} {k}" for k, n in summary["counts"].items())
    print(f"{path}: {counts}")
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
