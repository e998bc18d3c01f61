"""Answers as the HTTP API sends them: a table (`columns`, `rows`) as JSON, or as an Arrow IPC stream when
the request says `?format=arrow`; and run references resolved, an unknown one as a 404 (`resolve`).

JSON is what a browser parses: NaN and ±Inf as the strings "NaN", "Infinity", "-Infinity", datetimes as
ISO-8601 text in UTC (runstream.output `json_value`, the one JSON encoding of every command). Arrow keeps exact
types and NaN distinct from null (runstream.analysis.client `to_arrow`, what `Client(output="arrow")` gives).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import pyarrow as pa
from fastapi import Query
from fastapi.responses import Response

from runstream.analysis import queries
from runstream.output import json_value
from runstream.server.api_errors import UnknownRun
from runstream.server.wire import ARROW_STREAM


class Format(StrEnum):
    """`?format=`: JSON (default) or an Arrow IPC stream."""

    json = "json"
    arrow = "arrow"


#: The `?format=` query parameter of the routes that answer a table.
FormatQuery = Annotated[Format, Query(alias="format", description="json (default) or arrow (an Arrow IPC stream)")]


def browser_json(value: Any) -> Any:
    """`value` as the API's JSON carries it: json_value's encoding, with times that say they are UTC.
    clickhouse-connect returns the stored UTC times as naive datetimes, which a browser would read as local
    time; they get their +00:00 here."""
    if isinstance(value, datetime):
        return json_value(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, dict):
        return {str(key): browser_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [browser_json(item) for item in value]
    return json_value(value)


def json_response(value: Any, status_code: int = 200) -> Response:
    """Strict JSON (allow_nan=False cannot fail: json_value replaced NaN/±Inf by strings)."""
    body = json.dumps(browser_json(value), allow_nan=False, separators=(",", ":"))
    return Response(body, status_code=status_code, media_type="application/json")


def arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def arrow_response(table: pa.Table) -> Response:
    return Response(arrow_bytes(table), media_type=ARROW_STREAM)


def table_response(table: queries.Table, fmt: Format = Format.json, **extra: Any) -> Response:
    """A question's rows; `extra` fields (left_out, note) ride along in JSON and in the Arrow schema's metadata."""
    if fmt is Format.arrow:
        from runstream.analysis.client import to_arrow

        arrow = to_arrow(table)
        if extra:
            metadata = {key.encode(): json.dumps(json_value(value)).encode() for key, value in extra.items()}
            arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **metadata})
        return arrow_response(arrow)
    return json_response({"columns": table.columns, "rows": table.rows, **extra})


def resolve(client: Any, database: str, refs: list[str], project: str | None = None) -> list[tuple[str, str]]:
    """(run_id, run_name) per reference (queries.resolve_runs); a reference no run has is UnknownRun (404),
    any other mistake (no reference, a name several runs share) stays a ValueError (400)."""
    try:
        return queries.resolve_runs(client, database, refs, project)
    except ValueError as error:
        if refs:
            known = client.query(
                f"SELECT run_id, run_name FROM {database}.runs "  # noqa: S608 - the checked database name
                "WHERE has({refs:Array(String)}, run_id) OR has({refs:Array(String)}, run_name)",
                parameters={"refs": refs}).result_rows
            names = {value for row in known for value in row}
            if any(ref not in names for ref in refs):
                raise UnknownRun(str(error)) from None
        raise
