"""Progress people can see while a case runs: its name, its stage, counts and an ETA.

Code that does long work says so with :func:`stage`::

    with stage("null draws", total=n) as draws:
        for chunk in chunks:
            ...
            draws.update(len(chunk))

Stages nest ("case › jacobian_gram m/line › Gram directions 96/328 ETA 40s"). Outside a pytest run nothing
listens and a stage costs a generator call (or, when asked with ``tqdm=True``, it is a tqdm bar).

In a pytest run, each process that runs cases holds a :class:`Publisher`: it keeps the current case and its
stack of stages in a small JSON file (one per xdist worker, written atomically, at most once a second) under a
per-run folder. The controlling process is the one writer to the terminal: a :class:`ProgressReporter`
thread reads those files and renders them — a status line rewritten in place on a terminal (``live``), or
plain lines at stage changes and at most every ``heartbeat`` seconds per worker otherwise (``lines``) — and
prints one line per finished case. All terminal output of the controller, pytest's included, passes through
one lock (:class:`Screen`), so lines never interleave.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

MODES = ("auto", "lines", "off")
"""``--hypocheck-progress`` values: auto (live on a terminal, lines otherwise), lines, off."""
PUBLISH_INTERVAL = 1.0
"""Seconds between two writes of a worker's state file (a case's start and end are written at once)."""
POLL_INTERVAL = 0.5
"""Seconds between two reads of the state files by the controller."""
HEARTBEAT = 30.0
"""In ``lines`` mode, a worker whose stage does not change gets a line at most this often."""
SEPARATOR = " › "


class Progress(Protocol):
    """What :func:`stage` yields: something to count done units on."""

    def update(self, n: int = 1) -> None: ...


class _Nothing:
    """The stage of a process nobody watches: counting costs nothing."""

    def update(self, n: int = 1) -> None:
        pass


_NOTHING = _Nothing()


@dataclass
class Stage:
    """One running stage: what it is, how many units it has done of how many, since when (monotonic)."""

    label: str
    total: int | None = None
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.done += n
        if _publisher is not None:
            _publisher.touch()

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate so far, ``None`` without a total or before the first unit."""
        if not self.total or self.done <= 0:
            return None
        elapsed = now - self.started
        return max(0.0, elapsed * (self.total - self.done) / self.done)

    def to_json(self, now: float) -> dict[str, Any]:
        return {"label": self.label, "done": self.done, "total": self.total,
                "elapsed": round(now - self.started, 2), "eta": self.eta(now)}


_stack: list[Stage] = []
_publisher: Publisher | None = None


def _check(label: str, total: int | None) -> None:
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"progress stage label must be a non-empty string, got {label!r}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise ValueError(f"progress stage {label!r}: total must be None or an int >= 0, got {total!r}")


@contextlib.contextmanager
def stage(label: str, total: int | None = None, *, tqdm: bool = False) -> Iterator[Progress]:
    """A stage of the running work, shown nested inside the enclosing stages while the block runs.

    Yields an object with ``update(n=1)``. Without a publisher (library use) this is a no-op, or a tqdm bar
    when ``tqdm`` is true; under pytest the stage is published for the controller to render.
    """
    _check(label, total)
    if _publisher is None:
        if not tqdm:
            yield _NOTHING
            return
        from tqdm.auto import tqdm as bar

        with bar(total=total, desc=label, leave=False, dynamic_ncols=True) as progress:
            yield progress
        return
    current = Stage(label, total)
    _stack.append(current)
    _publisher.touch()
    try:
        yield current
    finally:
        if _stack and _stack[-1] is current:
            _stack.pop()
        elif current in _stack:  # a generator left out of order: drop it and what it holds
            del _stack[_stack.index(current):]
        if _publisher is not None:
            _publisher.touch()


def stack() -> list[Stage]:
    """The running stages of this process, outermost first (a copy)."""
    return list(_stack)


# ------------------------------------------------------------------ worker side
class Publisher:
    """Keeps one process's current case and stages in ``path`` (JSON), rewritten at most every ``interval``
    seconds by a daemon thread, and at once when a case begins or ends."""

    def __init__(self, path: Path, worker: str, interval: float = PUBLISH_INTERVAL) -> None:
        self.path = Path(path)
        self.worker = worker
        self.interval = interval
        self.case: str | None = None
        self.case_started = 0.0
        self.seq = 0
        self._dirty = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hypocheck-progress-publisher", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def touch(self) -> None:
        """Something changed: write it out at the next tick."""
        self._dirty = True

    def begin_case(self, name: str) -> None:
        self.case, self.case_started = name, time.monotonic()
        _stack.clear()
        self.flush()

    def end_case(self) -> None:
        self.case = None
        _stack.clear()
        self.flush()

    def state(self, now: float | None = None) -> dict[str, Any]:
        """What the controller renders: the worker, its case, the case's elapsed seconds and its stages."""
        now = time.monotonic() if now is None else now
        return {"worker": self.worker, "pid": os.getpid(), "seq": self.seq, "at": time.time(), "case": self.case,
                "elapsed": round(now - self.case_started, 2) if self.case else None,
                "stages": [s.to_json(now) for s in list(_stack)] if self.case else []}

    def flush(self) -> None:
        """Write the state now (a temporary file renamed into place: readers never see half a file)."""
        with self._lock:
            self._dirty = False
            self.seq += 1
            data = json.dumps(self.state())
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(data, encoding="utf-8")
                os.replace(tmp, self.path)
            except OSError:  # the run's folder is gone (the controller ended): progress is not worth a failure
                tmp.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._dirty:
                with contextlib.suppress(Exception):  # a progress display must never end a run
                    self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.interval)


