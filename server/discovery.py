"""How other processes find the `runstream server` that holds an embedded ClickHouse folder.

The embedded engine admits one process per data folder, so while a server runs, `runstream runs` cannot open
the folder itself. The server writes `runstream-server.json` inside the folder it holds (its URL, pid and
database); a read command that is pointed at that folder finds the file, checks that the server is really there
(the pid lives and `/api/health` answers with that pid, so a stale file left by a killed server or a port reused by
another program is never trusted) and sends its SQL to the server instead.

Standard library only (runstream.processes is too): the read path of every command imports this module before it
knows whether a server runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runstream.processes import process_alive

SERVER_FILE = "runstream-server.json"
HEALTH_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ServerAddress:
    url: str  # http://127.0.0.1:8765, no trailing slash
    pid: int
    database: str


@contextlib.contextmanager
def announce(data_folder: Path, url: str, database: str) -> Iterator[None]:
    """Write the server file while the block runs; remove it after, unless another server has replaced it."""
    path = data_folder / SERVER_FILE
    mine = ServerAddress(url.rstrip("/"), os.getpid(), database)
    record = {"url": mine.url, "pid": mine.pid, "database": mine.database,
              "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    descriptor, temporary = tempfile.mkstemp(prefix=".runstream-server.", dir=data_folder)
    with os.fdopen(descriptor, "w") as file:
        json.dump(record, file)
    os.replace(temporary, path)  # readers see the whole file or none
    try:
        yield
    finally:
        if _read(path) == mine:
            path.unlink(missing_ok=True)


def running_server(data_folder: Path) -> ServerAddress | None:
    """The live server that holds `data_folder`, or None (no file, a dead pid, or no answer from its API)."""
    address = _read(data_folder / SERVER_FILE)
    if address is None or not process_alive(address.pid):
        return None
    try:
        with urllib.request.urlopen(f"{address.url}/api/health", timeout=HEALTH_TIMEOUT_S) as response:  # noqa: S310
            health = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return address if isinstance(health, dict) and health.get("pid") == address.pid else None


def _read(path: Path) -> ServerAddress | None:
    try:
        record = json.loads(path.read_text())
        address = ServerAddress(str(record["url"]), int(record["pid"]), str(record["database"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return address if address.url.startswith(("http://", "https://")) else None


__all__ = ["SERVER_FILE", "ServerAddress", "announce", "running_server"]
