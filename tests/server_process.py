"""Starts a real `runstream server` subprocess and waits for the line that says it is ready.

Shared by the server's test modules: the server is the one process that holds the embedded folder, so every test
that reads through it starts it exactly as a user would, on a port the OS picks.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

READY = re.compile(r"^runstream server: (?P<url>https?://\S+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    url: str
    output: list[str] = field(default_factory=list)  # every line it printed (stdout and stderr), as it prints


def clean_environment() -> dict[str, str]:
    """This process's environment without RUNSTREAM_* settings, so that a developer's own (a DSN, a spool folder)
    never reaches a server or a command a test starts."""
    return {key: value for key, value in os.environ.items() if not key.startswith("RUNSTREAM_")}


@contextmanager
def running_server(*args: str, timeout_s: float = 60.0, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> Iterator[ServerProcess]:
    """`runstream server --port 0 ARGS...` until the block ends; then SIGTERM and a bounded wait (kill after).

    It runs in `clean_environment()` plus `env`. After the block, `process.returncode` is its exit status and
    `output` holds everything it printed."""
    command: Sequence[str] = [sys.executable, "-m", "runstream.cli", "server", "--port", "0", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**clean_environment(), **(env or {})}, cwd=cwd)
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    url = None
    while url is None:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            process.kill()
            raise TimeoutError(f"runstream server not ready in {timeout_s:g} s:\n{''.join(output)}") from None
        if line is None:
            raise RuntimeError(f"runstream server exited {process.wait()} before it was ready:\n{''.join(output)}")
        match = READY.match(line)
        url = match["url"] if match else None
    server = ServerProcess(process, url, output)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        reader.join(timeout=10)  # its last lines (the log written while it stopped) are in `output` too
