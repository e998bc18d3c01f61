"""The spool format: Avro object container files, `<spool>/<run_id>/<event_type>.<segment>.avro`, and
who may touch one.

The producer's spool sink writes them (as `.avro.open` until a run's files are sealed); `runstream
ingest` loads them into ClickHouse and `runstream sync` uploads them to Kafka. Any Avro tool reads them.

Liveness is a lock, not a pid: a writer holds an exclusive `flock` on each `.avro.open` file for as
long as it has the file open, and the kernel drops it when the process dies however it dies
(SIGKILL, OOM killer), so a reader that gets the lock knows the writer is gone; pid reuse cannot
fool it. (`flock` locks belong to the open file description: the producer makes a forked child drop
its inherited copy, see `producer/sinks.py`.) A dead writer's file is recovered under that same
lock: every complete block is kept, a torn last block (the process died mid-write) is cut at the
end of the last complete block and counted, and the file is renamed to `.avro`. A file that never
got its whole header holds no record and is removed. Two recoverers racing (ingest and sync at
once) cannot both seal one file: the second finds the path gone or renamed once it gets the lock.

Sealed files are claimed the same way while they are uploaded (`claim`), so that two uploaders
never send one file twice.

A live writer's file may be read while it grows (`complete_blocks`, `read_blocks`: `runstream server`
follows the spool so): only complete blocks, the block being written is left for a later read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro

from runstream.schemas.catalogue import EVENT_TYPES

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".avro"
OPEN_SUFFIX = ".avro.open"
#: Header metadata key naming the writer (host and pid), for humans: liveness is the lock, never this.
WRITER_KEY = "runstream.writer"
#: Header metadata key of an outage spool file: the topic prefix its events were meant for. A
#: producer replays a dead writer's file only when it names the producer's own prefix.
TOPIC_PREFIX_KEY = "runstream.topic_prefix"

_MAGIC = b"Obj\x01"
_SYNC_SIZE = 16


def contract_order(paths: list[Path]) -> list[Path]:
    """Spool files by run folder, each run's in contract order (run started first), then by segment."""
    order = {event_type: i for i, event_type in enumerate(EVENT_TYPES)}

    def key(path: Path) -> tuple[str, int, str]:
        event_type = path.name.split(".", 1)[0]
        return (str(path.parent), order.get(event_type, len(order)), path.name)

    return sorted(paths, key=key)


def spool_files(folder: Path) -> list[Path]:
    """Sealed spool files under `folder`, each run's in contract order (run started first)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"spool folder {str(folder)!r} does not exist")
    return contract_order(list(folder.rglob(f"*{SPOOL_SUFFIX}")))


def read_spool_file(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event_type, record) pairs; the event type is the file's name up to the first dot."""
    event_type = path.name.split(".", 1)[0]
    with open(path, "rb") as handle:
        for record in fastavro.reader(handle):
            if not isinstance(record, dict):
                raise ValueError(f"{path}: expected records, found {type(record).__name__}")
            yield event_type, record


def sealed_name(path: Path) -> Path:
    """`x.0000.avro.open` → `x.0000.avro`."""
    if not path.name.endswith(OPEN_SUFFIX):
        raise ValueError(f"spool file {str(path)!r}: expected a name ending in {OPEN_SUFFIX!r}")
    return path.with_name(path.name[: -len(OPEN_SUFFIX)] + SPOOL_SUFFIX)


# -- locks -------------------------------------------------------------------------------------


def try_lock(fd: int) -> bool:
    """Take the exclusive lock on an open file without waiting; False when someone else holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def still_named(fd: int, path: Path) -> bool:
    """The locked file is still the one at `path` (not renamed or removed by whoever held the lock)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def claim(path: Path, *, writable: bool = False) -> Iterator[int | None]:
    """Hold the file's lock for the block: yields its fd, or None when it is gone or someone holds it.

    The lock is released when the block ends (the fd closes), also if the process dies inside it.
    """
    try:
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        if not try_lock(fd) or not still_named(fd, path):
            yield None
            return
        yield fd
    finally:
        os.close(fd)


# -- recovering a dead writer's file -------------------------------------------------------------


@dataclass
class Recovered:
    """What recovering one dead writer's file did."""

    path: Path
    sealed: Path | None  # None: nothing recoverable, the file was removed
    records: int
    blocks: int
    cut_bytes: int
    cut_records: int  # records of a torn block whose count had been written (0 when unknown)
    error: str | None = None  # not a container file: left as it is


