"""Progress on stderr, for every command and long call of runstream: the one implementation (tqdm).

Shown only where a person is watching, or when asked: on stderr when stderr is a terminal, or when a
caller passes `show=True` (`--progress` on a command, `progress=True` to `hash_path`, or the
environment variable RUNSTREAM_PROGRESS=1); `show=False`, `--no-progress` or RUNSTREAM_PROGRESS=0 turn
it off everywhere. Never on stdout, which carries results: a command's stdout is byte-identical with
and without progress.

Two shapes: `bar` counts towards a known total (bytes hashed, spool bytes ingested or synced, demo
runs logged); `Stages` is an elapsed-time counter naming the stage a command is in, for work whose
size is unknown (an analysis query). Both accept `delay`: quick work prints nothing at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm  # type: ignore[import-untyped]  # no type information shipped

ENV = "RUNSTREAM_PROGRESS"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
#: How often a bar or counter is redrawn: often enough to look alive on a terminal; on a log file
#: (stderr redirected, progress asked for) each redraw is a line, so far less often.
_TERMINAL_INTERVAL_S = 0.2
_LOG_INTERVAL_S = 5.0


def wanted(show: bool | None = None, stream: TextIO | None = None) -> bool:
    """Whether to show progress: the caller's choice, else RUNSTREAM_PROGRESS, else whether `stream`
    (stderr) is a terminal. An argument wins over the environment, as everywhere in runstream."""
    if show is not None:
        return show
    raw = os.environ.get(ENV, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if value:
        raise ValueError(f"environment {ENV}: expected 1 or 0 (true/false, yes/no, on/off), got {raw!r}")
    return _is_terminal(stream if stream is not None else sys.stderr)


def _shape(stream: TextIO) -> dict[str, int]:
    """{} (tqdm measures the terminal) unless the terminal reports no usable size: a pseudo-terminal
    nobody sized (some CI runners, `script`) says 0 x 0, on which tqdm would hide its bar."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return {}
    return {} if size.columns >= 20 and size.lines >= 2 else {"ncols": 80, "nrows": 24}


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # not a file, or a closed one
        return False


def add_option(parser: argparse.ArgumentParser) -> None:
    """`--progress` / `--no-progress` on a command that can take long (default: shown on a terminal)."""
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help=f"show progress on stderr (default: only when stderr is a terminal) [env {ENV}=1 or 0]",
    )


def bar(desc: str, total: float | None, *, unit: str = "it", byte_units: bool = False, show: bool | None = None,
        delay: float = 0.0, stream: TextIO | None = None) -> tqdm:
    """A bar towards `total` (a counter with the elapsed time when `total` is None), on stderr.

    Use as a context manager and `update(n)`. When not `wanted`, tqdm is disabled and costs nothing.
    `byte_units` shows bytes as kB/MB/GB; `delay` hides the bar from work that ends sooner.
    """
    target = stream if stream is not None else sys.stderr
    options: dict[str, Any] = {"unit": "B", "unit_scale": True, "unit_divisor": 1024} if byte_units else {"unit": unit}
    return tqdm(
        total=total, desc=desc, file=target, disable=not wanted(show, target), delay=delay, leave=True,
        mininterval=_TERMINAL_INTERVAL_S if _is_terminal(target) else _LOG_INTERVAL_S,
        **_shape(target),
        **options,
    )


class Stages:
    """`with Stages("runstream best") as p: p.step("ranking") ...`: the stage a command is in and for how long.

    For work that blocks without counting (a query, a connection): a small thread redraws the line,
    after `delay` seconds only, so quick answers print nothing; the last line says how long it all took.
    """

    def __init__(self, label: str, *, show: bool | None = None, delay: float = 1.0,
                 stream: TextIO | None = None) -> None:
        self.label = label
        target = stream if stream is not None else sys.stderr
        self._interval = _TERMINAL_INTERVAL_S if _is_terminal(target) else _LOG_INTERVAL_S
        self._wanted = wanted(show, target)
        self._bar: tqdm = tqdm(
            total=None, desc=f"{label}: starting", file=target, disable=not self._wanted, delay=delay,
            leave=True, miniters=0, mininterval=self._interval, bar_format="{desc} ... {elapsed}",
            **_shape(target),
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="runstream-progress", daemon=True)

    @property
    def shown(self) -> bool:
        """Whether progress is on (stderr a terminal, or asked); a quick answer still prints nothing."""
        return self._wanted

    def step(self, stage: str) -> None:
        """Name the stage the command has reached (drawn at the next tick, never before `delay`)."""
        self._bar.set_description_str(f"{self.label}: {stage}", refresh=False)

    def _tick(self) -> None:
        # update(0) draws only once `delay` has passed and `mininterval` since the last draw (tqdm's rules).
        while not self._stop.wait(self._interval):
            self._bar.update(0)

    def __enter__(self) -> Stages:
        if self.shown:
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if exc_type is None:
            self._bar.set_description_str(f"{self.label}: done in", refresh=False)
        self._bar.close()  # prints the last line only if anything was shown
