"""What ClickHouse accepts in each column the consumer writes, checked before the insert.

A value that Avro allows but the column cannot hold (a `gpu_index` of 70000 or -1 for a `UInt16`,
a negative byte count for a `UInt64`, NaN for an integer, a time outside `DateTime64`'s range)
would fail the whole batch's insert, or worse be stored wrapped or unreadable. Checking each
event here lets the consumer dead-letter that one event and write the rest.

The limits come from one place, the column types of the DDL in `migrations.py`: its `Table`
specs, and for a table that has none, the columns of its CREATE TABLE statement. Type names
(`UInt16`, `Nullable(UInt64)`, `LowCardinality(String)`, `Array(Float64)`, `Map(String, String)`,
`Tuple(name String, ...)`, `Enum8('a' = 1)`, `DateTime64(6, 'UTC')`, `FixedString(16)`) are parsed
into checks once, at import; a type without a check is an error naming the column, so that a new
column type cannot slip through unchecked. The same place gives each table's monthly partition
column, which the sink uses to keep an insert within ClickHouse's partition limit.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np

from runstream.consumer.migrations import TABLES

#: (reason, why): the reason is the dead-letter reason and metric label, `why` says what is wrong.
Problem = tuple[str, str]

OUT_OF_RANGE = "out_of_range"
NOT_AN_INTEGER = "not_an_integer"
WRONG_TYPE = "wrong_type"
NULL_NOT_ALLOWED = "null_not_allowed"
UNKNOWN_ENUM_VALUE = "unknown_enum_value"
TOO_LONG = "too_long"
BAD_STRING = "bad_string"

_INT_BITS = {f"{sign}Int{bits}": (sign == "", bits) for sign in ("", "U") for bits in (8, 16, 32, 64, 128, 256)}
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: DateTime64's documented range, 1900-01-01 00:00:00 to 2299-12-31 23:59:59.(9), in seconds.
_DATETIME64_FIRST_S = -2_208_988_800
_DATETIME64_END_S = 10_413_792_000
_INT_TYPES = (int, np.integer)
_IINFO: dict[np.dtype[Any], np.iinfo[Any]] = {}


def _integer_bounds(name: str) -> tuple[int, int]:
    signed, bits = _INT_BITS[name]
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


class Check:
    """Checks values for one ClickHouse type; `value` for one, `values` and `array` for a column."""

    type_name = ""

    def value(self, value: Any) -> Problem | None:
        raise NotImplementedError

    def values(self, values: Sequence[Any]) -> tuple[int, Problem] | None:
        """The first offending position and its problem, or None. Subclasses add a fast path for the
        common case (everything fine) and fall back to this scan to say where."""
        for position, value in enumerate(values):
            problem = self.value(value)
            if problem is not None:
                return position, problem
        return None

    def array(self, array: np.ndarray[Any, Any]) -> tuple[int, Problem] | None:
        return self.values(array.tolist())

    def first_flagged(self, array: np.ndarray[Any, Any], bad: np.ndarray[Any, Any]) -> tuple[int, Problem] | None:
        """The first position a vectorised test flagged, with `value`'s words for it (None when none was)."""
        if not bad.any():
            return None
        position = int(np.argmax(bad))
        problem = self.value(array[position].item())
        assert problem is not None
        return position, problem


class IntegerCheck(Check):
    def __init__(self, type_name: str) -> None:
        self.type_name = type_name
        self.low, self.high = _integer_bounds(type_name)

    def _fits_dtype(self, dtype: np.dtype[Any]) -> bool:
        """Whether every value of an integer dtype fits (an int64 array in an Int64 column: nothing to do)."""
        info = _IINFO.get(dtype)
        if info is None:
            info = _IINFO.setdefault(dtype, np.iinfo(dtype))
        return self.low <= info.min and info.max <= self.high

    def value(self, value: Any) -> Problem | None:
        if isinstance(value, _INT_TYPES):  # bool is an int: True/False store as 1/0
            if self.low <= value <= self.high:
                return None
            return OUT_OF_RANGE, f"{value} is outside {self.type_name}'s range {self.low}..{self.high}"
        if isinstance(value, float | np.floating):
            if not math.isfinite(value) or not float(value).is_integer():
                return NOT_AN_INTEGER, f"{value!r} is not an integer"
            return self.value(int(value))
        return WRONG_TYPE, f"expected an integer, got {type(value).__name__}"

    def values(self, values: Sequence[Any]) -> tuple[int, Problem] | None:
        if values and set(map(type, values)) <= {int} and self.low <= min(values) and max(values) <= self.high:
            return None
        return super().values(values)

    def array(self, array: np.ndarray[Any, Any]) -> tuple[int, Problem] | None:
        if array.size == 0:
            return None
        if array.dtype.kind in "iu":
            if self._fits_dtype(array.dtype):
                return None
            if self.low <= array.min() and array.max() <= self.high:
                return None
            bad = (array < self.low) | (array > self.high)
        elif array.dtype.kind == "f":
            bad = ~np.isfinite(array) | (array != np.floor(array)) | (array < self.low) | (array > self.high)
        else:
            return super().array(array)
        return self.first_flagged(array, bad)


