"""Loading a spool folder straight into ClickHouse (`runstream ingest`), without Kafka.

Files that a dead process left open (`*.avro.open` whose writer's lock is free: SIGKILL, OOM
killer, preemption) are recovered first: sealed at their last complete block, the torn tail cut
and counted (`schemas/spool.py`). Files of live writers are never touched. Then every sealed
file is loaded past what `spool_progress` says is stored (consumer/spool_progress.py, the record
`runstream server` keeps too): a file stored to its end is skipped, one stored up to an offset
(the server read it while it grew) is read from there. Files are left in place; loading the same
folder again, or after the server loaded it, stores nothing twice, without FINAL too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream.consumer.batch import Batch, InvalidEvent
from runstream.consumer.clickhouse_sink import ClickHouseSink
from runstream.consumer.spool_progress import FileProgress, ProgressStore, file_key, unread_parts
from runstream.progress import bar
from runstream.schemas.spool import recover_open_files, spool_files

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    files: int = 0  # files read records from
    events: int = 0
    points: int = 0
    rank_points: int = 0  # other ranks' points (log_all_ranks), stored apart from the runs' curves
    rejected: list[str] = field(default_factory=list)
    recovered: int = 0  # files that dead writers left open, sealed before loading
    cut_bytes: int = 0  # torn last blocks cut from them
    cut_records: int = 0  # records in those torn blocks, where the block's count had been written
    live: int = 0  # files of writers still running, left alone
    unreadable: list[Path] = field(default_factory=list)  # files that are not container files
    skipped: int = 0  # sealed files already stored to their end (by an earlier ingest or the server)


def ingest_spool(folder: Path, sink: ClickHouseSink, *, batch_max_points: int = 500_000,
                 progress: bool | None = None, replay: bool = False) -> IngestReport:
    """Recover dead writers' files, then load what every sealed spool file under `folder` holds past the
    stored progress.

    Loading the same files twice stores nothing twice. `replay`: read every file from its start, whatever
    the progress says (a redelivery: rows repeat without FINAL). `progress`: a bar of the files' bytes on
    stderr (None: when stderr is a terminal; see runstream.progress).
    """
    report = IngestReport()
    recovery = recover_open_files(folder)
    report.recovered, report.cut_bytes, report.cut_records = recovery.recovered, recovery.cut_bytes, \
        recovery.cut_records
    report.live, report.unreadable = recovery.live, recovery.unreadable
    loading = _Loading(sink, ProgressStore(sink.client, sink.database, folder), report, batch_max_points)
    stored = {} if replay else loading.store.load()
    files = spool_files(folder)
    sizes = [_size(path) for path in files]
    with bar("ingest", sum(sizes), byte_units=True, show=progress) as loaded:
        for path, size in zip(files, sizes, strict=True):
            key = file_key(folder, path)
            before = stored.get(key)
            if before is not None and before.sealed:
                report.skipped += 1
            else:
                loading.load_file(path, key, before)
            loaded.set_postfix_str(f"{report.files + report.skipped}/{len(files)} files", refresh=False)
            loaded.update(size)
        loading.store_batch()
    return report


@dataclass
class _Loading:
    """The batch being filled and the progress of the files whose records it holds."""

    sink: ClickHouseSink
    store: ProgressStore
    report: IngestReport
    batch_max_points: int
    batch: Batch = field(init=False)
    moved: dict[str, FileProgress] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.batch = new_batch(self.sink)

    def load_file(self, path: Path, key: str, before: FileProgress | None) -> None:
        """Add the sealed file's records past `before`, writing the batch whenever it is full."""
        event_type = path.name.split(".", 1)[0]
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for part in unread_parts(fd, path, before, sealed=True):
                for record in part.records(fd):
                    add_event(self.batch, event_type, record, path, self.report)
                self.moved[key] = part.progress
                if part.blocks is not None and self.batch.points >= self.batch_max_points:
                    self.store_batch()
        except ValueError as error:  # not a container file we can read: left for a human
            log.error("spool file %s: cannot read it (%s); not loaded", path, error)
            self.report.unreadable.append(path)
            return
        finally:
            os.close(fd)
        self.report.files += 1

    def store_batch(self) -> None:
        """Write the batch, then (the write returned) the progress of the files it holds."""
        write_batch(self.sink, self.batch, self.report)
        self.store.save(self.moved)
        self.moved = {}
        self.batch = new_batch(self.sink)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # gone meanwhile: nothing to count
        return 0


def new_batch(sink: ClickHouseSink) -> Batch:
    """A batch with the sink's checks of forked and resumed starts (shared with the server's spool follower)."""
    return Batch(fork_check=getattr(sink, "fork_checks", None), resume_check=getattr(sink, "resume_checks", None))


def add_event(batch: Batch, event_type: str, record: dict[str, Any], where: Path, report: IngestReport) -> None:
    """Add one spooled event; one that breaks the contract is reported and logged, and the load goes on."""
    try:
        batch.add(event_type, record)
    except InvalidEvent as error:
        report.rejected.append(f"{where}: {error}")
        log.error("rejected an event in %s: %s", where, error)


def write_batch(sink: ClickHouseSink, batch: Batch, report: IngestReport, tables: Sequence[str] | None = None) -> None:
    """Write the batch (every table's rows, or `tables`' only: the rest of a write that failed part-way) and
    count it in `report`; returns once every insert was acknowledged."""
    if batch.events:
        if tables is None:
            sink.write(batch)  # the plain call: any sink
        else:
            sink.write(batch, tables)
        report.events += batch.events
        report.points += batch.points
        report.rank_points += batch.rows("rank_metric_points")
