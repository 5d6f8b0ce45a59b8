"""Which installed distributions a process truly needs: every module that imports each top-level module is
recorded, and a distribution counts as needed when something other than the device image's own packages imports it.

A package the image has (transformers, pandas) may import optional packages when they are installed here
(``kernels``, ``pytz``); on the device its own version runs with what the image gives it, so those are not the
bundle's business. What this project, arc-state or a bundled package imports is.

Usage::

    python -m tools.bench.imports tools.bench.gpu_run --dry-run     # runs the module with a recorder installed
    needed, importers = imports.current().needed(device_has)         # in that module, at its end
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata as md
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

STDLIB = "(standard library)"


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


class Recorder(importlib.abc.MetaPathFinder):
    """A finder that finds nothing, and a wrapper of ``__import__``: together they note, for each top-level
    module, every module that imports it (first loads through either door, later ``import`` statements)."""

    def __init__(self) -> None:
        self.importers: dict[str, set[str]] = {}

    def note(self, name: str, importer: str) -> None:
        top = name.split(".")[0]
        if importer.split(".")[0] != top:
            self.importers.setdefault(top, set()).add(importer)

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        frame = sys._getframe(1)
        while frame is not None and (frame.f_code.co_filename.startswith("<frozen") or frame.f_globals is globals()
                                     or frame.f_globals.get("__name__", "").startswith("importlib")):
            frame = frame.f_back  # type: ignore[assignment]
        self.note(fullname, frame.f_globals.get("__name__", "") if frame is not None else "")
        return None

    def wrap(self, original: Callable[..., ModuleType]) -> Callable[..., ModuleType]:
        def hooked(name: str, globals: Mapping[str, Any] | None = None, locals: Any = None,
                   fromlist: Sequence[str] = (), level: int = 0) -> ModuleType:
            if level == 0 and globals:
                self.note(name, str(globals.get("__name__", "")))
            return original(name, globals, locals, fromlist, level)

        return hooked

    def needed(self, device_has: Iterable[str], ours: Iterable[str] = ("tools", "__main__")) -> tuple[
            list[str], dict[str, list[str]]]:
        """(the distributions this project imports, and those they import in turn, never following the
        imports of a package the device has; each imported distribution's importers). A module of no
        distribution (``ours``) is the project's own; one the standard library loads for a caller (entry
        points, unpickling) does not count on its own."""
        has = set(device_has)
        owners = md.packages_distributions()
        ours = set(ours)

        def dists(top: str) -> set[str]:
            if top in ours:
                return {"(this project)"}
            if top in sys.stdlib_module_names or not top:
                return {STDLIB}  # the standard library loads what a caller named (entry points, pickles)
            return {normalise(d) for d in _owners(top, owners.get(top, []))} or {"(this project)"}

        importers: dict[str, set[str]] = {}
        for top, by_modules in self.importers.items():
            by = set().union(*(dists(m.split(".")[0]) for m in by_modules))
            for dist in dists(top) - {STDLIB, "(this project)"}:
                importers.setdefault(dist, set()).update(by - {dist})
        # from this project's imports, through what they import, never through a package the device has
        needed: set[str] = set()
        frontier = {"(this project)"}
        while frontier:
            found = {d for d, by in importers.items() if by & frontier} - needed
            needed |= found
            frontier = found - has
        return sorted(needed), {d: sorted(by) for d, by in sorted(importers.items())}


def _owners(top: str, candidates: list[str]) -> list[str]:
    """Of the distributions that ship a top-level name, those holding the file the loaded module came from
    (a name such as ``testing`` or ``google`` is shipped by several: the modules loaded under it decide)."""
    module = sys.modules.get(top)
    if len(candidates) <= 1 or module is None:
        return candidates if module is not None or len(candidates) <= 1 else []
    loaded = [m for n, m in list(sys.modules.items()) if n == top or n.startswith(top + ".")]
    files = {str(f) for m in loaded if (f := getattr(m, "__file__", None))}  # a namespace package has none
    held = []
    for name in candidates:
        dist = md.distribution(name)
        if files & {str(dist.locate_file(f)) for f in dist.files or []}:
            held.append(name)
    return held


def install() -> Recorder:
    """Put a recorder first on ``sys.meta_path`` (modules imported before this call are not recorded)."""
    import builtins

    recorder = Recorder()
    sys.meta_path.insert(0, recorder)
    builtins.__import__ = recorder.wrap(builtins.__import__)
    return recorder


def main(argv: list[str] | None = None) -> None:
    """``python -m tools.bench.imports MODULE ARGS...``: run ``MODULE`` as ``__main__`` with a recorder installed
    (it finds the recorder with :func:`current`)."""
    import runpy

    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m tools.bench.imports MODULE [ARGS...]")
    from tools.bench import imports  # this file runs as __main__: install the importable module's Recorder

    imports.install()
    sys.argv = [args[0], *args[1:]]
    runpy.run_module(args[0], run_name="__main__", alter_sys=True)


def current() -> Recorder | None:
    """The recorder installed in this process, if any."""
    return next((f for f in sys.meta_path if isinstance(f, Recorder)), None)


if __name__ == "__main__":
    main()
