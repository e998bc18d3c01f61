"""Renders query results for a terminal (aligned table), a spreadsheet (CSV) or a program (JSON).

One encoding of values per format, used by every command that prints rows (runs, compare, best,
importance, reproduce, query, cost, drift):

- table: numbers rounded for display (4 significant decimals); the table says so in a footer line.
- CSV: exact. Floats as their shortest round-trip text (`repr`), so `float(cell)` gives back the
  very value logged (5e-324, -0.0, 1e308 included); NaN and infinities as `nan`, `inf`, `-inf`
  (which `float()` reads); bools as `true`/`false`; ints as ints; None (nothing logged, or a param
  logged as None) as an empty field; lists and maps as strict JSON text.
- JSON: strict RFC 8259 (`json.dumps(..., allow_nan=False)`): numbers exact; NaN and infinities,
  which JSON has no numbers for, as the strings "NaN", "Infinity" and "-Infinity"; None as null.
  `json_value` and `dumps_json` are the only JSON encoders commands use, so every command (and
  `reproduce --config-out`) writes the same representation.
"""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Any

FORMATS = ("table", "csv", "json")
JSON_NAN = "NaN"
JSON_INFINITY = "Infinity"
JSON_NEG_INFINITY = "-Infinity"
ROUNDED_NOTE = "numbers rounded for display; use --format csv or json for exact values"


def _float_text(value: float) -> str:
    """The shortest text that `float()` reads back as exactly `value`; nan/inf/-inf for the others."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _as_float(value: Any) -> float | None:
    """numpy scalars and Decimals that are floats in disguise, as floats (None for anything else)."""
    if isinstance(value, float):
        return value
    if isinstance(value, Decimal):
        return None
    type_name = type(value).__name__
    if type_name.startswith("float") and hasattr(value, "item"):  # numpy.float32/64
        return float(value)
    return None


def _scalar(value: Any) -> Any:
    """The plain Python value behind what drivers return (numpy scalars, Decimal, UUID, IP addresses,
    bytes): every format encodes plain values only, so each type is dispatched here once."""
    number = _as_float(value)
    if number is not None:
        return number
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return int(value) if value.is_finite() and value == value.to_integral_value() else str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, uuid.UUID | IPv4Address | IPv6Address):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, list | tuple | dict):
        return _scalar(value.item())  # numpy ints and bools
    return value


def _rounded(number: float) -> str:
    """A number for reading: 4 decimals, or 4 significant digits when very small or large."""
    if math.isnan(number) or math.isinf(number):
        return _float_text(number)
    if number != 0 and (abs(number) < 1e-3 or abs(number) >= 1e6):
        return f"{number:.4g}"
    text = f"{number:.4f}".rstrip("0").rstrip(".")
    return "-0" if text == "-0" and math.copysign(1.0, number) < 0 else text


def _text(value: Any, number_text: Callable[[float], str]) -> str:
    """A table or CSV cell; the two differ only in how a float is written."""
    value = _scalar(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple | dict):
        return dumps_json(value, indent=None)
    return str(value)


def _display(value: Any) -> str:
    """A table cell: numbers rounded for reading, never for storing."""
    return _text(value, _rounded)


def csv_cell(value: Any) -> str:
    """A CSV field that parses back (csv + float()/int()) to exactly `value`; see the module docstring."""
    return _text(value, _float_text)


def json_value(value: Any) -> Any:
    """`value` made of what strict JSON holds: NaN/±Inf as "NaN"/"Infinity"/"-Infinity", times as ISO text."""
    value = _scalar(value)
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return JSON_NAN
        if math.isinf(value):
            return JSON_INFINITY if value > 0 else JSON_NEG_INFINITY
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_value(v) for v in value]
    return str(value)


def dumps_json(value: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict RFC 8259 JSON of `value` (allow_nan=False cannot fail: json_value replaced NaN/±Inf)."""
    return json.dumps(json_value(value), indent=indent, sort_keys=sort_keys, allow_nan=False)


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        return dumps_json([dict(zip(columns, row, strict=True)) for row in rows])
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_cell(v) for v in row])
        return buffer.getvalue().rstrip("\n")
    cells = [[_display(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows) and bool(rows)
               for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    if any(_as_float(v) is not None and _display(v) != _float_text(float(v)) for row in rows for v in row):
        out.append(f"({ROUNDED_NOTE})")
    return "\n".join(out)
