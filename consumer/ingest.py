"""Loading a spool folder straight into ClickHouse (`runstream ingest`), without Kafka.

Files that a dead process left open (`*.avro.open` whose writer's lock is free: SIGKILL, OOM
killer, preemption) are recovered first: sealed at their last complete block, the torn tail cut
and counted (`schemas/spool.py`). Files of live writers are never touched. Then every sealed
file is loaded. Files are left in place: loading the same folder again stores nothing twice,
because every table is a ReplacingMergeTree keyed on what identifies a fact and every shipped
query reads with FINAL (rows repeat without FINAL until a merge collapses them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream.consumer.batch import Batch, InvalidEvent
from runstream.consumer.clickhouse_sink import ClickHouseSink
from runstream.progress import bar
from runstream.schemas.spool import read_spool_file, recover_open_files, spool_files

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    files: int = 0
    events: int = 0
    points: int = 0
    rank_points: int = 0  # other ranks' points (log_all_ranks), stored apart from the runs' curves
    rejected: list[str] = field(default_factory=list)
    recovered: int = 0  # files that dead writers left open, sealed before loading
    cut_bytes: int = 0  # torn last blocks cut from them
    cut_records: int = 0  # records in those torn blocks, where the block's count had been written
    live: int = 0  # files of writers still running, left alone
    unreadable: list[Path] = field(default_factory=list)  # open files that are not container files


def ingest_spool(folder: Path, sink: ClickHouseSink, *, batch_max_points: int = 500_000,
                 progress: bool | None = None) -> IngestReport:
    """Recover dead writers' files, then load every sealed spool file under `folder`.

    Loading the same files twice stores nothing twice (read with FINAL). `progress`: a bar of the
    files' bytes on stderr (None: when stderr is a terminal; see runstream.progress).
    """
    report = IngestReport()
    recovery = recover_open_files(folder)
    report.recovered, report.cut_bytes, report.cut_records = recovery.recovered, recovery.cut_bytes, \
        recovery.cut_records
    report.live, report.unreadable = recovery.live, recovery.unreadable
    batch = new_batch(sink)
    files = spool_files(folder)
    sizes = [_size(path) for path in files]
    with bar("ingest", sum(sizes), byte_units=True, show=progress) as loaded:
        for path, size in zip(files, sizes, strict=True):
            report.files += 1
            for event_type, record in read_spool_file(path):
                add_event(batch, event_type, record, path, report)
                if batch.points >= batch_max_points:
                    write_batch(sink, batch, report)
                    batch = new_batch(sink)
            loaded.set_postfix_str(f"{report.files}/{len(files)} files", refresh=False)
            loaded.update(size)
        write_batch(sink, batch, report)
    return report


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
