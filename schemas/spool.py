"""The spool format: Avro object container files, `<spool>/<run_id>/<event_type>.<segment>.avro`.

The producer's spool sink writes them (as `.avro.open` until a run's files are sealed); `runstream
ingest` loads them into ClickHouse and `runstream sync` uploads them to Kafka. Any Avro tool reads them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro

from runstream.schemas.catalogue import EVENT_TYPES

SPOOL_SUFFIX = ".avro"
OPEN_SUFFIX = ".avro.open"


def spool_files(folder: Path) -> list[Path]:
    """Sealed spool files under `folder`, each run's in contract order (run started first)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"spool folder {str(folder)!r} does not exist")
    order = {event_type: i for i, event_type in enumerate(EVENT_TYPES)}

    def key(path: Path) -> tuple[str, int, str]:
        event_type = path.name.split(".", 1)[0]
        return (str(path.parent), order.get(event_type, len(order)), path.name)

    return sorted(folder.rglob(f"*{SPOOL_SUFFIX}"), key=key)


def read_spool_file(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event_type, record) pairs; the event type is the file's name up to the first dot."""
    event_type = path.name.split(".", 1)[0]
    with open(path, "rb") as handle:
        for record in fastavro.reader(handle):
            if not isinstance(record, dict):
                raise ValueError(f"{path}: expected records, found {type(record).__name__}")
            yield event_type, record
