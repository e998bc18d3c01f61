"""How far each spool file is stored, and reading a file past that: the one record of what was loaded from a
spool, shared by `runstream ingest` (consumer/ingest.py) and the server's spool follower (server/spool_follower.py).

After the sink's write returned, a loader saves one row per file whose records the write held: the folder that
holds the file, the file's name without its suffix (`metric_steps.0000` for `.avro.open` and `.avro` alike: a
file read while its writer lives goes on from the same offset once sealed), its sync marker, the byte offset
just past the last complete block stored, the records before that offset, and whether the sealed file is stored
to its end. Both loaders read the rows back before they load, so a folder ingested, followed by the server, or
both, in any order and any number of times, stores each record once, without FINAL too. A file stored up to an
offset is read from there; a file whose sync marker (random per file) differs from the stored one is another
file under an old name, and is read from its start.

Rows are keyed by the file's absolute folder, not by the folder a loader was given, so that a spool loaded
whole and one of its run folders loaded alone (`runstream ingest SPOOL/RUN`) share one record.

What cannot be exact: a loader killed between a write's acknowledgement and the progress insert (milliseconds)
reads that write's files again, and their rows repeat without FINAL (every table is a ReplacingMergeTree:
FINAL stays exact). Two loaders running at once on one database (possible with a ClickHouse server, never
with the embedded one, which admits one process) may both load a file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runstream.consumer.table_spec import EVERY_NODE, Table
from runstream.schemas.spool import OPEN_SUFFIX, SPOOL_SUFFIX, Blocks, complete_blocks, read_blocks

log = logging.getLogger(__name__)

#: The table (migration 10). Small: one row per spool file, rewritten as the file grows; a cluster keeps it
#: whole on every node. `sync` is the marker in hex; `version` orders a file's rows (the latest wins).
SPOOL_PROGRESS = Table(
    "spool_progress",
    (
        "folder String",  # the absolute folder that holds the file (a run's folder in a spool)
        "file String",  # the file's name without `.avro` / `.avro.open`
        "sync String",
        "offset UInt64",
        "records UInt64",
        "sealed Bool",
        "version UInt64",
    ),
    "ReplacingMergeTree",
    "(folder, file)",
    version="version",
    sharding=EVERY_NODE,
)
_COLUMNS = list(SPOOL_PROGRESS.column_names)

#: The bytes of one file read at once: a large backlog is loaded in parts, each with its progress.
READ_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class FileProgress:
    """How far one spool file is stored: bytes [0, offset) hold `records` records, all stored."""

    sync: bytes
    offset: int
    records: int
    sealed: bool = False  # its sealed file is stored to the end: nothing more will come


def file_key(folder: Path, path: Path) -> str:
    """The file's key under `folder`: its path relative to it, without the suffix (`RUN/metric_steps.0000`)."""
    name = path.relative_to(folder).as_posix()
    return name[: -len(OPEN_SUFFIX)] if name.endswith(OPEN_SUFFIX) else name.removesuffix(SPOOL_SUFFIX)


class ProgressStore:
    """The `spool_progress` rows of the files under one folder, keyed as `file_key` keys them."""

    def __init__(self, client: Any, database: str, folder: Path) -> None:
        self.client = client
        self.database = database
        self.folder = Path(folder).resolve()
        self._version = 0

    def load(self) -> dict[str, FileProgress]:
        """The stored progress of every file under the folder (whichever folder the loader that stored it was
        given)."""
        root = self.folder.as_posix()
        rows = self.client.query(
            f"SELECT folder, file, sync, offset, records, sealed FROM {self.database}.{SPOOL_PROGRESS.name} "  # noqa: S608
            "FINAL WHERE folder = {root:String} OR startsWith(folder, {under:String})",
            parameters={"root": root, "under": root.rstrip("/") + "/"}).result_rows
        return {file_key(self.folder, Path(str(folder)) / str(name)):
                FileProgress(bytes.fromhex(str(sync)), int(offset), int(records), bool(sealed))
                for folder, name, sync, offset, records, sealed in rows}

    def save(self, progress: Mapping[str, FileProgress]) -> None:
        """Store the files' progress; call it only once the write of their records returned."""
        if not progress:
            return
        # Later rows win (ReplacingMergeTree by version); kept increasing within the process if the clock steps.
        self._version = max(time.time_ns(), self._version + 1)
        rows = []
        for key, item in progress.items():
            path = self.folder / key
            rows.append([path.parent.as_posix(), path.name, item.sync.hex(), item.offset, item.records,
                         item.sealed, self._version])
        self.client.insert(f"{self.database}.{SPOOL_PROGRESS.name}", rows, column_names=_COLUMNS)


@dataclass(frozen=True)
class Part:
    """Complete blocks of a file past its stored progress, and the file's progress once they are stored."""

    blocks: Blocks | None  # None: no records, only the news that the sealed file is stored to its end
    progress: FileProgress

    def records(self, fd: int) -> Iterator[dict[str, Any]]:
        """The part's records, decoded from the file open as `fd`."""
        if self.blocks is not None:
            yield from read_blocks(fd, self.blocks)


def unread_parts(fd: int, path: Path, before: FileProgress | None, *, sealed: bool,
                 max_bytes: int = READ_BYTES) -> Iterator[Part]:
    """The complete blocks of the file open as `fd` (named `path`) past `before`, `max_bytes` at a time.

    A block still being written ends the parts (a later call reads it whole). For a sealed file a last part
    says it is stored to its end. The caller adds each part's records to its batch before taking the next
    part, and saves a part's progress only once the write holding its records returned. ValueError: not a
    container file, or not the file `before` describes.
    """
    size = os.fstat(fd).st_size
    if before is not None and before.offset == size:  # nothing new (the common case of an idle live file)
        if sealed and not before.sealed:
            yield Part(None, replace(before, sealed=True))
        return
    header = complete_blocks(fd, 0, max_bytes=0)
    if header is None:  # the writer has not flushed its header yet
        return
    if before is not None and before.sync != header.sync:
        log.warning("spool file %s: another file than the one stored under its name (sync marker changed); "
                    "loading it from its start", path)
        before = None
    offset, records = (before.offset, before.records) if before is not None else (header.start, 0)
    while True:
        blocks = complete_blocks(fd, offset, max_bytes=max_bytes)
        if blocks is None or not blocks.blocks:
            break
        offset, records = blocks.end, records + blocks.records
        yield Part(blocks, FileProgress(header.sync, offset, records))
    if sealed:
        if offset < size:
            log.error("spool file %s: %d bytes after its last complete block are not a block; not loaded",
                      path, size - offset)
        yield Part(None, FileProgress(header.sync, offset, records, sealed=True))
