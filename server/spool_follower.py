"""Loading a spool folder continuously, inside `runstream server`: new files, growing files, and the open
files of live writers, each record stored once.

`runstream ingest` loads sealed files after the fact; a live run's files stay `.avro.open` until it ends
(producer/sinks.py). The SDK's worker writes a complete Avro block to its open files and fsyncs every
`flush_interval_s` (0.2 s by default), so the follower reads those blocks as they land: per file it keeps
the byte offset and record count it has stored, reads from there only complete blocks (a block being
written stops the read; it is read whole on a later poll: `schemas/spool.py` `complete_blocks`), and goes
on from the same offset when the writer renames the file to its sealed name. Files of dead writers are
recovered first, as `ingest` does (sealed at their last complete block, `schemas/spool.py`
`recover_file`); the offset stays valid since only a torn tail past it is cut.

Progress is durable: after the sink's write returned, the offsets of the files it covered are written to
`spool_progress` in the same database (consumer/spool_progress.py: the record `runstream ingest` keeps too,
and the per-file reading past it). A follower started again (the server restarted), or started on a folder
that `runstream ingest` loaded, reads them back and stores nothing twice; a file whose sync marker differs
is another file under an old name and is read from its start. A write that fails part-way is retried from
the first table it did not finish (the sink's `completed`), so no rows repeat. What cannot be exact: the
server killed between a write's acknowledgement and the progress insert (milliseconds) re-reads that batch,
whose rows then repeat without FINAL (every table is a ReplacingMergeTree; FINAL stays exact).

A run's other files wait until something of its open `run_started` file was stored, so that points do not
overtake the run's start (their project would be unknown). A sealed file loaded to its end is not looked
at again; a folder is listed again only when its modification time changed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from runstream.consumer.batch import TABLE_COLUMNS, Batch
from runstream.consumer.clickhouse_sink import ClickHouseSink
from runstream.consumer.ingest import IngestReport, add_event, new_batch, write_batch
from runstream.consumer.retry import RetryPolicy, ShutdownRequested, is_retryable, retry
from runstream.consumer.spool_progress import FileProgress, ProgressStore, file_key, unread_parts
from runstream.schemas.spool import OPEN_SUFFIX, SPOOL_SUFFIX, contract_order, recover_file

log = logging.getLogger(__name__)

#: Write a batch once it holds this many points (as `runstream ingest`).
BATCH_MAX_POINTS = 500_000
#: A folder's listing is reused while its modification time stays older than this: file systems stamp
#: times at a coarse tick, so a change in the same tick as the listing could hide behind an equal time.
LISTING_SETTLED_S = 1.0
#: Failed polls are retried without a limit (the server keeps serving), backing off up to MAX_BACKOFF_S.
MAX_BACKOFF_S = 5.0


@dataclass
class FollowReport(IngestReport):
    """What one poll (or, in `SpoolFollower.totals`, every poll) loaded. `files`: files it read records from."""

    live_files: int = 0  # open files of live writers it read records from


@dataclass
class _Unsaved:
    """A batch read and not yet stored with its progress (a write or a progress insert failed): retried first."""

    batch: Batch
    progress: dict[str, FileProgress]
    run_ids: set[str]
    tables_done: set[str] = field(default_factory=set)
    written: bool = False


@dataclass
class _Listing:
    mtime_ns: int
    listed_at_ns: int
    folders: list[Path]
    files: list[tuple[Path, str]]  # (path, progress key)


class SpoolFollower:
    """Loads `folder` into `sink` as it grows: `poll_once()` once, or `run(stop)` in a thread of its own."""

    def __init__(self, folder: Path, sink: ClickHouseSink, *, poll_s: float = 0.25,
                 batch_max_points: int = BATCH_MAX_POINTS) -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s: expected a positive number of seconds, got {poll_s!r}")
        self.folder = Path(folder).resolve()
        self.sink = sink
        self.poll_s = poll_s
        self.batch_max_points = batch_max_points
        self.progress = ProgressStore(sink.client, sink.database, self.folder)
        #: Stored progress per file (its path under the folder without the suffix), read back at start.
        self.stored: dict[str, FileProgress] = self.progress.load()
        #: Everything loaded since start (the server's /api/health shows it), and polls that failed.
        self.totals = FollowReport()
        self.polls = 0
        self.failed_polls = 0
        self._listings: dict[Path, _Listing] = {}
        self._unsaved: _Unsaved | None = None
        self._pending = _Unsaved(new_batch(sink), {}, set())  # the batch the current poll is filling
        self._unreadable: set[str] = set()

    # -- the loop ------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set, waiting `poll_s` on it between polls; a failed poll is logged and tried
        again (backing off to MAX_BACKOFF_S), never the end of the thread. A last poll loads what is there."""
        policy = RetryPolicy(attempts=None, deadline_s=None, initial_backoff_s=self.poll_s,
                             max_backoff_s=max(MAX_BACKOFF_S, self.poll_s))
        while not stop.is_set():
            try:
                retry(self.poll_once, policy=policy, stop=stop, what=f"loading the spool folder {self.folder}",
                      retryable=lambda _error: True, on_failure=self._failed)
            except ShutdownRequested:
                break
            stop.wait(self.poll_s)
        try:
            self.poll_once()
        except Exception as error:
            self._failed(error)

    def _failed(self, error: BaseException) -> None:
        self.failed_polls += 1
        if not is_retryable(error):  # not an outage: say where, once per failure
            log.error("spool follower: a poll of %s failed", self.folder, exc_info=error)

    def counts(self) -> dict[str, int]:
        """Loader figures for the server's health answer (`file_reads`: a file read from in one poll counts once
        per poll; `live_file_reads`: those of open files of live writers)."""
        totals = self.totals
        return {"polls": self.polls, "failed_polls": self.failed_polls, "file_reads": totals.files,
                "live_file_reads": totals.live_files, "events": totals.events, "points": totals.points,
                "rank_points": totals.rank_points, "rejected": len(totals.rejected), "recovered": totals.recovered}

    # -- one poll ------------------------------------------------------------------------------------

    def poll_once(self) -> FollowReport:
        """Store what the folder holds beyond the stored progress; returns what this poll loaded."""
        report = FollowReport()
        if self._unsaved is not None:
            self._store(self._unsaved, report)
        if self.folder.is_dir():
            self._pending = _Unsaved(new_batch(self.sink), {}, set())
            for _run_folder, files in self._runs():
                for path in files:
                    if not self._load_file(path, report):
                        break  # the run's start is not stored yet: its other files wait for the next poll
            self._store(self._pending, report)
        self.polls += 1
        self._add_to_totals(report)
        return report

    def _store(self, unsaved: _Unsaved, report: FollowReport) -> None:
        """Write the batch, then its progress; what fails stays in `_unsaved` and is retried from where it failed."""
        self._unsaved = unsaved
        if not unsaved.written:
            remaining = [table for table in TABLE_COLUMNS if table not in unsaved.tables_done]
            try:
                if unsaved.tables_done:  # a retry: only the tables the failed write did not finish
                    write_batch(self.sink, unsaved.batch, report, remaining)
                    if not remaining and unsaved.run_ids:  # every insert was done; the summaries were not
                        self.sink.refresh_summaries(unsaved.run_ids)
                else:
                    write_batch(self.sink, unsaved.batch, report)
            except Exception:
                unsaved.tables_done.update(getattr(self.sink, "completed", ()))
                raise
            unsaved.written = True
        self.progress.save(unsaved.progress)
        self.stored.update(unsaved.progress)
        self._unsaved = None

    def _store_if_full(self, report: FollowReport) -> None:
        if self._pending.batch.points >= self.batch_max_points:
            self._store(self._pending, report)
            self._pending = _Unsaved(new_batch(self.sink), {}, set())

    def _add_to_totals(self, report: FollowReport) -> None:
        totals = self.totals
        for name in ("files", "events", "points", "rank_points", "recovered", "cut_bytes", "cut_records",
                     "live_files"):
            setattr(totals, name, getattr(totals, name) + getattr(report, name))
        totals.rejected.extend(report.rejected)
        totals.unreadable.extend(report.unreadable)
        totals.live = report.live

    # -- listing -------------------------------------------------------------------------------------

    def _runs(self) -> list[tuple[Path, list[Path]]]:
        """(folder, its spool files in contract order) for every folder under the spool folder that holds some."""
        runs = []
        folders = [self.folder]
        while folders:
            folder = folders.pop()
            listing = self._list(folder)
            if listing is None:
                continue
            folders.extend(listing.folders)
            files = [path for path, key in listing.files if not self._done(key)]
            if files:
                runs.append((folder, contract_order(files)))
        return sorted(runs)

    def _list(self, folder: Path) -> _Listing | None:
        try:
            mtime_ns = os.stat(folder).st_mtime_ns
        except OSError:  # removed meanwhile
            self._listings.pop(folder, None)
            return None
        listing = self._listings.get(folder)
        if listing is not None and listing.mtime_ns == mtime_ns \
                and listing.listed_at_ns - mtime_ns > LISTING_SETTLED_S * 1e9:
            return listing
        listed_at = time.time_ns()
        folders, files = [], []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(Path(entry.path))
                    elif entry.name.endswith((SPOOL_SUFFIX, OPEN_SUFFIX)):
                        path = Path(entry.path)
                        files.append((path, self._key(path)))
        except OSError:
            return None
        listing = self._listings[folder] = _Listing(mtime_ns, listed_at, folders, files)
        return listing

    def _key(self, path: Path) -> str:
        return file_key(self.folder, path)

    def _done(self, key: str) -> bool:
        stored = self.stored.get(key)
        return (stored is not None and stored.sealed) or key in self._unreadable

    # -- one file ------------------------------------------------------------------------------------

    def _progress_of(self, key: str) -> FileProgress | None:
        """The file's progress: read in this poll (maybe not stored yet), else stored."""
        return self._pending.progress.get(key) or self.stored.get(key)

    def _load_file(self, path: Path, report: FollowReport) -> bool:
        """Add the file's complete blocks past its progress to the pending batch; False when it is a run's
        open `run_started` file of which nothing is stored yet (the run's other files must wait)."""
        key = self._key(path)
        is_open = path.name.endswith(OPEN_SUFFIX)
        if is_open:
            recovered = recover_file(path)  # None: its writer lives (or the file is gone)
            if recovered is None:
                report.live += 1
            else:
                report.recovered += 1
                report.cut_bytes += recovered.cut_bytes
                report.cut_records += recovered.cut_records
                if recovered.sealed is None:  # no header (removed), or not a container file
                    if recovered.error is not None:
                        report.unreadable.append(path)
                        self._unreadable.add(key)
                    return True
                path, is_open = recovered.sealed, False
        waits_for_start = is_open and path.name.startswith("run_started.")
        before = self._progress_of(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # sealed (renamed) or recovered by someone else meanwhile: next poll
            return not (waits_for_start and before is None)
        try:
            self._read(fd, path, key, before, is_open, report)
        except ValueError as error:  # not a container file we can read: left for a human
            log.error("spool file %s: cannot read it (%s); not loaded", path, error)
            report.unreadable.append(path)
            self._unreadable.add(key)
            return True
        finally:
            os.close(fd)
        after = self._progress_of(key)
        if after is not None and (before is None or after.records > before.records):
            report.files += 1
            report.live_files += is_open
        return not (waits_for_start and (after is None or after.records == 0))

    def _read(self, fd: int, path: Path, key: str, before: FileProgress | None, is_open: bool,
              report: FollowReport) -> None:
        """Add the file's new complete blocks to the pending batch, a part at a time, recording its progress
        with each part (a full batch is stored between parts)."""
        event_type = path.name.split(".", 1)[0]
        for part in unread_parts(fd, path, before, sealed=not is_open):
            pending = self._pending
            if part.blocks is not None:
                for record in part.records(fd):
                    add_event(pending.batch, event_type, record, path, report)
                pending.run_ids.add(path.parent.name)
            pending.progress[key] = part.progress
            self._store_if_full(report)