class FloatCheck(Check):
    def __init__(self, type_name: str) -> None:
        self.type_name = type_name
        # Any finite Python float fits a Float64; an int may not (10**400), nor a float a Float32.
        self.limit = FLOAT32_MAX if type_name == "Float32" else sys.float_info.max

    def value(self, value: Any) -> Problem | None:
        if isinstance(value, bool) or not isinstance(value, float | int | np.floating | np.integer):
            return WRONG_TYPE, f"expected a number, got {type(value).__name__}"
        if isinstance(value, int | np.integer):
            too_big = abs(int(value)) > self.limit  # exact: Python compares an int with a float by value
        else:
            too_big = self.limit < abs(float(value)) < math.inf  # NaN and infinities are stored as they are
        if too_big:
            return OUT_OF_RANGE, f"{value!r:.40} is outside {self.type_name}'s range (|x| <= {self.limit:g})"
        return None

    def values(self, values: Sequence[Any]) -> tuple[int, Problem] | None:
        if set(map(type, values)) <= {float}:  # NaN and infinities fail the bound here: the scan decides
            if self.limit != FLOAT32_MAX or all(map(self.limit.__ge__, map(abs, values))):
                return None
        return super().values(values)

    def array(self, array: np.ndarray[Any, Any]) -> tuple[int, Problem] | None:
        if array.dtype.kind not in "fiu":
            return super().array(array)
        if self.limit != FLOAT32_MAX or array.size == 0 or array.dtype == np.float32:
            return None  # a float64 or int64 array always fits a Float64
        magnitude = np.abs(array.astype(np.float64, copy=False))
        bad = (magnitude > self.limit) & np.isfinite(magnitude)
        return self.first_flagged(array, bad)


class DateTimeCheck(IntegerCheck):
    """DateTime64(P) as integer ticks of 10^-P s since the epoch (what the batch holds), or datetimes."""

    def __init__(self, type_name: str, low: int, high: int, span: str) -> None:
        self.type_name = type_name
        self.low, self.high = low, high
        self.span = span

    def value(self, value: Any) -> Problem | None:
        if isinstance(value, datetime | date):
            return None
        problem = super().value(value)
        if problem is not None and problem[0] == OUT_OF_RANGE:
            return OUT_OF_RANGE, f"{value} is outside {self.type_name}'s range {self.span} ({self.low}..{self.high})"
        return problem


class BoolCheck(Check):
    type_name = "Bool"

    def value(self, value: Any) -> Problem | None:
        if isinstance(value, bool | np.bool_) or (isinstance(value, int) and value in (0, 1)):
            return None
        return WRONG_TYPE, f"expected a boolean, got {value!r}"


class StringCheck(Check):
    """String (any size) or FixedString(N) (at most N bytes); text must be encodable as UTF-8."""

    def __init__(self, type_name: str, size: int | None = None) -> None:
        self.type_name = type_name
        self.size = size

    def value(self, value: Any) -> Problem | None:
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, str):
            if self.size is None and value.isascii():
                return None
            try:
                data = value.encode("utf-8")
            except UnicodeEncodeError as error:
                return BAD_STRING, f"text is not valid UTF-8 ({error.reason} at position {error.start})"
        else:
            return WRONG_TYPE, f"expected a string, got {type(value).__name__}"
        if self.size is not None and len(data) > self.size:
            return TOO_LONG, f"{len(data)} bytes do not fit {self.type_name}"
        return None

    def values(self, values: Sequence[Any]) -> tuple[int, Problem] | None:
        if self.size is None and set(map(type, values)) <= {str} and all(map(str.isascii, values)):
            return None
        return super().values(values)


