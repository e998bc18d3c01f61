"""How a query and its answer cross the server's HTTP API unchanged: tagged JSON for Python values.

`runstream runs` and every other read command print the same thing whether they read the embedded engine
themselves or through a running `runstream server` (server/remote_client.py). That holds only if each value
arrives as the very Python value clickhouse-connect would have returned: a datetime stays a datetime (with its
offset), `inf` stays a float, a tuple stays a tuple, a Map stays a dict with its key types. Plain JSON keeps
ints, finite floats, strings, booleans, None and lists; every other value is an object with one `$` tag.
A JSON object in the stream is therefore always a tag, never user data (dicts travel as `$map` pairs).

Python's own `json` writes and reads these bytes on both ends; the browser's JSON goes through server/app.py's
own encoder instead (non-finite floats as strings), never through this one.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import math
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

#: The media type of an Arrow IPC stream, the API's `?format=arrow` answer.
ARROW_STREAM = "application/vnd.apache.arrow.stream"


def _float(value: float) -> Any:
    return value if math.isfinite(value) else {"$float": repr(value)}  # 'inf', '-inf', 'nan'


_ENCODERS: list[tuple[type, Callable[[Any], Any]]] = [
    # datetime before date: a datetime is a date too
    (dt.datetime, lambda value: {"$datetime": value.isoformat()}),
    (dt.date, lambda value: {"$date": value.isoformat()}),
    (Decimal, lambda value: {"$decimal": str(value)}),
    (uuid.UUID, lambda value: {"$uuid": str(value)}),
    (bytes, lambda value: {"$bytes": base64.b64encode(value).decode("ascii")}),
    (ipaddress.IPv4Address, lambda value: {"$ip": str(value)}),
    (ipaddress.IPv6Address, lambda value: {"$ip": str(value)}),
]


def encode_value(value: Any) -> Any:
    """A Python value as JSON-ready data that `decode_value` turns back into an equal value of the same type."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, list):
        return [encode_value(item) for item in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode_value(item) for item in value]}
    if isinstance(value, Mapping):
        return {"$map": [[encode_value(k), encode_value(v)] for k, v in value.items()]}
    for kind, encode in _ENCODERS:
        if isinstance(value, kind):
            return encode(value)
    if hasattr(value, "tolist"):  # a numpy scalar or array in a parameter
        return encode_value(value.tolist())
    raise TypeError(f"cannot send a {type(value).__name__} value through the server API: {value!r}")


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "$float": float,
    "$datetime": dt.datetime.fromisoformat,
    "$date": dt.date.fromisoformat,
    "$decimal": Decimal,
    "$uuid": uuid.UUID,
    "$bytes": base64.b64decode,
    "$ip": ipaddress.ip_address,
    "$tuple": lambda items: tuple(decode_value(item) for item in items),
    "$map": lambda pairs: {decode_value(k): decode_value(v) for k, v in pairs},
}


def decode_value(data: Any) -> Any:
    if isinstance(data, list):
        return [decode_value(item) for item in data]
    if isinstance(data, dict):
        if len(data) != 1:
            raise ValueError(f"server API value: expected one tag such as '$datetime', got keys {sorted(data)}")
        tag, payload = next(iter(data.items()))
        decoder = _DECODERS.get(tag)
        if decoder is None:
            raise ValueError(f"server API value: unknown tag {tag!r} (known: {', '.join(_DECODERS)})")
        return decoder(payload)
    return data


def encode_parameters(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """A query's parameters as the request body carries them."""
    return {str(name): encode_value(value) for name, value in (parameters or {}).items()}


def decode_parameters(data: Any) -> dict[str, Any]:
    """The request body's parameters back to Python values; a malformed body raises ValueError naming it."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"'parameters' must be an object of name: value, got {type(data).__name__}")
    return {str(name): decode_value(value) for name, value in data.items()}


def encode_result(result: Any) -> bytes:
    """A clickhouse-connect QueryResult (column names, ClickHouse type names, rows) as the response body."""
    types = [getattr(kind, "name", str(kind)) for kind in getattr(result, "column_types", ())]
    body = {"columns": list(result.column_names), "types": types,
            "rows": [[encode_value(value) for value in row] for row in result.result_rows]}
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


def decode_result(body: bytes) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    """The response body back to column names, type names and rows (tuples, as clickhouse-connect gives them)."""
    data = json.loads(body)
    return (list(data["columns"]), list(data["types"]),
            [tuple(decode_value(value) for value in row) for row in data["rows"]])


__all__ = ["ARROW_STREAM", "decode_parameters", "decode_result", "decode_value", "encode_parameters",
           "encode_result", "encode_value"]
