"""Which device a process should use: one GPU per xdist worker when several are visible, else CPU.

``PYTEST_XDIST_WORKER`` (``gw0``, ``gw1`` …) picks a GPU round-robin among the
ones the caller made visible with ``CUDA_VISIBLE_DEVICES`` (torch already
renumbers them from 0), so ``pytest -n 4`` on a 4-GPU machine loads each
model on a different card, and a machine without CUDA falls back to CPU.
"""

from __future__ import annotations

import os
import re

import torch


def worker_index(environ: dict[str, str] | None = None) -> int | None:
    """The xdist worker number (``gw3`` → 3), or None outside xdist."""
    env = os.environ if environ is None else environ
    match = re.fullmatch(r"gw(\d+)", env.get("PYTEST_XDIST_WORKER", ""))
    return int(match.group(1)) if match else None


def pick_device(requested: str = "auto", environ: dict[str, str] | None = None, n_gpus: int | None = None) -> str:
    """Resolve ``auto`` / ``cuda`` / ``cuda:N`` / ``cpu`` to a concrete device string for this process."""
    count = torch.cuda.device_count() if n_gpus is None else n_gpus
    if requested == "cpu" or (requested in {"auto", "cuda"} and count == 0):
        return "cpu"
    if requested.startswith("cuda:"):
        index = int(requested.split(":", 1)[1])
        if index >= count:
            raise ValueError(f"device {requested!r} requested but {count} CUDA device(s) are visible")
        return requested
    if requested not in {"auto", "cuda"}:
        raise ValueError(f"unknown device {requested!r}; valid: auto, cpu, cuda, cuda:N")
    worker = worker_index(environ)
    return f"cuda:{(worker or 0) % count}"
