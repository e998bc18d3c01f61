"""Hyperparameters: nested dicts flattened to dotted keys, values kept with their type.

Every key and value is checked against what the Avro `Param` record carries (a UTF-8 string key;
null, boolean, long, double or UTF-8 string value) when it is logged, naming the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from runstream.producer.encodable import check_text, shown

ParamValue = bool | int | float | str | None

MAX_KEY_LENGTH = 250


def _typed(key: str, value: Any) -> ParamValue:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        check_text(f"param {key!r}", value)
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:  # beyond an Avro long: kept exactly, as text
            try:
                return str(value)
            except ValueError:  # more digits than Python prints (sys.get_int_max_str_digits)
                raise ValueError(f"param {key!r}: {shown(value)} is too large to record") from None
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else list(value)
        try:
            return json.dumps(items, default=str, sort_keys=True)  # ASCII: lone surrogates come out escaped
        except ValueError as error:  # e.g. an int too long to print
            raise ValueError(f"param {key!r}: {shown(value)} cannot be written as JSON ({error})") from None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _typed(key, value.item())
        except (ValueError, RuntimeError):  # an array of several elements: kept as its text
            pass
    text = str(value)
    check_text(f"param {key!r}", text)
    return text


def flatten_params(params: Mapping[str, Any] | None, prefix: str = "") -> dict[str, ParamValue]:
    """`{"optim": {"lr": 0.1}}` becomes `{"optim.lr": 0.1}`; lists become JSON strings."""
    flat: dict[str, ParamValue] = {}
    if params is None:
        return flat
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping, got {type(params).__name__}")
    for raw_key, value in params.items():
        if not isinstance(raw_key, str):
            raise TypeError(f"param key {raw_key!r}: expected a string, got {type(raw_key).__name__}")
        key = f"{prefix}{raw_key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{key}."))
            continue
        check_key("param", key)
        flat[key] = _typed(key, value)
    return flat


def check_key(kind: str, key: str) -> None:
    """Reject keys that would be unusable in SQL and dashboards, naming the key."""
    if not key:
        raise ValueError(f"{kind} key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"{kind} key {key[:40]!r}...: longer than {MAX_KEY_LENGTH} characters ({len(key)})")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise ValueError(f"{kind} key {key!r}: contains control characters")
    check_text(f"{kind} key", key)


def param_records(flat: Mapping[str, ParamValue]) -> list[dict[str, Any]]:
    """The Avro `Param` records; non-finite floats are kept (Avro doubles carry them)."""
    return [{"key": key, "value": value} for key, value in sorted(flat.items())]

