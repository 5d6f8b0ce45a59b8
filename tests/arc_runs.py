"""Run dirs trained with arc-state's own ``state tx train`` on the tiny world, shared by tests and sessions.

Each run trains once per content: the driver's and the world's source, the installed arc-state, cell-load
and torch, and the run's settings make its key; it is kept under ``$HYPOCHECK_ARC_RUNS`` (default: the temp
dir's ``hypocheck-arc-runs``), so a later session reuses it. Missing runs train two at a time, under a file
lock each (xdist workers share them).

Usage::

    runs = arc_runs(["fewshot", "perturb_mean"])      # {name: run dir}
    seconds = training_seconds()                      # {name: wall seconds of the training that made it}
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from tools.arcstate.driver import DataSpec, Split, cache_key, train
from tools.arcstate.world import dense_features, write_tiny_world

HELD_OUT = ("RPL3", "MRPS5", "NDUFA1", "PSMA1", "PRPF3", "OR5A1")
"""Knockdowns of jurkat that the fewshot runs never see in training."""
STEPS = 40


@dataclass(frozen=True)
class RunSpec:
    """One training: the model kind, the split, the output space, dense perturbation features, more overrides."""

    model: str = "state"
    zeroshot: bool = False
    output_space: str = "gene"
    dense: bool = False
    extra: tuple[str, ...] = field(default=())


RUNS: dict[str, RunSpec] = {
    "fewshot": RunSpec(),
    "zeroshot": RunSpec(zeroshot=True, extra=("model.kwargs.batch_encoder=true", "+model.kwargs.confidence_token=true",
                                              "model.kwargs.transformer_backbone_kwargs.bidirectional_attention=false")),
    "batch_token": RunSpec(dense=True, extra=("+model.kwargs.use_batch_token=true",
                                              "data.kwargs.basal_mapping_strategy=batch")),
    "all_genes": RunSpec(output_space="all"),
    "perturb_mean": RunSpec(model="perturb_mean"),
    "context_mean": RunSpec(model="context_mean"),
    "embed_sum": RunSpec(model="embed_sum"),
}
"""The runs tests use: two ST models (the fewshot one with arc-state's defaults; the zeroshot one with a batch
encoder, a confidence token and causal attention), one with a batch token trained on dense perturbation features,
one with ``output_space=all``, and the three baselines."""


def cache_root() -> Path:
    return Path(os.environ.get("HYPOCHECK_ARC_RUNS", Path(tempfile.gettempdir()) / "hypocheck-arc-runs"))


def _folder(name: str) -> Path:
    return cache_root() / f"{name}-{cache_key(name, RUNS[name], STEPS, HELD_OUT)}"


def _build(name: str) -> Path:
    folder = _folder(name)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "done.json").is_file():
            return folder / name
        spec = RUNS[name]
        world = write_tiny_world(folder / "tiny.h5ad", seed=0)
        features = None
        if spec.dense:
            import torch

            features = folder / "features.pt"
            torch.save(dense_features(), features)
        split = Split(zeroshot={"jurkat": "test"}) if spec.zeroshot else Split(fewshot={"jurkat": {"test": HELD_OUT}})
        data = DataSpec(h5ad=world, output_space=spec.output_space, features_file=features)
        run = train(folder, name, data, split, model=spec.model, steps=STEPS, seed=0, extra=spec.extra)
        (folder / "done.json").write_text(json.dumps({"seconds": round(run.seconds, 1), "command": run.command}))
        return run.run_dir


def world_of(run_dir: Path) -> Path:
    """The h5ad a cached run was trained on (written beside its run dir)."""
    return run_dir.parent / "tiny.h5ad"


def arc_runs(names: Iterable[str]) -> dict[str, Path]:
    """The run dirs of ``names`` (keys of :data:`RUNS`), trained where missing (two at a time)."""
    wanted = list(dict.fromkeys(names))
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(wanted, pool.map(_build, wanted), strict=True))


def training_seconds() -> dict[str, float]:
    """Wall seconds of the training that made each cached run (of those present)."""
    out = {}
    for name in RUNS:
        done = _folder(name) / "done.json"
        if done.is_file():
            out[name] = float(json.loads(done.read_text())["seconds"])
    return out