def install(publisher: Publisher | None) -> Publisher | None:
    """Make ``publisher`` receive this process's stages (``None``: nobody watches); returns the one it
    replaces (still running: whoever started it closes it)."""
    global _publisher
    previous, _publisher = _publisher, publisher
    return previous


def publisher() -> Publisher | None:
    return _publisher


def begin_case(name: str) -> None:
    """A case starts in this process (no-op when nobody watches)."""
    if _publisher is not None:
        _publisher.begin_case(name)


def end_case() -> None:
    if _publisher is not None:
        _publisher.end_case()


# ------------------------------------------------------------------ formatting
def format_seconds(seconds: float) -> str:
    """``7s``, ``3m05s``, ``1h02m``: short and steady."""
    if seconds != seconds or seconds < 0:  # NaN or negative
        raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_stage(stage_state: dict[str, Any], lag: float = 0.0) -> str:
    """``label``, ``label 96/328 ETA 40s`` or ``label 12`` (count without total); ``lag``: seconds since the
    state was written (taken off the ETA)."""
    text = str(stage_state["label"])
    total, done = stage_state.get("total"), stage_state.get("done", 0)
    if total:
        text += f" {done}/{total}"
        if stage_state.get("eta") is not None:
            text += f" ETA {format_seconds(max(0.0, stage_state['eta'] - lag))}"
    elif done:
        text += f" {done}"
    return text


def format_state(state: dict[str, Any], now: float | None = None) -> str:
    """``case › stage › sub 96/328 ETA 40s (1m02s)`` for a worker's state; ``""`` when it runs no case.

    ``now`` (wall-clock seconds): the time shown; a state written earlier (a worker writes only on change)
    has its elapsed time moved on and its ETA moved down by the difference."""
    if not state.get("case"):
        return ""
    lag = max(0.0, now - float(state["at"])) if now is not None and state.get("at") is not None else 0.0
    parts = [str(state["case"]), *(format_stage(s, lag) for s in state.get("stages", []))]
    elapsed = state.get("elapsed")
    return SEPARATOR.join(parts) + (f" ({format_seconds(elapsed + lag)})" if elapsed is not None else "")


def compact_state(state: dict[str, Any], budget: int, now: float | None = None) -> str:
    """``format_state`` in at most ``budget`` characters (live mode shares one line among workers): middle
    stages become ``…`` first, then the case id loses its start (its axes, at the end, say most)."""
    full = format_state(state, now)
    if len(full) <= budget or not full:
        return full
    stages = state.get("stages", [])
    short = {**state, "stages": [{"label": "…"}, stages[-1]]} if len(stages) > 1 else state
    text = format_state(short, now)
    if len(text) <= budget:
        return text
    case = str(state["case"])
    cut = max(8, len(case) - (len(text) - budget) - 1)
    text = format_state({**short, "case": "…" + case[-cut:]}, now)
    return text if len(text) <= budget else text[: max(1, budget - 1)] + "…"


def stage_key(state: dict[str, Any]) -> tuple[str, ...]:
    """What counts as a stage change: the case and its stage labels (not their counts)."""
    return (str(state.get("case")), *(str(s["label"]) for s in state.get("stages", [])))


class LineThrottle:
    """When a worker's state earns a printed line: at a stage change, else at most every ``heartbeat`` s."""

    def __init__(self, heartbeat: float = HEARTBEAT) -> None:
        self.heartbeat = heartbeat
        self._last: dict[str, tuple[tuple[str, ...], float]] = {}

    def due(self, worker: str, key: tuple[str, ...], now: float) -> bool:
        last = self._last.get(worker)
        if last is not None and last[0] == key and now - last[1] < self.heartbeat:
            return False
        self._last[worker] = (key, now)
        return True

    def forget(self, worker: str) -> None:
        self._last.pop(worker, None)


def read_states(directory: Path) -> list[dict[str, Any]]:
    """Every worker's last published state, by worker name (unreadable files are skipped: next poll)."""
    states = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            states.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return states


