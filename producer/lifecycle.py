"""How runs end when their process does: normal exit, an uncaught exception, SIGTERM or SIGINT, and fork.

- Interpreter exit finishes open runs with status `ok`, or `failed` with the exception type when
  one escaped; `KeyboardInterrupt` (SIGINT) counts as `killed`.
- SIGTERM finishes open runs as `killed` (flushing within the settings' flush timeout), then
  hands the signal to whatever handler was there before, so the process still dies of it.
- A forked child (DataLoader workers) forgets its parent's runs and sinks: it neither resends
  nor closes anything of the parent's; what it logs to an inherited run is dropped and counted.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

FinishAll = Callable[[str, "str | None"], None]

_installed = False
_uncaught: list[tuple[type[BaseException], str]] = []
_previous_handlers: dict[int, Any] = {}


def exit_status() -> tuple[str, str | None]:
    """The status open runs get at interpreter exit."""
    if not _uncaught:
        return "ok", None
    kind, text = _uncaught[-1]
    return ("killed" if issubclass(kind, KeyboardInterrupt) else "failed"), text


def install(finish_all: FinishAll, forget_in_child: Callable[[], None]) -> None:
    """Hook the process once; later calls do nothing."""
    global _installed
    if _installed:
        return
    _installed = True
    previous_hook = sys.excepthook

    def record_uncaught(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        _uncaught.append((kind, f"{kind.__name__}: {error}"))
        previous_hook(kind, error, tb)

    sys.excepthook = record_uncaught
    atexit.register(lambda: finish_all(*exit_status()))
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=forget_in_child)
    if threading.current_thread() is threading.main_thread():
        _install_signal(signal.SIGTERM, finish_all)
    else:
        log.debug("runstream: init() outside the main thread; SIGTERM is not hooked")


def _install_signal(signum: int, finish_all: FinishAll) -> None:
    previous = signal.getsignal(signum)
    if previous is signal.SIG_IGN:
        return
    _previous_handlers[signum] = previous

    def on_signal(number: int, frame: FrameType | None) -> None:
        try:
            finish_all("killed", f"signal {signal.Signals(number).name}")
        finally:
            before = _previous_handlers.get(number)
            if callable(before):
                before(number, frame)
            else:
                signal.signal(number, signal.SIG_DFL)
                os.kill(os.getpid(), number)

    signal.signal(signum, on_signal)
