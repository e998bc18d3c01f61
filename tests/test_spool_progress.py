"""One record of what was loaded from a spool (`spool_progress`), shared by `runstream ingest` and the server's
spool follower: whichever loads first, and however often, every point logged is stored once, WITHOUT FINAL too.

Runs are logged by the real SDK to a spool folder (in this process: its writer holds the open files' locks,
so they are a live writer's files to both loaders) and loaded into chDB by `ingest_spool` and `SpoolFollower`.
Expected counts and sums come from what was logged (`loss` = step, `acc` = step % 7: sums exact in floats).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.consumer.migrations import MIGRATIONS
from runstream.consumer.spool_progress import SPOOL_PROGRESS, FileProgress, ProgressStore, file_key, unread_parts
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings
from runstream.schemas.spool import OPEN_SUFFIX, SPOOL_SUFFIX, read_spool_file
from runstream.server.spool_follower import SpoolFollower

pytestmark = pytest.mark.integration


def start_run(spool: Path, name: str) -> Run:
    return Run(project="progress", name=name,
               settings=ProducerSettings(spool=spool, sample_interval_s=0, heartbeat_interval_s=0))


def log_steps(run: Run, steps: range) -> None:
    """Log the steps, flushing every 50 (a block each, at least): the files grow by several blocks."""
    for step in steps:
        run.log({"loss": float(step), "acc": float(step % 7)}, step=step)
        if step % 50 == 49:
            assert run.flush(timeout=30) == 0
    assert run.flush(timeout=30) == 0


def logged_run(spool: Path, name: str, steps: int) -> Run:
    """A finished run: its files sealed."""
    run = start_run(spool, name)
    log_steps(run, range(steps))
    run.finish()
    return run


def logged(steps: int) -> dict[str, tuple[int, float]]:
    return {"loss": (steps, float(sum(range(steps)))), "acc": (steps, float(sum(step % 7 for step in range(steps))))}


def stored(sink: ClickHouseSink, run: Run, *, final: bool) -> dict[str, tuple[int, float]]:
    """metric -> (rows, sum of values) of the run, with or without FINAL."""
    rows = sink.client.query(
        f"SELECT metric, count(), sum(value) FROM {sink.database}.metric_points {'FINAL' if final else ''} "  # noqa: S608
        "WHERE run_id = {run:String} GROUP BY metric", parameters={"run": run.run_id}).result_rows
    return {str(metric): (int(count), float(total)) for metric, count, total in rows}


def assert_stored_once(sink: ClickHouseSink, run: Run, steps: int) -> None:
    assert stored(sink, run, final=False) == logged(steps), "without FINAL: no point stored twice"
    assert stored(sink, run, final=True) == logged(steps)
    for table in ("runs", "run_finishes"):
        count = sink.client.query(f"SELECT count() FROM {sink.database}.{table} "  # noqa: S608
                                  "WHERE run_id = {run:String}", parameters={"run": run.run_id}).result_rows[0][0]
        assert count == 1, table


def sealed_files(spool: Path) -> list[Path]:
    return sorted(spool.rglob(f"*{SPOOL_SUFFIX}"))


@pytest.fixture
def sink(clickhouse_dsn: str) -> ClickHouseSink:
    return ClickHouseSink(clickhouse_dsn)


def test_the_table_comes_from_migration_10_and_ingest_twice_stores_nothing_twice(
        tmp_path: Path, sink: ClickHouseSink) -> None:
    client, db = sink.client, sink.database
    [(name,)] = client.query(f"SELECT name FROM {db}.schema_migrations FINAL WHERE version = 10").result_rows  # noqa: S608
    assert name == next(m.name for m in MIGRATIONS if m.version == 10)
    columns = [name for (name,) in client.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'spool_progress' ORDER BY position",
        parameters={"db": db}).result_rows]
    assert columns == list(SPOOL_PROGRESS.column_names)
    spool = tmp_path / "spool"
    runs = [logged_run(spool, "a", 120), logged_run(spool, "b", 80)]
    files = sealed_files(spool)
    first = ingest_spool(spool, sink)
    assert (first.files, first.skipped, first.points) == (len(files), 0, 2 * (120 + 80))
    second = ingest_spool(spool, sink)
    assert (second.files, second.skipped, second.events, second.points) == (0, len(files), 0, 0)
    assert_stored_once(sink, runs[0], 120)
    assert_stored_once(sink, runs[1], 80)
    # every file recorded as stored to its end, with the records it holds
    progress = ProgressStore(client, db, spool).load()
    assert sorted(progress) == sorted(file_key(spool, path) for path in files)
    for path in files:
        item = progress[file_key(spool, path)]
        assert item.sealed and item.offset == path.stat().st_size
        assert item.records == sum(1 for _ in read_spool_file(path))
    # a replay (what ingest did before the record): rows repeat without FINAL, FINAL stays exact
    replayed = ingest_spool(spool, sink, replay=True)
    assert (replayed.files, replayed.points) == (len(files), 2 * (120 + 80))
    assert stored(sink, runs[0], final=False) == {m: (2 * n, 2 * s) for m, (n, s) in logged(120).items()}
    assert stored(sink, runs[0], final=True) == logged(120)


def test_ingest_then_the_follower(tmp_path: Path, sink: ClickHouseSink) -> None:
    spool = tmp_path / "spool"
    early = logged_run(spool, "early", 150)
    assert ingest_spool(spool, sink).points == 300
    follower = SpoolFollower(spool, sink)
    assert (follower.poll_once().events, follower.totals.files) == (0, 0), "the ingested files are not read again"
    late = logged_run(spool, "late", 60)  # a run the server sees first
    assert follower.poll_once().points == 120
    assert follower.poll_once().events == 0
    assert_stored_once(sink, early, 150)
    assert_stored_once(sink, late, 60)
    again = ingest_spool(spool, sink)
    assert (again.events, again.skipped) == (0, len(sealed_files(spool)))


def test_the_follower_reads_a_live_file_then_ingest_reads_on_from_its_offset(
        tmp_path: Path, sink: ClickHouseSink) -> None:
    spool = tmp_path / "spool"
    run = start_run(spool, "live")
    log_steps(run, range(100))
    follower = SpoolFollower(spool, sink)
    report = follower.poll_once()
    assert (report.points, report.live_files) == (200, 2), "run_started and metric_steps, both open"
    log_steps(run, range(100, 250))
    run.finish()  # sealed, renamed: the server stopped before it saw the rest
    ingested = ingest_spool(spool, sink)
    assert ingested.points == 300, "only the blocks past the follower's offset"
    assert_stored_once(sink, run, 250)
    metric_file = next(path for path in sealed_files(spool) if path.name.startswith("metric_steps."))
    progress = ProgressStore(sink.client, sink.database, spool).load()[file_key(spool, metric_file)]
    records = sum(1 for _ in read_spool_file(metric_file))
    assert (progress.offset, progress.records, progress.sealed) == (metric_file.stat().st_size, records, True)
    # and back: a follower started now finds everything stored
    assert SpoolFollower(spool, sink).poll_once().events == 0
    assert_stored_once(sink, run, 250)


def test_ingest_leaves_a_live_writers_files_to_the_follower(tmp_path: Path, sink: ClickHouseSink) -> None:
    spool = tmp_path / "spool"
    done = logged_run(spool, "done", 40)
    live = start_run(spool, "running")
    log_steps(live, range(90))
    open_files = sorted(spool.rglob(f"*{OPEN_SUFFIX}"))
    report = ingest_spool(spool, sink)
    assert (report.live, report.points) == (len(open_files), 80), "the live run's open files left alone"
    assert stored(sink, live, final=False) == {}
    assert sorted(spool.rglob(f"*{OPEN_SUFFIX}")) == open_files
    follower = SpoolFollower(spool, sink)
    polled = follower.poll_once()
    assert (polled.points, polled.live_files) == (180, len(open_files)), "only the live run, read while open"
    log_steps(live, range(90, 130))
    live.finish()
    assert follower.poll_once().points == 80
    assert ingest_spool(spool, sink).events == 0
    assert_stored_once(sink, done, 40)
    assert_stored_once(sink, live, 130)


def test_a_run_folder_ingested_alone_shares_the_record_with_its_spool(tmp_path: Path, sink: ClickHouseSink) -> None:
    spool = tmp_path / "spool"
    one, two = logged_run(spool, "one", 30), logged_run(spool, "two", 20)
    alone = ingest_spool(spool / one.run_id, sink)  # `runstream ingest SPOOL/RUN`
    assert alone.points == 60
    whole = ingest_spool(spool, sink)
    assert (whole.points, whole.skipped) == (40, len(list((spool / one.run_id).glob(f"*{SPOOL_SUFFIX}"))))
    assert SpoolFollower(spool, sink).poll_once().events == 0
    assert_stored_once(sink, one, 30)
    assert_stored_once(sink, two, 20)


def test_another_file_under_a_stored_name_is_read_from_its_start(tmp_path: Path) -> None:
    """The sync marker tells files apart: a file stored up to an offset, then replaced by another of the same
    name (a spool folder restored, a name reused), is read whole, not from the old offset."""
    spool = tmp_path / "spool"
    first, second = logged_run(spool, "first", 300), logged_run(spool, "second", 10)
    path = next((spool / first.run_id).glob("metric_steps.*"))
    other = next((spool / second.run_id).glob("metric_steps.*"))

    def parts(before: FileProgress | None) -> list[tuple[int, FileProgress]]:
        with path.open("rb") as handle:
            fd = handle.fileno()
            return [(sum(1 for _ in part.records(fd)), part.progress)
                    for part in unread_parts(fd, path, before, sealed=True, max_bytes=1)]

    records = sum(1 for _ in read_spool_file(path))
    whole = parts(None)
    assert len(whole) > 3, "one block a part (the file grew by several), and the sealed mark"
    assert sum(count for count, _ in whole) == records
    assert whole[-1] == (0, FileProgress(whole[-2][1].sync, path.stat().st_size, records, sealed=True))
    halfway = whole[len(whole) // 2][1]
    assert 0 < halfway.records < records
    assert sum(count for count, _ in parts(halfway)) == records - halfway.records, "read on from the offset"
    shutil.copyfile(other, path)
    others = sum(1 for _ in read_spool_file(path))
    replaced = parts(halfway)
    assert sum(count for count, _ in replaced) == others, "another file: read from its start"
    assert replaced[-1][1].sync != halfway.sync and replaced[-1][1].records == others
