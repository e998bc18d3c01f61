"""How the HTTP API reports a request it cannot answer: one JSON shape, `{"error": "<message>"}`, and one
status per kind of mistake, so that a browser or a script can tell its own mistake from the server's.

- 400: a malformed filter, sort or parameter (the project's ValueError / FilterError, whose messages name
  the field and the value), or SQL ClickHouse refused (its message and code);
- 403: SQL that writes or changes the schema (ClickHouse READONLY, code 164, under `readonly=2`), or that
  reaches outside the database (server/read_only.py `ReadOnlyRefused`: INTO OUTFILE, file(), url()...);
- 404: a run no id or name matches (`UnknownRun`);
- 422: a query parameter out of its bounds or of the wrong type (FastAPI's validation, one line per field).

Nothing here stops the server: every handler answers, and the next request is served as before.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from runstream.analysis.cli import clickhouse_error_line, is_clickhouse_error
from runstream.server.read_only import ReadOnlyRefused

log = logging.getLogger(__name__)

#: ClickHouse's error code for a statement refused in read-only mode (INSERT, ALTER, DROP, CREATE, SET readonly).
READONLY_CODE = 164


class UnknownRun(LookupError):
    """A run reference (id or name) that no stored run has; the message names it (404)."""


def error_body(message: str) -> dict[str, str]:
    return {"error": message}


def _validation_message(error: RequestValidationError) -> str:
    """One line per refused field: where it was (query, body), its name, the value given and why."""
    parts = []
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ()) if part not in ("query", "body", "path")]
        field = ".".join(location) or "request"
        given = item.get("input")
        shown = "" if given is None or isinstance(given, dict) else f" {given!r}"
        parts.append(f"{field}{shown}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    async def on_validation(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return JSONResponse(error_body(_validation_message(error)), status_code=422)

    async def on_unknown_run(_request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(error_body(str(error.args[0]) if error.args else str(error)), status_code=404)

    async def on_refused(_request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(error_body(str(error)), status_code=403)

    async def on_value_error(_request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(error_body(str(error)), status_code=400)

    async def on_clickhouse(_request: Request, error: Exception) -> JSONResponse:
        if getattr(error, "code", None) == READONLY_CODE:
            return JSONResponse(error_body(f"sql: the API is read-only (writes and DDL are refused): "
                                           f"{clickhouse_error_line(error)}"), status_code=403)
        return JSONResponse(error_body(clickhouse_error_line(error)), status_code=400)

    async def on_connection(_request: Request, error: Exception) -> JSONResponse:
        # ClickHouse (an http DSN) unreachable: this request fails, the server lives on
        return JSONResponse(error_body(str(error)), status_code=503)

    async def on_any(request: Request, error: Exception) -> JSONResponse:
        if is_clickhouse_error(error):  # an engine error of another class than clickhouse-connect's
            return await on_clickhouse(request, error)
        log.error("runstream server: %s %s failed: %s: %s", request.method, request.url.path,
                  type(error).__name__, error)
        return JSONResponse(error_body(f"internal error: {type(error).__name__}: {error}"), status_code=500)

    from clickhouse_connect.driver.exceptions import Error as ClickHouseError

    handlers: dict[Any, Any] = {RequestValidationError: on_validation, UnknownRun: on_unknown_run,
                                ReadOnlyRefused: on_refused,
                                ValueError: on_value_error, ClickHouseError: on_clickhouse,
                                ConnectionError: on_connection, Exception: on_any}
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
