"""The demo world: a small synthetic Perturb-seq data set with planted truth, and ST models trained on it.

Usage::

    python -m tools.demo.build                      # world + null world + models + SAE + MANIFEST
    python -m tools.demo.world --seed 0 --out tools/demo/world [--null]
    python -m tools.demo.train --world tools/demo/world --out tools/demo [--steps N]
"""

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
