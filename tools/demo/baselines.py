"""arc-state's baselines for the demo world, trained with arc-state's own ``state tx train``.

``perturb_mean``, ``context_mean`` and ``embed_sum`` train on the demo h5ad with the fewshot model's split (the
same Jurkat knockdowns held out), through :mod:`tools.arcstate.driver`. Training runs in a temporary folder; the
shipped run dir keeps only what loading needs (``config.yaml``, ``var_dims.pkl``, ``pert_onehot_map.pt``, the
data split and ``checkpoints/final.ckpt``), so the three stay small. The mean baselines compute their means
from the training cells; ``embed_sum`` learns (a few hundred steps).

Usage::

    python -m tools.demo.baselines [--out tools/demo/runs] [--steps 300]    # or: make baselines
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from tools.arcstate.driver import DataSpec, Split, train
from tools.demo import DEMO_DIR, manifest
from tools.demo.data import load_world
from tools.demo.train import TrainConfig, heldout_knockdowns

BASELINES = {"perturb_mean": "perturb_mean", "context_mean": "context_mean", "embed_sum": "embed_sum"}
"""Run dir name → the driver's model kind."""
KEPT = ("config.yaml", "var_dims.pkl", "pert_onehot_map.pt", "data_split.toml", "checkpoints/final.ckpt")
"""The files a shipped baseline run dir keeps: what the arc-state adapter reads, and the training split."""
STEPS = 300
WORLD_REL, RUNS_REL = Path("tools/demo/world"), Path("tools/demo/runs")
"""Where the world and the run dirs sit in the repository: the paths the run dirs record."""


def train_baselines(out_dir: str | Path = DEMO_DIR / "runs", world_dir: str | Path = DEMO_DIR / "world",
                    steps: int = STEPS, seed: int = 0) -> dict[str, dict[str, object]]:
    """Train each baseline into ``out_dir/<name>`` (replaced); return name → seconds and bytes kept."""
    world = Path(world_dir).resolve()
    held = heldout_knockdowns(load_world(world), "fewshot", TrainConfig())
    split = Split(fewshot={line: {"test": kds} for line, kds in held.items()})
    # training runs in a scratch copy of the repository's layout, so that every path the run dir records
    # (config.yaml, the data split) is the shipped one, relative to the repository, and a rebuild is byte-identical
    spec = DataSpec(h5ad=WORLD_REL / "demo.h5ad")
    out: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="demo-baselines-") as tmp:
        (Path(tmp) / WORLD_REL).parent.mkdir(parents=True)
        (Path(tmp) / WORLD_REL).symlink_to(world, target_is_directory=True)
        for name, kind in BASELINES.items():
            run = train(RUNS_REL, name, spec, split, model=kind, steps=steps, seed=seed, cwd=tmp)
            target = Path(out_dir) / name
            if target.exists():
                shutil.rmtree(target)
            for rel in KEPT:
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run.run_dir / rel, target / rel)
            size = sum((target / rel).stat().st_size for rel in KEPT)
            out[name] = {"seconds": round(run.seconds, 1), "bytes": size}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(DEMO_DIR / "runs"), help="the folder the run dirs go in")
    parser.add_argument("--world", default=str(DEMO_DIR / "world"))
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    info = train_baselines(args.out, args.world, args.steps)
    if Path(args.out).resolve() == (DEMO_DIR / "runs").resolve():
        manifest.update_manifest(DEMO_DIR, baselines={"steps": args.steps, "seed": 0, "trained": info})
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