class EnumCheck(Check):
    def __init__(self, type_name: str, members: dict[str, int]) -> None:
        self.type_name = type_name
        self.names = frozenset(members)
        self.codes = frozenset(members.values())

    def value(self, value: Any) -> Problem | None:
        if isinstance(value, str) and value in self.names:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value in self.codes:
            return None
        return UNKNOWN_ENUM_VALUE, f"{value!r} is not one of {sorted(self.names)}"


class AnyCheck(Check):
    """UUID, Decimal and the like: ClickHouse parses them; nothing cheap to check beforehand."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def value(self, value: Any) -> Problem | None:
        return None

    def values(self, values: Sequence[Any]) -> tuple[int, Problem] | None:
        return None


class NullableCheck(Check):
    def __init__(self, inner: Check) -> None:
        self.inner = inner
        self.type_name = f"Nullable({inner.type_name})"

    def value(self, value: Any) -> Problem | None:
        return None if value is None else self.inner.value(value)

    def values(self, values: Sequence[Any]) -> tuple[int, Problem] | None:
        present = [value for value in values if value is not None] if None in values else values
        if self.inner.values(present) is None:
            return None
        return super().values(values)

    def array(self, array: np.ndarray[Any, Any]) -> tuple[int, Problem] | None:
        return self.inner.array(array) if array.dtype.kind in "biuf" else super().array(array)


class NotNull(Check):
    """Every non-Nullable type: None has no place in it."""

    def __init__(self, inner: Check) -> None:
        self.inner = inner
        self.type_name = inner.type_name

    def value(self, value: Any) -> Problem | None:
        if value is None:
            return NULL_NOT_ALLOWED, f"null in a non-Nullable {self.type_name} column"
        return self.inner.value(value)

    def values(self, values: Sequence[Any]) -> tuple[int, Problem] | None:
        found = self.inner.values(values)  # an inner check reports None as a wrong type: say it plainly
        if found is not None and values[found[0]] is None:
            return found[0], (NULL_NOT_ALLOWED, f"null in a non-Nullable {self.type_name} column")
        return found

    def array(self, array: np.ndarray[Any, Any]) -> tuple[int, Problem] | None:
        return self.inner.array(array) if array.dtype.kind in "biuf" else self.values(array.tolist())


class ArrayCheck(Check):
    def __init__(self, inner: Check) -> None:
        self.inner = inner
        self.type_name = f"Array({inner.type_name})"

    def value(self, value: Any) -> Problem | None:
        if isinstance(value, np.ndarray):
            found = self.inner.array(value)
        elif isinstance(value, list | tuple):
            found = self.inner.values(value)
        else:
            return WRONG_TYPE, f"expected an array, got {type(value).__name__}"
        if found is None:
            return None
        position, (reason, why) = found
        return reason, f"element {position}: {why}"


class MapCheck(Check):
    def __init__(self, key: Check, value: Check) -> None:
        self.key, self.item = key, value
        self.type_name = f"Map({key.type_name}, {value.type_name})"

    def value(self, value: Any) -> Problem | None:
        if not isinstance(value, dict):
            return WRONG_TYPE, f"expected a map, got {type(value).__name__}"
        keys = list(value)
        found = self.key.values(keys)
        if found is not None:
            return found[1][0], f"key {keys[found[0]]!r}: {found[1][1]}"
        items = list(value.values())
        found = self.item.values(items)
        if found is not None:
            return found[1][0], f"value of key {keys[found[0]]!r}: {found[1][1]}"
        return None


class TupleCheck(Check):
    def __init__(self, elements: list[tuple[str, Check]]) -> None:
        self.elements = elements
        self.type_name = "Tuple(" + ", ".join(f"{name} {check.type_name}".strip() for name, check in elements) + ")"

    def value(self, value: Any) -> Problem | None:
        if isinstance(value, dict):
            value = tuple(value.get(name) for name, _ in self.elements)
        if not isinstance(value, tuple | list) or len(value) != len(self.elements):
            return WRONG_TYPE, f"expected a tuple of {len(self.elements)}, got {value!r:.80}"
        for index, ((name, check), item) in enumerate(zip(self.elements, value, strict=True)):
            problem = check.value(item)
            if problem is not None:
                return problem[0], f"element {name or index}: {problem[1]}"
        return None


# -- parsing type names ------------------------------------------------------------------------

_IDENT = re.compile(r"\s*`?([A-Za-z_][A-Za-z0-9_]*)`?")
_ENUM_MEMBER = re.compile(r"^'((?:[^'\\]|\\.|'')*)'\s*=\s*(-?\d+)$")
_NAMED_ELEMENT = re.compile(r"^`?([A-Za-z_][A-Za-z0-9_]*)`?\s+([A-Za-z].*)$", re.DOTALL)


def _balanced(text: str, start: int) -> int:
    """The index just past the parenthesis closing the one at `start` (quotes respected)."""
    depth, quote, index = 0, "", start
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "'`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    raise ValueError(f"unbalanced parentheses in {text!r}")


def split_top_level(text: str) -> list[str]:
    """`text` split at the commas outside parentheses and quotes."""
    parts, depth, quote, current = [], 0, "", []
    index = 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\" and index + 1 < len(text):
                current.append(char)
                index += 1
                char = text[index]
            elif char == quote:
                quote = ""
        elif char in "'`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            index += 1
            continue
        current.append(char)
        index += 1
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def type_prefix(text: str) -> tuple[str, str]:
    """The leading type expression of `text` (name plus its parenthesised arguments) and the rest."""
    match = _IDENT.match(text)
    if match is None:
        raise ValueError(f"no type name at the start of {text!r}")
    end = match.end()
    rest = text[end:]
    if rest.lstrip().startswith("("):
        open_at = end + len(rest) - len(rest.lstrip())
        end = _balanced(text, open_at)
    return text[: end].strip(), text[end:].strip()


def parse_type(type_text: str, *, where: str = "") -> Check:
    """A check for one ClickHouse type name; ValueError naming `where` for a type without a check."""
    text, rest = type_prefix(type_text)
    if rest:
        raise ValueError(f"{where or 'type'}: unexpected {rest!r} after the type {text!r}")
    name = text[: text.index("(")].strip() if "(" in text else text
    args = split_top_level(text[text.index("(") + 1 : -1]) if "(" in text else []
    if name == "Nullable":
        inner = parse_type(args[0], where=where)
        return NullableCheck(inner.inner if isinstance(inner, NotNull) else inner)
    if name == "LowCardinality":
        return parse_type(args[0], where=where)
    check = _plain(name, args, where)
    # Arrays, maps and tuples refuse None themselves; every other non-Nullable type gets NotNull.
    return check if isinstance(check, ArrayCheck | MapCheck | TupleCheck) else NotNull(check)


def _plain(name: str, args: list[str], where: str) -> Check:
    """The check of a type other than Nullable(...) and LowCardinality(...), None aside."""
    if name in _INT_BITS:
        return IntegerCheck(name)
    if name in ("Float32", "Float64"):
        return FloatCheck(name)
    if name == "Bool":
        return BoolCheck()
    if name == "String":
        return StringCheck(name)
    if name == "FixedString":
        return StringCheck(f"FixedString({args[0]})", int(args[0]))
    if name == "DateTime64":
        scale = 10 ** int(args[0])
        return DateTimeCheck(f"DateTime64({', '.join(args)})", _DATETIME64_FIRST_S * scale,
                             _DATETIME64_END_S * scale - 1, "1900-01-01..2299-12-31")
    if name == "DateTime":
        return DateTimeCheck("DateTime", 0, (1 << 32) - 1, "1970-01-01..2106-02-07")
    if name == "Date":
        return DateTimeCheck(name, 0, (1 << 16) - 1, "1970-01-01..2149-06-06")
    if name == "Date32":
        return DateTimeCheck(name, -25_567, 120_529, "1900-01-01..2299-12-31")
    if name in ("Enum8", "Enum16"):
        members: dict[str, int] = {}
        for member in args:
            match = _ENUM_MEMBER.match(member)
            if match is None:
                raise ValueError(f"{where}: cannot read the {name} member {member!r}")
            members[match.group(1)] = int(match.group(2))
        return EnumCheck(f"{name}(...)", members)
    if name == "Array":
        return ArrayCheck(parse_type(args[0], where=where))
    if name == "Map":
        return MapCheck(parse_type(args[0], where=where), parse_type(args[1], where=where))
    if name == "Tuple":
        elements: list[tuple[str, Check]] = []
        for element in args:
            named = _NAMED_ELEMENT.match(element)
            if named is not None and not element.lstrip().startswith(named.group(2)):
                elements.append((named.group(1), parse_type(named.group(2), where=where)))
            else:
                elements.append(("", parse_type(element, where=where)))
        return TupleCheck(elements)
    if name in ("UUID", "IPv4", "IPv6", "Decimal", "Decimal32", "Decimal64", "Decimal128", "Decimal256"):
        return AnyCheck(name)
    raise ValueError(f"{where}: ClickHouse type {name!r} has no check in column_checks.py; add one")


# -- the tables --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableDefinition:
    """A table's column definitions as declared in the DDL, and its PARTITION BY expression."""

    name: str
    columns: tuple[str, ...]
    partition_by: str | None


