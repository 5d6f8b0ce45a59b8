"""A content-addressed artifact cache shared by pytest-xdist workers and by the nodes of a cluster.

Heavy artifacts (pert representations, ΔY, Jacobians, activations) are keyed
by everything that determines them — checkpoint and data fingerprints, the
artifact's name, its parameters, the seed and the code version — hashed to a
name. The first process to need an artifact computes it while it holds a claim
on that name; the others wait and read it. Entries are written under a
temporary name and moved into place, so a run killed mid-write leaves no
entry under the final name, and a damaged entry (e.g. truncated by a full
disk) is detected by its checksum, discarded and recomputed.

Two storages sit behind the same cache:

- a directory (local, or a shared filesystem every node mounts): a file lock per
  entry, a temporary file renamed into place;
- an fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``file:///shared/…``, ``memory://…``):
  a claim object per entry (owner token, heartbeat, taken over when stale), a
  temporary object moved (copied, then deleted) to the final name. Only
  ``fsspec`` is needed, plus the filesystem's own package (``s3fs`` for S3).

Usage::

    cache = ArtifactCache(".hypocheck-cache")            # or ArtifactCache("s3://bucket/hypocheck-cache")
    reps = cache.get_or_compute({"artifact": "pert_reps", "checkpoint": fp, "code": CODE_VERSION},
                                lambda: adapter.encode_perturbation(onehots))
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from filelock import FileLock

from .atomic import atomic_write_bytes

T = TypeVar("T")
CODE_VERSION = "2"  # bump when an artifact's definition changes: every key includes it
_MAGIC = b"HCK1"
_DAMAGED = (ValueError, RuntimeError, EOFError, OSError)


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


def is_url(root: str | Path) -> bool:
    """Whether a cache location is an fsspec URL (``scheme://…``) rather than a directory."""
    return "://" in str(root)


class ArtifactCache:
    """One entry per key under ``root`` (a directory or an fsspec URL); safe for concurrent processes and nodes.

    Values are trees (tuples, lists, dicts) of numpy arrays, numbers and strings;
    they are stored as tensors so that reading them never unpickles code.
    """

    def __init__(self, root: str | Path, enabled: bool = True, *, stale_after: float = 300.0) -> None:
        self.url = str(root) if is_url(root) else None
        self.root = Path(root) if self.url is None else Path()
        self.enabled = enabled
        self.computed: list[str] = []  # keys this process computed (for tests and reports)
        self._store: _FsspecStore | None = _FsspecStore(self.url, stale_after) if self.url and enabled else None

    @property
    def location(self) -> str:
        """The directory or URL, as the user gave it."""
        return self.url or str(self.root)

    def path(self, key: str) -> Path:
        """The entry file of ``key`` in a directory cache."""
        return self.root / key[:2] / f"{key}.pt"

    def get_or_compute(self, parts: Mapping[str, Any], compute: Callable[[], T]) -> T:
        """The cached value for ``parts``, computing and storing it once across all workers and nodes."""
        if not self.enabled:
            return compute()
        key = cache_key(parts)
        if self._store is not None:
            return self._get_or_compute_url(key, parts, compute)
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if target.exists():
                try:
                    return _decode(target.read_bytes())
                except _DAMAGED:
                    target.unlink(missing_ok=True)  # damaged entry: recompute
            value = compute()
            self._write(target, _encode(value))
            self.computed.append(key)
            self._log(key, parts)
            return value

    def _get_or_compute_url(self, key: str, parts: Mapping[str, Any], compute: Callable[[], T]) -> T:
        store = self._store
        assert store is not None
        name = f"{key[:2]}/{key}.pt"
        with store.claim(name):
            blob = store.read(name)
            if blob is not None:
                try:
                    return _decode(blob)
                except _DAMAGED:
                    store.delete(name)  # damaged entry: recompute
            value = compute()
            store.publish(name, _encode(value))
            self.computed.append(key)
            store.publish(f"index/{key}.json", json.dumps({"key": key, **parts}, sort_keys=True,
                                                          default=str).encode())
            return value

    def _write(self, target: Path, blob: bytes) -> None:
        atomic_write_bytes(target, blob)

    def _log(self, key: str, parts: Mapping[str, Any]) -> None:
        """Append a line saying what each entry holds, for people browsing the cache."""
        line = json.dumps({"key": key, **parts}, sort_keys=True, default=str)
        with FileLock(str(self.root / "index.lock")), open(self.root / "index.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def check(self) -> list[str]:
        """Problems of the stored entries: a temporary file left behind, or an entry whose checksum fails."""
        if self.url is not None:
            return _FsspecStore(self.url, 0).check()
        problems = [f"temporary file left: {p}" for p in self.root.glob("*/.*.tmp")]
        for entry in sorted(self.root.glob("*/*.pt")):
            try:
                _decode(entry.read_bytes())
            except _DAMAGED as exc:
                problems.append(f"damaged entry {entry}: {exc}")
        return problems

    def clear(self) -> None:
        """Drop every entry (``--clear-artifact-cache``)."""
        if self.url is not None:
            _FsspecStore(self.url, 0).clear()
        elif self.root.exists():
            shutil.rmtree(self.root)


_LOCAL_LOCKS: dict[str, threading.Lock] = {}  # one per claimed name: threads of one process queue here
_LOCAL_GUARD = threading.Lock()


class _FsspecStore:
    """Entries as objects under an fsspec URL: atomic publish, compute-once claims with a stale timeout.

    A claim is an object ``NAME.lock`` holding the owner's token and a heartbeat time, created with an
    exclusive create where the filesystem has one (local files, memory, S3 conditional writes), else
    written and read back. Its owner refreshes the heartbeat while it computes; a claim whose heartbeat is
    older than ``stale_after`` seconds belongs to a process that died and is taken over. Threads of one
    process also serialise on an in-process lock per name.
    """

    def __init__(self, url: str, stale_after: float, poll: float = 0.2) -> None:
        import fsspec

        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.url = url
        self.stale_after = stale_after
        self.poll = poll

    def _full(self, name: str) -> str:
        return f"{self.root}/{name}"

    def read(self, name: str) -> bytes | None:
        """The object's bytes, or ``None`` when there is none."""
        try:
            data: bytes = self.fs.cat_file(self._full(name))
            return data
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._full(name))

    def publish(self, name: str, blob: bytes) -> None:
        """Write under a temporary name in the same folder, then move into place: never a partial final object."""
        final = self._full(name)
        folder, _, base = final.rpartition("/")
        tmp = f"{folder}/.{base}.{uuid.uuid4().hex}.tmp"
        self.fs.makedirs(folder, exist_ok=True)
        try:
            self.fs.pipe_file(tmp, blob)
            self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm_file(tmp)
            raise

    # ----------------------------------------------------------------- claims
    def _lock_record(self, token: str) -> bytes:
        return json.dumps({"owner": token, "host": socket.gethostname(), "pid": os.getpid(),
                           "heartbeat": time.time()}).encode()

    def _try_claim(self, lock: str, token: str) -> bool:
        folder = lock.rpartition("/")[0]
        self.fs.makedirs(folder, exist_ok=True)
        try:
            with self.fs.open(lock, "xb") as handle:
                handle.write(self._lock_record(token))
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):  # no exclusive create here: write, settle, read back
            if self.fs.exists(lock):
                return False
            self.fs.pipe_file(lock, self._lock_record(token))
            time.sleep(self.poll)
            return self._owner(lock) == token

    def _owner(self, lock: str) -> str | None:
        record = self._record(lock)
        return None if record is None else str(record.get("owner"))

    def _record(self, lock: str) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = json.loads(self.fs.cat_file(lock))
            return record
        except FileNotFoundError:
            return None
        except ValueError:  # being written: treat as fresh
            return {"owner": None, "heartbeat": time.time()}

    @contextlib.contextmanager
    def claim(self, name: str) -> Iterator[None]:
        """Hold the compute-once claim on ``name`` (waiting for another holder, taking over a stale one)."""
        with _LOCAL_GUARD:
            local = _LOCAL_LOCKS.setdefault(f"{self.url}/{name}", threading.Lock())
        with local:
            lock, token = self._full(name) + ".lock", uuid.uuid4().hex
            while not self._try_claim(lock, token):
                record = self._record(lock)
                if record is not None and time.time() - float(record.get("heartbeat", 0)) > self.stale_after:
                    if self._record(lock) == record:  # still the same stale holder: take it over
                        self.delete(name + ".lock")
                    continue
                time.sleep(self.poll)
            stop = threading.Event()
            beat = threading.Thread(target=self._heartbeat, args=(lock, token, stop), daemon=True)
            beat.start()
            try:
                yield
            finally:
                stop.set()
                beat.join()
                if self._owner(lock) == token:
                    self.delete(name + ".lock")

    def _heartbeat(self, lock: str, token: str, stop: threading.Event) -> None:
        while not stop.wait(max(self.stale_after / 4, 0.05)):
            if self._owner(lock) == token:
                with contextlib.suppress(Exception):
                    self.fs.pipe_file(lock, self._lock_record(token))

    # ----------------------------------------------------------------- upkeep
    def check(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        problems = []
        for path in sorted(self.fs.find(self.root)):
            base = path.rpartition("/")[2]
            if base.endswith(".tmp"):
                problems.append(f"temporary object left: {path}")
            elif base.endswith(".pt"):
                try:
                    _decode(self.fs.cat_file(path))
                except _DAMAGED as exc:
                    problems.append(f"damaged entry {path}: {exc}")
        return problems

    def clear(self) -> None:
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)


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
