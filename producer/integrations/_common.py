"""What the framework integrations share: turning a framework's log dict into metric values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def numeric_entries(logs: Mapping[str, Any] | None) -> dict[str, float]:
    """The numeric entries of a log dict: Python numbers, and numpy/torch/jax scalars (via `.item()`).

    Frameworks mix strings and arrays into their logs; those are left out rather than rejected,
    since the training loop must never fail on what it logs.
    """
    found: dict[str, float] = {}
    for key, value in (logs or {}).items():
        if isinstance(value, bool):
            found[str(key)] = float(value)
        elif isinstance(value, int | float):
            found[str(key)] = value
        elif callable(getattr(value, "item", None)):
            try:
                scalar = value.item()
            except (TypeError, ValueError, RuntimeError):  # arrays of more than one element
                continue
            if isinstance(scalar, int | float) and not isinstance(scalar, bool):
                found[str(key)] = scalar
    return found
