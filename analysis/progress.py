"""A progress line on stderr for analysis commands that take more than a second.

Quick answers print nothing extra; a slow one (a cold server, a big project) shows what it is doing
and for how long, so a user can tell waiting from hanging. The line is redrawn in place on a terminal
and written once per stage otherwise (logs stay readable), and stdout, which carries the result,
is never touched.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO


class Progress:
    """`with Progress("runstream best") as p: p.step("leaderboard") ...`"""

    def __init__(self, label: str, *, delay_s: float = 1.0, stream: TextIO | None = None) -> None:
        self.label = label
        self.delay_s = delay_s
        self.stream = stream or sys.stderr
        self.stage = "starting"
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._shown = False
        self._reported_stage: str | None = None
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._thread = threading.Thread(target=self._loop, name="runstream-progress", daemon=True)

    def step(self, stage: str) -> None:
        self.stage = stage

    def _line(self) -> str:
        return f"{self.label}: {self.stage} ... {time.monotonic() - self._started:.1f}s"

    def _loop(self) -> None:
        if self._stop.wait(self.delay_s):
            return
        while not self._stop.is_set():
            if self._tty:
                self.stream.write("\r\x1b[K" + self._line())
                self.stream.flush()
            elif self._reported_stage != self.stage:
                self._reported_stage = self.stage
                self.stream.write(self._line() + "\n")
                self.stream.flush()
            self._shown = True
            self._stop.wait(0.2)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        if self._shown:
            elapsed = time.monotonic() - self._started
            end = "\r\x1b[K" if self._tty else ""
            self.stream.write(f"{end}{self.label}: done in {elapsed:.1f}s\n")
            self.stream.flush()