# ------------------------------------------------------------------ controller side
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Screen:
    """The controller's terminal stream, wrapped: every write (pytest's and ours) holds one lock.

    Knows what the current line holds, so that a progress line starts on a line of its own, and in live mode
    keeps one status line below the output, cleared before anything else is written and redrawn by the
    reporter's next tick.
    """

    def __init__(self, stream: IO[str], live: bool, width: Callable[[], int] = lambda: 80) -> None:
        self._stream = stream
        self.live = live
        self.width = width
        self._lock = threading.RLock()
        self._raw = ""  # the text on the current (unfinished) line, as written
        self._partial = ""  # the same, escapes removed
        self._shown = False
        self._below = False  # the status sits on a line below a partial output line

    # --- the file protocol TerminalWriter uses
    def write(self, text: str) -> int:
        with self._lock:
            self._hide()
            self._stream.write(text)
            self._track(text)
            return len(text)

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self._stream, "isatty", lambda: False)())

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, … of the real stream
        return getattr(self._stream, name)

    # --- ours
    def _track(self, text: str) -> None:
        tail = text.rsplit("\n", 1)
        self._raw = tail[-1] if len(tail) > 1 else self._raw + tail[-1]
        self._partial = _ANSI.sub("", self._raw).rsplit("\r", 1)[-1]

    def line(self, text: str) -> None:
        """``text`` on a line of its own, after the current partial line if any. A partial line that waits for
        its end (``-v``'s ``node id `` before ``PASSED``; it ends in a space) is written again below, so the
        outcome still lands on the line that names the test; outcome letters (``..F``) are not repeated."""
        with self._lock:
            self._hide()
            again = self._raw if self._partial[-1:].isspace() else ""
            self._stream.write(("\n" if self._partial else "") + text + "\n" + again)
            self._raw = again
            self._partial = _ANSI.sub("", again)
            self._stream.flush()

    def status(self, text: str) -> None:
        """Live mode: show ``text`` (cut to the terminal width) in place of the previous status."""
        with self._lock:
            self._hide()
            if not text or not self.live:
                self._stream.flush()
                return
            width = max(20, self.width() - 1)
            text = text if len(text) <= width else text[: width - 1] + "…"
            self._below = bool(self._partial)
            self._stream.write(("\n" if self._below else "\r") + text)
            self._shown = True
            self._stream.flush()

    def _hide(self) -> None:
        if not self._shown:
            return
        self._stream.write("\r\x1b[K")
        if self._below:  # back to the end of the output line the status was drawn below
            self._stream.write(f"\x1b[1A\x1b[{len(self._partial) + 1}G")
        self._shown = False

    def clear(self) -> None:
        with self._lock:
            self._hide()
            self._stream.flush()


class ProgressReporter:
    """Controller side: reads the workers' state files under ``directory`` every ``poll`` seconds and renders
    them on ``screen``; ``finished`` prints a finished case's line."""

    def __init__(self, directory: Path, screen: Screen, *, poll: float = POLL_INTERVAL,
                 heartbeat: float = HEARTBEAT, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.screen = screen
        self.poll = poll
        self.clock = clock
        self.wall = wall
        self.throttle = LineThrottle(heartbeat)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        """Render the workers' states once."""
        states = [s for s in read_states(self.directory) if s.get("case")]
        wall = self.wall()
        if self.screen.live:
            if states:
                budget = max(16, (self.screen.width() - 1) // len(states) - 7)  # "gw0  " and "  │  " apart
                self.screen.status("  │  ".join(_prefixed(s, wall, budget) for s in states))
            else:
                self.screen.status("")
            return
        now = self.clock()
        for state in states:
            worker = str(state.get("worker", ""))
            if self.throttle.due(worker, stage_key(state), now):
                self.screen.line("· " + _prefixed(state, wall))

    def finished(self, line: str) -> None:
        self.screen.line(line)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            with contextlib.suppress(Exception):  # a progress display must never end a run
                self.tick()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hypocheck-progress-reporter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.poll)
        self.screen.clear()


def _prefixed(state: dict[str, Any], now: float | None, budget: int | None = None) -> str:
    text = format_state(state, now) if budget is None else compact_state(state, budget, now)
    worker = state.get("worker")
    return f"{worker}  {text}" if worker else text


def resolve_mode(option: str | None, ini: str, isatty: bool) -> str:
    """``live``, ``lines`` or ``off`` from the option (else the ini value) and whether output is a terminal."""
    mode = (option or ini or "auto").strip().lower()
    if mode not in MODES:
        source = "--hypocheck-progress" if option else "ini option hypocheck_progress"
        raise ValueError(f"{source}: unknown value {mode!r}; valid: {', '.join(MODES)}")
    if mode == "auto":
        return "live" if isatty else "lines"
    return mode
