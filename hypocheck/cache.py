"""A content-addressed artifact cache shared by pytest-xdist workers.

Heavy artifacts (pert representations, ΔY, Jacobians, activations) are keyed
by everything that determines them — checkpoint and data fingerprints, the
artifact's name, its parameters, the seed and the code version — hashed to a
file name. The first worker to need an artifact computes it under a file lock;
the others wait and read it. Entries are written to a temporary file and
renamed into place, so a run killed mid-write leaves no corrupt entry, and a
damaged entry (e.g. truncated by a full disk) is detected by its checksum,
discarded and recomputed.

Usage::

    cache = ArtifactCache(".hypocheck-cache")
    reps = cache.get_or_compute({"artifact": "pert_reps", "checkpoint": fp, "code": CODE_VERSION},
                                lambda: adapter.encode_perturbation(onehots))
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from filelock import FileLock

from .atomic import atomic_write_bytes

T = TypeVar("T")
CODE_VERSION = "2"  # bump when an artifact's definition changes: every key includes it
_MAGIC = b"HCK1"


def cache_key(parts: Mapping[str, Any]) -> str:
    """A stable sha256 of the key parts (sorted JSON; numbers and strings only)."""
    text = json.dumps({"code": CODE_VERSION, **parts}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _encode(value: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(to_tensor_tree(value), buf)
    payload = buf.getvalue()
    return _MAGIC + hashlib.sha256(payload).digest() + payload


def _decode(blob: bytes) -> Any:
    if len(blob) < 36 or blob[:4] != _MAGIC:
        raise ValueError("not a cache entry")
    digest, payload = blob[4:36], blob[36:]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("checksum mismatch")
    return to_numpy_tree(torch.load(io.BytesIO(payload), weights_only=True))


class ArtifactCache:
    """Files under ``root``, one per key; safe for concurrent processes.

    Values are trees (tuples, lists, dicts) of numpy arrays, numbers and strings;
    they are stored as tensors so that reading them never unpickles code.
    """

    def __init__(self, root: str | Path, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled
        self.computed: list[str] = []  # keys this process computed (for tests and reports)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def get_or_compute(self, parts: Mapping[str, Any], compute: Callable[[], T]) -> T:
        """The cached value for ``parts``, computing and storing it once across all workers."""
        if not self.enabled:
            return compute()
        key = cache_key(parts)
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if target.exists():
                try:
                    return _decode(target.read_bytes())
                except (ValueError, RuntimeError, EOFError, OSError):
                    target.unlink(missing_ok=True)  # damaged entry: recompute
            value = compute()
            self._write(target, _encode(value))
            self.computed.append(key)
            self._log(key, parts)
            return value

    def _write(self, target: Path, blob: bytes) -> None:
        atomic_write_bytes(target, blob)

    def _log(self, key: str, parts: Mapping[str, Any]) -> None:
        """Append a line saying what each entry holds, for people browsing the cache."""
        line = json.dumps({"key": key, **parts}, sort_keys=True, default=str)
        with FileLock(str(self.root / "index.lock")), open(self.root / "index.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def clear(self) -> None:
        """Drop every entry (``--cache-clear``)."""
        if self.root.exists():
            shutil.rmtree(self.root)


def to_numpy_tree(value: Any) -> Any:
    """Tensors → numpy arrays inside tuples/lists/dicts (cache entries hold tensors)."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, tuple | list):
        return type(value)(to_numpy_tree(v) for v in value)
    if isinstance(value, dict):
        return {k: to_numpy_tree(v) for k, v in value.items()}
    return value


def to_tensor_tree(value: Any) -> Any:
    """numpy arrays → tensors inside tuples/lists/dicts, so entries load with ``weights_only=True``."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, tuple | list):
        return type(value)(to_tensor_tree(v) for v in value)
    if isinstance(value, dict):
        return {k: to_tensor_tree(v) for k, v in value.items()}
    return value
