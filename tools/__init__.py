"""This repository's tools: the demo-world generator (``tools.demo``), the calibration runs
(``tools.calibration``) and the benchmarks (``tools.bench``). Run from the repository root
(``python -m tools.demo.build``); never shipped in the wheel, never imported by the runtime."""
