"""How runs end when their process does: normal exit, an uncaught exception, SIGTERM or SIGINT, and fork.

- Interpreter exit finishes open runs with status `ok`, or `failed` with the exception type when
  one escaped; `KeyboardInterrupt` (SIGINT) counts as `killed`.
- SIGTERM finishes open runs as `killed`, then hands the signal to whatever handler was there
  before, so the process still dies of it. Wherever it lands (inside `flush()`, inside a full
  queue's wait) the handler is done within the shutdown timeout (`shutdown_timeout_s`, default
  10 s): it sets a process-wide deadline that every flush and close honours, and it waits only
  on the worker thread, never on a lock the code it interrupted may hold (see worker.py). A
  second SIGTERM while it runs is ignored: the deadline already bounds it.
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
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

FinishAll = Callable[[str, "str | None"], None]

_installed = False
_uncaught: list[tuple[type[BaseException], str]] = []
_previous_handlers: dict[int, Any] = {}
_shutdown_timeout: list[Callable[[], float]] = []
#: Monotonic time by which a signal's shutdown must be done; None while no signal is being handled.
_deadline: float | None = None

DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0


def shutdown_deadline() -> float | None:
    """When the SIGTERM being handled must be done (monotonic clock), or None."""
    return _deadline


def exit_status() -> tuple[str, str | None]:
    """The status open runs get at interpreter exit."""
    if not _uncaught:
        return "ok", None
    kind, text = _uncaught[-1]
    return ("killed" if issubclass(kind, KeyboardInterrupt) else "failed"), text


def install(
    finish_all: FinishAll, forget_in_child: Callable[[], None], shutdown_timeout: Callable[[], float] | None = None
) -> None:
    """Hook the process once; later calls do nothing. `shutdown_timeout` says, when a signal
    arrives, how many seconds finishing may take (default 10)."""
    global _installed
    if _installed:
        return
    _installed = True
    if shutdown_timeout is not None:
        _shutdown_timeout.append(shutdown_timeout)
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
        global _deadline
        if _deadline is not None:
            return  # already finishing: the deadline bounds it
        _deadline = time.monotonic() + _timeout_s()
        try:
            finish_all("killed", f"signal {signal.Signals(number).name}")
        finally:
            before = _previous_handlers.get(number)
            if callable(before):
                before(number, frame)
                _deadline = None  # the previous handler let the process live on
            else:
                signal.signal(number, signal.SIG_DFL)
                os.kill(os.getpid(), number)

    signal.signal(signum, on_signal)


def _timeout_s() -> float:
    try:
        return float(_shutdown_timeout[0]()) if _shutdown_timeout else DEFAULT_SHUTDOWN_TIMEOUT_S
    except Exception:  # a broken callback must not stop the shutdown
        return DEFAULT_SHUTDOWN_TIMEOUT_S
