"""The server's FastAPI application: `create_app(state)` puts together the HTTP API (server/api_*.py), its
error handling (server/api_errors.py), /api/health, the Prometheus gauges on /metrics and the web UI
(server/ui.py). `runstream server` (server/cli.py) serves it; tests may serve it themselves.

/metrics carries `runstream monitor`'s gauges (runstream.monitoring.exporter): its collector runs on the
server's own client, refreshed in a background thread while the application runs (a scrape reads the
latest snapshot and never waits on ClickHouse), and prometheus_client's exposition writes the text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runstream import __version__
from runstream.server import api_curves, api_errors, api_monitoring, api_runs, api_sql
from runstream.server.api_tables import json_response
from runstream.server.state import Server, ServerState

__all__ = ["ServerState", "create_app"]


def create_app(state: ServerState) -> FastAPI:
    """The application over `state`'s client; /metrics' refresh thread runs from startup to shutdown."""
    from runstream.monitoring.exporter import Exporter
    from runstream.monitoring.settings import ExporterSettings

    settings = ExporterSettings.load({"interval_s": state.exporter_interval_s})
    exporter = Exporter(state.client, state.database, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        thread = exporter.start()
        try:
            yield
        finally:
            exporter.stop()
            thread.join(timeout=30)

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, and the server works offline.
    # /openapi.json describes every route.
    app = FastAPI(title="runstream", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="The runstream server's API: runs, curves, comparisons, GPU use, cost, drift and "
                  "read-only SQL over the experiment database. No authentication: it listens on loopback "
                  "unless started with another --host.")
    app.state.runstream = state
    api_errors.install(app)
    for module in (api_runs, api_curves, api_monitoring, api_sql):
        app.include_router(module.router)

    @app.get("/api/health", summary="the server is up: its pid, database, version and the loaders' counts")
    def health(server: Server) -> Response:
        return json_response({"status": "ok", "pid": server.pid, "database": server.database,
                              "version": server.version, "loaders": server.loader_counts()})

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(exporter.registry), media_type=CONTENT_TYPE_LATEST)

    from runstream.server.ui import mount_ui

    mount_ui(app)
    return app
