"""Train arc-state models with arc-state's own command line (``state tx train``): real run dirs, made the way a
user makes them.

The driver writes arc-state's data config (a TOML file: the h5ad, which lines train, which knockdowns of
which line are held out) into the run dir, then runs ``state tx train`` with Hydra overrides: the data keys,
tiny model sizes (:data:`TINY`), few steps, one seed, CPU. The run dir is arc-state's own output; nothing is
written into it after training.

Usage::

    spec = DataSpec(h5ad=Path("tiny.h5ad"))
    split = Split(fewshot={"jurkat": {"test": ["RPL3", "MRPS5"]}})
    run = train("runs", "st", spec, split, model="state", steps=40)     # runs/st: config.yaml, checkpoints/ …
    python -m tools.arcstate.driver --h5ad tiny.h5ad --out runs --name st --model state --test jurkat:RPL3,MRPS5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

SPLIT_FILE = "data_split.toml"
"""The data config's name inside the run dir (``data.kwargs.toml_config_path`` points at it)."""
DATASET = "data"
"""The dataset's name in the TOML (its fewshot/zeroshot keys are ``data.<line>``)."""

_TINY_MEAN = ("+model.kwargs.gene_decoder_bool=false", "model.kwargs.hidden_dim=16", "model.kwargs.cell_set_len=8")
TINY: dict[str, tuple[str, ...]] = {
    "state": (
        "model=state_sm", "model.kwargs.hidden_dim=16", "model.kwargs.cell_set_len=8",
        "model.kwargs.n_encoder_layers=1", "model.kwargs.n_decoder_layers=1",
        "model.kwargs.transformer_backbone_kwargs.intermediate_size=32",
        "model.kwargs.transformer_backbone_kwargs.num_hidden_layers=2",
        "model.kwargs.transformer_backbone_kwargs.num_attention_heads=2",
        "model.kwargs.transformer_backbone_kwargs.num_key_value_heads=2",
        "model.kwargs.transformer_backbone_kwargs.head_dim=8",
        "+model.kwargs.transformer_backbone_kwargs.vocab_size=8",  # the unused token table: 32000 rows otherwise
    ),
    "perturb_mean": ("model=perturb_mean", *_TINY_MEAN),
    "context_mean": ("model=context_mean", *_TINY_MEAN),
    "embed_sum": ("model=embedsum", "+model.cell_set_len=8", "model.kwargs.n_encoder_layers=1",
                  "model.kwargs.n_decoder_layers=1", *_TINY_MEAN),
}
"""Hydra overrides per model kind for tiny models on CPU: arc-state's own config (``model=…``), small sizes,
no gene decoder (it would hold most of the checkpoint and no probe reads it)."""


@dataclass(frozen=True)
class DataSpec:
    """An h5ad and the names arc-state's data loader reads from it."""

    h5ad: Path
    cell_line_key: str = "cell_line"
    pert_key: str = "gene"
    batch_key: str = "batch"
    control: str = "non-targeting"
    embed_key: str = "X_hvg"
    output_space: str = "gene"
    features_file: Path | None = None
    """Perturbation features (a torch file: name → vector, e.g. ESM2 embeddings) instead of one-hots."""

    def overrides(self, toml_path: str) -> list[str]:
        """The ``data.kwargs.*`` overrides."""
        kw = {"toml_config_path": toml_path, "embed_key": self.embed_key, "output_space": self.output_space,
              "pert_col": self.pert_key, "cell_type_key": self.cell_line_key, "batch_col": self.batch_key,
              "control_pert": self.control, "num_workers": 0, "pin_memory": "false"}
        if self.features_file is not None:
            kw["perturbation_features_file"] = str(self.features_file)
        return [f"data.kwargs.{k}={v}" for k, v in kw.items()]


@dataclass(frozen=True)
class Split:
    """Which cells train: ``fewshot`` holds knockdowns of a line out (line → split → knockdowns, split one of
    val/test); ``zeroshot`` holds a whole line out (line → split). Every other line trains entirely."""

    fewshot: Mapping[str, Mapping[str, Sequence[str]]] = field(default_factory=dict)
    zeroshot: Mapping[str, str] = field(default_factory=dict)