_MONTH_KEY = re.compile(r"^toYYYYMM\(\s*`?(\w+)`?\s*\)$")


def table_definitions() -> dict[str, TableDefinition]:
    """Every table of the migrations, from its `Table` spec (the one definition of its columns)."""
    return {table.name: TableDefinition(table.name, table.columns, table.partition_by) for table in TABLES}


def column_type(definition: str) -> tuple[str, str]:
    """(name, type) of one column definition such as "step Int64 CODEC(DoubleDelta, LZ4)"."""
    match = _IDENT.match(definition)
    if match is None:
        raise ValueError(f"cannot read the column definition {definition!r}")
    type_text, _rest = type_prefix(definition[match.end() :])
    return match.group(1), type_text


def month_partition_column(definition: TableDefinition) -> str | None:
    """The column whose month partitions the table (`PARTITION BY toYYYYMM(col)`), or None."""
    if definition.partition_by is None:
        return None
    match = _MONTH_KEY.match(definition.partition_by)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Violation:
    """One value that its column cannot hold."""

    table: str
    column: str
    type_name: str
    value: Any
    reason: str
    why: str

    def __str__(self) -> str:
        shown = repr(self.value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return f"column {self.table}.{self.column} ({self.type_name}) cannot hold {shown}: {self.why}"


class TableChecks:
    """The checks of one table's columns, by column name."""

    def __init__(self, table: str, checks: dict[str, Check], declared: dict[str, str]) -> None:
        self.table = table
        self.checks = checks
        self.declared = declared  # the type as the DDL spells it, for messages

    def rows(self, columns: dict[str, list[Any]], start: int) -> Violation | None:
        """The first violation in the rows from `start` on (what the last event appended), or None."""
        for name, check in self.checks.items():
            values = columns[name]
            tail = values[start:] if start else values
            found = check.values(tail)
            if found is not None:
                position, (reason, why) = found
                return Violation(self.table, name, self.declared[name], tail[position], reason, why)
        return None

    def column(self, column: str, values: Sequence[Any]) -> Violation | None:
        """The first violation among `values` of one column, or None."""
        check = self.checks[column]
        found = check.values(values)
        if found is None:
            return None
        position, (reason, why) = found
        return Violation(self.table, column, self.declared[column], values[position], reason, why)

    def array(self, column: str, array: np.ndarray[Any, Any]) -> Violation | None:
        """The first violation in a whole column held as a numpy array (metric points), vectorised."""
        check = self.checks[column]
        found = check.array(array)
        if found is None:
            return None
        position, (reason, why) = found
        return Violation(self.table, column, self.declared[column], array[position].item(), reason, why)

    def value(self, column: str, value: Any) -> Violation | None:
        check = self.checks[column]
        problem = check.value(value)
        return None if problem is None else Violation(self.table, column, self.declared[column], value, *problem)


def build_checks(tables: Mapping[str, Sequence[str]]) -> dict[str, TableChecks]:
    """Checks for the named columns of each table, from the DDL's types; ValueError for a column the DDL lacks."""
    definitions = table_definitions()
    result: dict[str, TableChecks] = {}
    for table, names in tables.items():
        if table not in definitions:
            raise ValueError(f"table {table!r}: no CREATE TABLE in consumer/migrations.py")
        types = dict(column_type(column) for column in definitions[table].columns)
        checks: dict[str, Check] = {}
        for name in names:
            if name not in types:
                raise ValueError(f"column {table}.{name}: not declared in consumer/migrations.py")
            checks[name] = parse_type(types[name], where=f"column {table}.{name}")
        result[table] = TableChecks(table, checks, {name: types[name] for name in names})
    return result


def partition_columns(tables: Iterable[str]) -> dict[str, str]:
    """Table -> the column whose month is its partition, for the tables partitioned by month."""
    definitions = table_definitions()
    found = {}
    for table in tables:
        column = month_partition_column(definitions[table]) if table in definitions else None
        if column is not None:
            found[table] = column
    return found

