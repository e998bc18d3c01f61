"""What every route of the HTTP API shares: the server's one ClickHouse client, its database, and the
loaders' counts for /api/health (`ServerState`), and how a route gets it (`state`, a FastAPI dependency).

One client serves every request, a read-only one (server/read_only.py: every statement under `readonly=2`;
the loaders write through a client of their own): the embedded engine admits one process, and that process is
this one. chDB answers concurrent queries from several threads correctly (FastAPI runs plain `def` routes in
a thread pool), so no lock is taken here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from runstream import __version__

#: A loader's counts for /api/health (files, events, points loaded, errors...), read when asked.
LoaderCounts = Callable[[], Mapping[str, Any]]


@dataclass
class ServerState:
    """The server's connection and what /api/health reports.

    `exporter_interval_s`: how often /metrics' gauges are recomputed (runstream monitor's refresh loop);
    None: the `[monitor]` settings' interval."""

    client: Any
    database: str
    loaders: dict[str, LoaderCounts] = field(default_factory=dict)
    exporter_interval_s: float | None = None
    pid: int = field(default_factory=os.getpid)
    version: str = __version__

    def loader_counts(self) -> dict[str, Any]:
        counts: dict[str, Any] = {}
        for name, read in self.loaders.items():
            try:
                counts[name] = dict(read())
            except Exception as error:  # a loader's counts never fail the health check
                counts[name] = {"error": f"{type(error).__name__}: {error}"}
        return counts


def state(request: Request) -> ServerState:
    """The ServerState `create_app` stored on the application (a FastAPI dependency)."""
    found = request.app.state.runstream
    assert isinstance(found, ServerState)
    return found


#: A route's parameter that receives the ServerState.
Server = Annotated[ServerState, Depends(state)]
