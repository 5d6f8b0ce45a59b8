"""Read YAML safely and remember where every key and value came from (file:line:column)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import HypothesisFileError, Location

MAX_BYTES = 1_000_000
MAX_DEPTH = 32
MAX_NODES = 100_000

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class SourceDoc:
    """A parsed YAML document with the position of every node, by key path."""

    path: Path
    data: Any
    positions: dict[KeyPath, tuple[int, int]]
    key_positions: dict[KeyPath, tuple[int, int]]

    def locate(self, key_path: KeyPath, at_key: bool = False) -> Location:
        """The closest known position for ``key_path``: its value, or its key with ``at_key``."""
        probe = tuple(key_path)
        while probe and probe not in self.positions:
            probe = probe[:-1]
        table = self.key_positions if at_key and probe in self.key_positions else self.positions
        line, column = table.get(probe, (1, 1))
        return Location(str(self.path), line, column, format_key_path(key_path) or None)


def format_key_path(key_path: KeyPath) -> str:
    """``('cases', 'model', 0)`` → ``cases.model[0]``."""
    text = ""
    for part in key_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_ALLOWED_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "str", "seq", "map")}


def _construct(
    node: yaml.Node,
    path: KeyPath,
    positions: dict[KeyPath, tuple[int, int]],
    key_positions: dict[KeyPath, tuple[int, int]],
    doc: Path,
) -> Any:
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if node.tag not in _ALLOWED_TAGS:
        raise HypothesisFileError(
            f"YAML tag {node.tag!r} is not allowed: hypothesis files hold plain data only",
            Location(str(doc), *positions[path], format_key_path(path) or None),
        )
    if len(positions) > MAX_NODES:
        raise HypothesisFileError(
            f"YAML expands to more than {MAX_NODES:,} nodes (anchor/alias bomb?)", Location(str(doc), *positions[path])
        )
    if len(path) > MAX_DEPTH:
        raise HypothesisFileError(
            f"YAML nested deeper than {MAX_DEPTH} levels",
            Location(str(doc), *positions[path], format_key_path(path)),
        )
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise HypothesisFileError(
                    "mapping keys must be plain scalars",
                    Location(str(doc), key_node.start_mark.line + 1, key_node.start_mark.column + 1),
                )
            key = str(yaml.safe_load(key_node.value) if key_node.tag != "tag:yaml.org,2002:str" else key_node.value)
            if key in out:
                raise HypothesisFileError(
                    f"duplicate key {key!r}",
                    Location(str(doc), key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                             format_key_path((*path, key))),
                )
            key_positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _construct(value_node, (*path, key), positions, key_positions, doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), positions, key_positions, doc) for i, item in enumerate(node.value)]
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise HypothesisFileError(f"bad YAML value: {exc}", Location(str(doc), *positions[path])) from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> SourceDoc:
    """Parse one YAML file with the safe loader, keeping positions; errors name file:line:column."""
    doc_path = Path(path)
    try:
        raw = doc_path.read_bytes()
    except OSError as exc:
        raise HypothesisFileError(f"cannot read file: {exc.strerror}", Location(str(doc_path))) from None
    if len(raw) > MAX_BYTES:
        raise HypothesisFileError(
            f"file is {len(raw):,} bytes; hypothesis files are limited to {MAX_BYTES:,}", Location(str(doc_path))
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise HypothesisFileError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            Location(str(doc_path), line),
            "save the file as UTF-8",
        ) from None
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(str(doc_path), mark.line + 1, mark.column + 1) if mark else Location(str(doc_path))
        raise HypothesisFileError(f"YAML syntax error: {exc.problem or exc.context}", where) from None
    except yaml.YAMLError as exc:
        raise HypothesisFileError(f"YAML error: {exc}", Location(str(doc_path))) from None
    except RecursionError:
        raise HypothesisFileError(f"YAML nested deeper than {MAX_DEPTH} levels", Location(str(doc_path))) from None
    if not nodes:
        raise HypothesisFileError("the file is empty (no YAML document)", Location(str(doc_path), 1, 1))
    if len(nodes) != 1:
        raise HypothesisFileError(
            f"expected exactly one YAML document, found {len(nodes)}", Location(str(doc_path), 1, 1)
        )
    positions: dict[KeyPath, tuple[int, int]] = {}
    key_positions: dict[KeyPath, tuple[int, int]] = {}
    data = _construct(nodes[0], (), positions, key_positions, doc_path)
    return SourceDoc(doc_path, data, positions, key_positions)
