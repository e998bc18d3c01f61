"""What the Avro contract can carry, checked where the SDK accepts a value rather than where it encodes it.

The worker encodes events long after `log()` returned; a value it cannot encode there would
surface as an exception with no key and no caller. So every SDK call checks its input against
the contract (schemas/avro/*.avsc) up front and raises a `ValueError`/`TypeError` naming the field
and the value:

- strings must be encodable as UTF-8 (a lone surrogate such as "\\ud800" is not);
- `long` fields hold -2**63 .. 2**63-1, `int` fields -2**31 .. 2**31-1;
- a `double` holds a Python int only within float range (`10**400` overflows).

Events the SDK builds itself (metadata read from the machine) are repaired instead of refused:
`scrub` replaces what UTF-8 cannot carry, since the training job did nothing wrong.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import fastavro.validation

from runstream.schemas import bundled_catalogue

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
#: The largest int a double holds without overflow (float(2**1024) raises OverflowError).
FLOAT_INT_LIMIT = int(sys.float_info.max)


def shown(value: Any, limit: int = 60) -> str:
    """A value for an error message: its repr, cut short (a huge int or string stays readable)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        try:
            digits = str(value)
        except ValueError:  # more digits than Python prints
            return f"an integer of {value.bit_length()} bits"
        return f"{digits[:12]}...({len(digits.lstrip('-'))} digits)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def check_text(field: str, value: str) -> None:
    """Refuse a string that UTF-8 cannot encode, naming the field."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{field}: {shown(value)} is not valid UTF-8 ({error.reason} at position {error.start})"
        ) from None


def check_step(step: int) -> None:
    """A step is an Avro long and never negative."""
    if not 0 <= step <= LONG_MAX:
        if step < 0:
            raise ValueError(f"step: expected a non-negative integer, got {step}")
        raise ValueError(f"step: expected at most 2**63-1 (an Avro long), got {shown(step)}")


def check_tree(field: str, value: Any) -> None:
    """Walk mappings and sequences: every string UTF-8, every int within float range."""
    if isinstance(value, str):
        check_text(field, value)
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        return
    elif isinstance(value, int):
        if abs(value) > FLOAT_INT_LIMIT:
            raise ValueError(f"{field}: {shown(value)} is beyond the range of any Avro number")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                check_text(f"{field} key", key)
            check_tree(f"{field}[{key!r}]", item)
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            check_tree(f"{field}[{position}]", item)


def check_event(event_type: str, record: Mapping[str, Any]) -> None:
    """Refuse a record the contract cannot carry, naming the field (for events off the hot path).

    fastavro's validation checks types, int/long ranges, unions and required fields; the walk
    before it adds what fastavro accepts but cannot encode (lone surrogates, ints beyond doubles).
    """
    check_tree(event_type, record)
    schema = bundled_catalogue().latest(event_type).parsed
    try:
        fastavro.validation.validate(record, schema, raise_errors=True)
    except fastavro.validation.ValidationError as error:
        reasons = "; ".join(str(reason) for reason in error.errors) if error.errors else str(error)
        raise ValueError(f"{event_type}: cannot be encoded: {reasons[:500]}") from None


def scrub(value: Any) -> Any:
    """Strings made valid UTF-8 (lone surrogates replaced), in nested mappings and lists too."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape" if _escaped(value) else "replace").decode(
                "utf-8", "replace"
            )
    if isinstance(value, Mapping):
        return {scrub(key): scrub(item) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item) for item in value]
    return value


def _escaped(value: str) -> bool:
    """True when every surrogate is one `surrogateescape` made from an undecodable byte (sys.argv, paths)."""
    return all(0xDC80 <= ord(ch) <= 0xDCFF for ch in value if 0xD800 <= ord(ch) <= 0xDFFF)