@dataclass
class RecoveryReport:
    files: list[Recovered] = field(default_factory=list)
    live: int = 0  # open files whose writer is alive, left alone

    @property
    def recovered(self) -> int:
        """Dead writers' files dealt with (sealed, or removed because they held no record)."""
        return sum(1 for item in self.files if item.error is None)

    @property
    def unreadable(self) -> list[Path]:
        return [item.path for item in self.files if item.error is not None]

    @property
    def sealed(self) -> list[Path]:
        return [item.sealed for item in self.files if item.sealed is not None]

    @property
    def records(self) -> int:
        return sum(item.records for item in self.files)

    @property
    def cut_bytes(self) -> int:
        return sum(item.cut_bytes for item in self.files)

    @property
    def cut_records(self) -> int:
        return sum(item.cut_records for item in self.files)


def _read_long(data: bytes, pos: int) -> tuple[int, int] | None:
    """An Avro zig-zag varint at `pos`: (value, next position), or None when the bytes end first."""
    shift = 0
    accum = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        accum |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (accum >> 1) ^ -(accum & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError(f"varint at byte {pos}: longer than 10 bytes")
    return None


class _Bytes:
    """Reads a file by offset (pread), so that scanning a large segment never loads it whole."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def at(self, pos: int, length: int) -> bytes:
        return os.pread(self.fd, max(0, min(length, self.size - pos)), pos)

    def long(self, pos: int) -> tuple[int, int] | None:
        read = _read_long(self.at(pos, 10), 0)
        return None if read is None else (read[0], pos + read[1])


def _header_end(data: _Bytes, metadata: dict[str, bytes] | None = None) -> tuple[int, bytes] | None:
    """The end of a complete container header and its sync marker, or None if the header is incomplete.

    `metadata`, when given, receives the header's key/value pairs.
    """
    magic = data.at(0, len(_MAGIC))
    if len(magic) < len(_MAGIC):
        return None
    if magic != _MAGIC:
        raise ValueError(f"magic bytes: expected {_MAGIC!r}, got {magic!r}")
    pos = len(_MAGIC)
    while True:  # the metadata map: blocks of (key, value) pairs ending with a zero count
        read = data.long(pos)
        if read is None:
            return None
        count, pos = read
        if count == 0:
            break
        if count < 0:  # a negative count is followed by the block's size in bytes
            read = data.long(pos)
            if read is None:
                return None
            pos = read[1]
            count = -count
        for _ in range(count):  # key and value: each a length-prefixed byte string
            pair = []
            for _part in range(2):
                read = data.long(pos)
                if read is None:
                    return None
                length, pos = read
                if length < 0:
                    raise ValueError(f"header metadata at byte {pos}: negative length {length}")
                if pos + length > data.size:
                    return None
                pair.append(data.at(pos, length))
                pos += length
            if metadata is not None:
                metadata[pair[0].decode("utf-8", "replace")] = pair[1]
    sync = data.at(pos, _SYNC_SIZE)
    if len(sync) < _SYNC_SIZE:
        return None
    return pos + _SYNC_SIZE, sync


def header_metadata(fd: int) -> dict[str, bytes] | None:
    """The container header's metadata, or None when the header is not complete."""
    metadata: dict[str, bytes] = {}
    if _header_end(_Bytes(fd, os.fstat(fd).st_size), metadata) is None:
        return None
    return metadata


def complete_prefix(fd: int) -> tuple[int, int, int, int]:
    """(bytes to keep, records kept, complete blocks, records of a torn last block if known).

    A block is complete when its count, size, data and the header's sync marker after it are all
    there; everything after the last complete block is the torn tail. 0 bytes to keep: no header.
    """
    data = _Bytes(fd, os.fstat(fd).st_size)
    header = _header_end(data)
    if header is None:
        return 0, 0, 0, 0
    return _scan_blocks(data, *header)


def _scan_blocks(data: _Bytes, keep: int, sync: bytes, max_bytes: int | None = None) -> tuple[int, int, int, int]:
    """From the block boundary `keep`: (end of the last complete block, its records, blocks, records of a
    torn next block if known); with `max_bytes`, stops at the first boundary past that many bytes."""
    start = keep
    records = blocks = 0
    while keep < data.size:
        if max_bytes is not None and keep - start >= max_bytes:
            return keep, records, blocks, 0
        read = data.long(keep)
        if read is None:
            return keep, records, blocks, 0
        count, after = read
        read = data.long(after)
        if read is None or count < 0:
            return keep, records, blocks, max(count, 0)
        size, after = read
        end = after + size + _SYNC_SIZE
        if size < 0 or end > data.size or data.at(end - _SYNC_SIZE, _SYNC_SIZE) != sync:
            return keep, records, blocks, count
        records += count
        blocks += 1
        keep = end
    return keep, records, blocks, 0


# -- reading a file that is still being written --------------------------------------------------


@dataclass(frozen=True)
class Blocks:
    """Complete blocks of a container file, bytes [start, end): what a reader may decode now, while the
    writer may still be appending (a live writer's `.avro.open` file)."""

    header: bytes = field(repr=False)  # the file's header (magic, metadata, sync marker): a decoder reads it first
    start: int
    end: int
    records: int
    blocks: int

    @property
    def sync(self) -> bytes:
        """The file's sync marker: random per file, so it tells a file from another of the same name."""
        return self.header[-_SYNC_SIZE:]


def complete_blocks(fd: int, start: int = 0, *, max_bytes: int | None = None) -> Blocks | None:
    """The complete blocks from byte `start` (0: the first block; else where an earlier call's blocks ended);
    None while the header is incomplete (the writer has not flushed yet).

    A block still being written (count, size, data or its sync marker not all there yet) ends the run:
    a later call reads it whole. `max_bytes` bounds one call, so that a large backlog is read in parts.
    """
    data = _Bytes(fd, os.fstat(fd).st_size)
    header = _header_end(data)
    if header is None:
        return None
    header_end, sync = header
    start = max(start, header_end)
    if start > header_end and data.at(start - _SYNC_SIZE, _SYNC_SIZE) != sync:
        raise ValueError(f"byte {start}: not the end of a block (no sync marker before it)")
    end, records, blocks, _torn = _scan_blocks(data, start, sync, max_bytes)
    return Blocks(data.at(0, header_end), start, end, records, blocks)


def read_blocks(fd: int, blocks: Blocks) -> Iterator[dict[str, Any]]:
    """The records of `blocks` (decoded by fastavro from the header and the blocks' bytes)."""
    body = os.pread(fd, blocks.end - blocks.start, blocks.start)
    if len(body) != blocks.end - blocks.start:
        raise ValueError(f"bytes {blocks.start}..{blocks.end}: the file is shorter than the blocks read before")
    for record in fastavro.reader(io.BytesIO(blocks.header + body)):
        if not isinstance(record, dict):
            raise ValueError(f"expected records, found {type(record).__name__}")
        yield record


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Decides from a complete header's metadata whether this recoverer takes the file.
Accept = Callable[[dict[str, bytes]], bool]


def recover_file(path: Path, accept: Accept | None = None) -> Recovered | None:
    """Seal one `.avro.open` file whose writer is dead; None when its writer is alive, it is gone, or
    `accept` declines it (a file whose header is incomplete holds no record and is removed anyway)."""
    with claim(path, writable=True) as fd:
        if fd is None:
            return None
        size = os.fstat(fd).st_size
        try:
            if accept is not None:
                metadata = header_metadata(fd)
                if metadata is not None and not accept(metadata):
                    return None
            keep, records, blocks, cut_records = complete_prefix(fd)
        except ValueError as error:
            # Not a container file we wrote: leave it for a human rather than guess.
            log.error("spool file %s: not a spool file we can recover (%s); left as it is", path, error)
            return Recovered(path, None, 0, 0, 0, 0, error=str(error))
        if keep == 0:
            # Died before the header reached the file: no record was ever written to it.
            os.unlink(path)
            _fsync_folder(path.parent)
            log.warning("spool file %s: writer gone before its header was written; removed (%d bytes)",
                        path, size)
            return Recovered(path, None, 0, 0, size, 0)
        if keep < size:
            os.ftruncate(fd, keep)
        os.fsync(fd)
        final = sealed_name(path)
        os.rename(path, final)  # under the lock: a racing recoverer finds the name gone
        _fsync_folder(path.parent)
    item = Recovered(path, final, records, blocks, size - keep, cut_records)
    if item.cut_bytes:
        log.warning("spool file %s: writer gone; kept %d records in %d blocks, cut a torn last block of "
                    "%d bytes (%d records)", path, records, blocks, item.cut_bytes, cut_records)
    else:
        log.info("spool file %s: writer gone; sealed %d records in %d blocks", path, records, blocks)
    return item


def recover_open_files(folder: Path, accept: Accept | None = None) -> RecoveryReport:
    """Seal every `.avro.open` file under `folder` whose writer is dead (and that `accept` takes);
    live writers' files are left alone. A file that cannot be opened is reported, never a crash."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"spool folder {str(folder)!r} does not exist")
    report = RecoveryReport()
    for path in sorted(folder.rglob(f"*{OPEN_SUFFIX}")):
        try:
            item = recover_file(path, accept)
        except OSError as error:
            log.error("spool file %s: could not recover it (%s); left as it is", path, error)
            report.files.append(Recovered(path, None, 0, 0, 0, 0, error=str(error)))
            continue
        if item is None:
            if path.exists():
                report.live += 1  # or declined by `accept`
            continue
        report.files.append(item)
    return report
