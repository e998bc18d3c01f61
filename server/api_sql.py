"""POST /api/sql: read-only SQL over the server's database, for `runstream query`, `Client.sql` and every
read command that finds the data folder held by this server (consumer/dsn.py `connect` -> RemoteClient).

Read-only is ClickHouse's own rule plus one check (server/read_only.py): the statement runs on the API's
client, whose every statement carries `readonly=2` (the engine refuses INSERT, ALTER, DROP, CREATE and
raising `readonly`: code 164, READONLY -> 403), after `check_statement` refused what that setting lets
through (INTO OUTFILE, file(), table functions that reach other hosts -> 403). Answers are
runstream.server.wire's tagged JSON (exact types back in the RemoteClient), or an Arrow IPC stream with
`?format=arrow` (`client.query_arrow`, the engine's own Arrow).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from runstream.server import wire
from runstream.server.api_tables import Format, FormatQuery, arrow_response
from runstream.server.read_only import READ_ONLY_SETTINGS, check_statement
from runstream.server.state import Server

router = APIRouter()


class SqlRequest(BaseModel):
    sql: str = Field(min_length=1, max_length=1_000_000, description="one SQL statement (read-only)")
    parameters: dict[str, Any] = Field(default_factory=dict, description="query parameters ({name:Type} in the "
                                       "SQL), tagged as runstream.server.wire writes them")


@router.post("/api/sql", summary="read-only SQL: tagged JSON (runstream.server.wire) or Arrow")
def sql(request: SqlRequest, server: Server, fmt: FormatQuery = Format.json) -> Response:
    parameters = wire.decode_parameters(request.parameters)
    check_statement(server.client, request.sql, parameters)
    # the setting again with the statement: the API's client carries it too, this keeps a client without it safe
    settings = dict(READ_ONLY_SETTINGS)
    if fmt is Format.arrow:
        return arrow_response(server.client.query_arrow(request.sql, parameters=parameters, settings=settings))
    result = server.client.query(request.sql, parameters=parameters, settings=settings)
    return Response(wire.encode_result(result), media_type="application/json")
