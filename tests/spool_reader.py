"""Reading the producer's spool back in tests, with plain fastavro: any Avro tool could do the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastavro


def read_spool(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every record of every sealed spool file under `folder`, by event type."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(folder).rglob("*.avro")):
        with open(path, "rb") as handle:
            found.setdefault(path.name.split(".")[0], []).extend(fastavro.reader(handle))  # type: ignore[arg-type]
    return found


def spooled(folder: Path, event_type: str) -> list[dict[str, Any]]:
    """The records of one event type, in file order."""
    return read_spool(folder).get(event_type, [])