def data_toml(h5ad: str, split: Split) -> str:
    """arc-state's data config (cell_load's ``ExperimentConfig``) for one h5ad."""

    def q(text: str) -> str:
        return json.dumps(text)  # a TOML basic string

    lines = ["[datasets]", f"{DATASET} = {q(h5ad)}", "", "[training]", f'{DATASET} = "train"', "", "[zeroshot]"]
    lines += [f"{q(f'{DATASET}.{line}')} = {q(where)}" for line, where in sorted(split.zeroshot.items())]
    lines += ["", "[fewshot]"]
    for line, parts in sorted(split.fewshot.items()):
        lines += [f"[fewshot.{q(f'{DATASET}.{line}')}]"]
        lines += [f"{part} = [{', '.join(q(k) for k in kds)}]" for part, kds in sorted(parts.items())]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TrainedRun:
    """A run dir ``state tx train`` wrote, and how long it took."""

    run_dir: Path
    seconds: float
    command: tuple[str, ...]


def state_executable() -> str:
    """The ``state`` command of this Python environment."""
    here = Path(sys.executable).parent / "state"
    return str(here) if here.is_file() else "state"


def train(
    out_dir: str | Path,
    name: str,
    spec: DataSpec,
    split: Split,
    model: str = "state",
    steps: int = 40,
    seed: int = 0,
    extra: Sequence[str] = (),
    cwd: str | Path | None = None,
    timeout: float = 900,
) -> TrainedRun:
    """Run ``state tx train`` into ``out_dir/name`` (replaced if present); return the run dir.

    ``model`` picks :data:`TINY`'s overrides; ``extra`` overrides come last (they win). Paths are written as
    given: relative ones are relative to ``cwd`` (the directory training runs in), so a run dir trained with
    relative paths can move with its data. Raises ``RuntimeError`` with the log's tail when training fails.
    """
    if model not in TINY:
        raise ValueError(f"unknown model kind {model!r}; valid: {', '.join(TINY)}")
    base = Path(cwd) if cwd is not None else Path.cwd()
    run_dir = Path(out_dir) / name
    if (base / run_dir).exists():
        shutil.rmtree(base / run_dir)
    (base / run_dir).mkdir(parents=True)
    toml_path = run_dir / SPLIT_FILE
    (base / toml_path).write_text(data_toml(str(spec.h5ad), split))
    command = (
        state_executable(), "tx", "train", *spec.overrides(str(toml_path)), *TINY[model],
        f"training.max_steps={steps}", f"training.val_freq={steps}", f"training.ckpt_every_n_steps={steps}",
        "training.batch_size=8", f"training.train_seed={seed}", "training.lr=0.003",
        f"output_dir={out_dir}", f"name={name}", "use_wandb=false", "overwrite=false", *extra,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=base, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not (base / run_dir / "checkpoints" / "final.ckpt").is_file():
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise RuntimeError(f"state tx train failed (exit {done.returncode}) for {run_dir}:\n{tail}")
    return TrainedRun(base / run_dir, seconds, command)


def cache_key(*parts: object) -> str:
    """A short content hash of ``parts`` with the installed arc-state and cell-load versions and this module's
    and the tiny world's source (a change to any of them trains afresh)."""
    sources = [Path(__file__).read_bytes(), (Path(__file__).parent / "world.py").read_bytes()]
    versions = [metadata.version(p) for p in ("arc-state", "cell-load", "torch")]
    text = json.dumps([repr(p) for p in parts] + versions, sort_keys=True).encode()
    return hashlib.sha256(text + b"".join(sources)).hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--h5ad", required=True, type=Path)
    parser.add_argument("--out", required=True, help="the folder the run dir goes in")
    parser.add_argument("--name", required=True, help="the run dir's name")
    parser.add_argument("--model", default="state", choices=sorted(TINY))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", action="append", default=[], metavar="LINE:KD,KD",
                        help="hold these knockdowns of LINE out of training (fewshot), repeatable")
    parser.add_argument("--zeroshot", action="append", default=[], metavar="LINE", help="hold a whole line out")
    parser.add_argument("--features", type=Path, help="a perturbation-features torch file (dense map)")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. model.kwargs.batch_encoder=true")
    args = parser.parse_args(argv)
    fewshot = {line: {"test": kds.split(",")} for line, _, kds in (t.partition(":") for t in args.test)}
    split = Split(fewshot=fewshot, zeroshot={line: "test" for line in args.zeroshot})
    spec = DataSpec(h5ad=args.h5ad, features_file=args.features)
    run = train(args.out, args.name, spec, split, args.model, args.steps, args.seed, args.overrides)
    print(json.dumps({"run_dir": str(run.run_dir), "seconds": round(run.seconds, 1), **asdict(split)}, indent=1))


if __name__ == "__main__":
    main()
