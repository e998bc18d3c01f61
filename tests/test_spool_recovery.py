"""A training process killed with SIGKILL: every point it had flushed is recovered, once.

Real processes, real signals: each child logs through the SDK, flushes, says so on stdout and is
killed -9 by the test. `runstream ingest` / `runstream sync` (and the SDK's own replay) then seal
the files the dead writer left open and load them; files of a live writer are never touched.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fault_table import FaultRow, FaultTable

from runstream.consumer import ClickHouseSink, ConsumerService, ConsumerSettings, ingest_spool
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings
from runstream.producer.sinks import KafkaSink, SpoolSink
from runstream.producer.sync import sync_spool
from runstream.schemas.spool import OPEN_SUFFIX, SPOOL_SUFFIX, recover_file, recover_open_files

pytestmark = pytest.mark.integration

STEPS = 3_000
#: Every spooled point of a child: loss = step, acc = step / 1000, for steps 0..STEPS-1.
LOSS_SUM = float(sum(range(STEPS)))

TRAIN_FLUSH_AND_WAIT = """
import os, sys, time
from pathlib import Path
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings

kafka = sys.argv[2] or None
settings = ProducerSettings(kafka=kafka, spool=Path(sys.argv[1]), topic_prefix=sys.argv[3], sample_interval_s=0,
                            delivery_timeout_s=2.0, flush_interval_s=3600)
run = Run(project="sigkill", name="victim", settings=settings)
steps, every, fork = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "fork"
for step in range(steps):
    run.log({"loss": float(step), "acc": step / 1000}, step=step)
    if (step + 1) % every == 0:
        remaining = run.flush(timeout=30)
        assert remaining == 0, remaining
if fork:
    child = os.fork()
    if child == 0:  # a DataLoader-like worker that outlives its parent
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        time.sleep(600)
        os._exit(0)
    print(f"forked {child}", flush=True)
print(f"flushed {steps}", flush=True)
time.sleep(600)
"""


class Child:
    """A training process that logs, flushes, says so, and waits to be killed."""

    def __init__(self, spool: Path, *, kafka: str = "", topic_prefix: str = "sigkill.", steps: int = STEPS,
                 flush_every: int = STEPS, fork: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
        self.process = subprocess.Popen(
            [sys.executable, "-c", TRAIN_FLUSH_AND_WAIT, str(spool), kafka, topic_prefix, str(steps),
             str(flush_every), "fork" if fork else "-"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.forked: int | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_lines, daemon=True).start()

    def _read_lines(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, word: str, timeout: float = 90.0) -> str:
        """The first stdout line starting with `word`, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith("forked "):
                self.forked = int(line.split()[1])
            if line.startswith(word):
                return line
        self.kill_forked()
        self.kill()
        assert self.process.stderr is not None
        raise AssertionError(f"the child never printed {word!r} (exit {self.process.returncode}):\n"
                             f"{self.process.stderr.read()}")

    def kill(self) -> None:
        """SIGKILL: nothing in the process gets to clean up."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def kill_forked(self) -> None:
        if self.forked is not None:
            try:
                os.kill(self.forked, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill_forked()
        child.kill()
        for pipe in (child.process.stdout, child.process.stderr):
            if pipe is not None:
                pipe.close()


def runstream_cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "runstream.cli", *args], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, f"runstream {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done


def query_json(dsn: str, sql: str) -> list[dict[str, Any]]:
    rows = json.loads(runstream_cli("query", sql, "--format", "json", "--clickhouse", dsn).stdout)
    assert isinstance(rows, list)
    return rows


def open_files(spool: Path) -> list[Path]:
    return sorted(spool.rglob(f"*{OPEN_SUFFIX}"))


def points_in(client: Any, db: str, final: bool) -> tuple[int, float, int]:
    """(points, sum of loss, distinct steps of loss) as stored, with or without FINAL."""
    row = client.query(
        f"SELECT count(), sumIf(value, metric = 'loss'), uniqExactIf(step, metric = 'loss') "
        f"FROM {db}.metric_points {'FINAL' if final else ''}"
    ).result_rows[0]
    return int(row[0]), float(row[1]), int(row[2])


@pytest.mark.fault
def test_offline_run_killed_after_flush_is_ingested_whole_and_once(
    tmp_path: Path, children: list[Child], fault_table: FaultTable
) -> None:
    spool = tmp_path / "spool"
    child = Child(spool)
    children.append(child)
    child.wait_for("flushed")
    child.kill()
    killed_at = time.monotonic()
    assert open_files(spool), "the killed writer left its files open"
    assert not list(spool.rglob(f"*{SPOOL_SUFFIX}")), "nothing was sealed: the process died before finishing"

    dsn = f"chdb://{tmp_path / 'ch'}"
    first = runstream_cli("ingest", str(spool), "--clickhouse", dsn)
    recovered_s = time.monotonic() - killed_at
    assert f"{2 * STEPS} metric points" in first.stdout, first.stdout
    assert "recovered " in first.stdout and "(0 torn bytes cut" in first.stdout, first.stdout
    assert not open_files(spool), "every dead writer's file was sealed"
    sql = ("SELECT count() AS n, sumIf(value, metric = 'loss') AS loss, sumIf(value, metric = 'acc') AS acc, "
           "uniqExact(metric, step) AS keys FROM metric_points {}")
    expected = {"n": 2 * STEPS, "loss": LOSS_SUM, "acc": pytest.approx(LOSS_SUM / 1000), "keys": 2 * STEPS}
    assert query_json(dsn, sql.format("FINAL")) == [expected]
    assert query_json(dsn, sql.format("")) == [expected], "and without FINAL: no row twice"
    assert query_json(dsn, "SELECT count() AS n FROM runs FINAL") == [{"n": 1}]
    fault_table.record(FaultRow("training process killed -9 after flush (offline), then `runstream ingest`",
                                2 * STEPS, 2 * STEPS, 2 * STEPS, recovered_s))

    second = runstream_cli("ingest", str(spool), "--clickhouse", dsn)
    assert "recovered 0 files" in second.stdout, second.stdout
    assert query_json(dsn, sql.format("FINAL")) == [expected], "ingesting again stores nothing twice"
    # Without FINAL the second load's rows stay until a merge collapses them (ReplacingMergeTree).
    [again] = query_json(dsn, sql.format(""))
    assert again["n"] in (2 * STEPS, 4 * STEPS) and again["keys"] == 2 * STEPS


@pytest.mark.fault
def test_run_killed_during_a_broker_outage_is_synced_whole_and_once(
    tmp_path: Path, children: list[Child], kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str,
    fault_table: FaultTable,
) -> None:
    with socket.socket() as probe:  # a port nothing listens on: the broker is away
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    spool = tmp_path / "spool"
    child = Child(spool, kafka=closed, topic_prefix=topic_prefix, flush_every=1_000)
    children.append(child)
    child.wait_for("flushed", timeout=150)
    child.kill()
    killed_at = time.monotonic()
    assert open_files(spool), "the undeliverable events were spooled, and the files left open"

    report = sync_spool(spool, kafka_bootstrap, topic_prefix, timeout=60)
    synced_s = time.monotonic() - killed_at
    assert report.recovered >= 2 and report.cut_bytes == 0 and not report.left, report
    assert not list(spool.rglob("*.avro*")), "every recovered file was uploaded and removed"
    again = sync_spool(spool, kafka_bootstrap, topic_prefix, timeout=60)
    assert (again.files, again.recovered) == (0, 0), "a second sync finds nothing left to send"

    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn,
                                               topic_prefix=topic_prefix, batch_max_wait_s=0.2))
    db = service.sink.database
    stop = threading.Event()
    timer = threading.Timer(90, stop.set)
    timer.start()
    try:
        # the points and the run_started event (a topic of its own: it may land in another batch)
        service.run(stop, stop_when=lambda stats: stats.points >= 2 * STEPS and service.sink.rows_written["runs"] >= 1)
    finally:
        timer.cancel()
    client = service.sink.client
    stored = {final: points_in(client, db, final)[0] for final in (True, False)}
    fault_table.record(FaultRow("training process killed -9 during a broker outage, then `runstream sync`",
                                2 * STEPS, stored[True], stored[False], synced_s))
    for final in (True, False):
        assert points_in(client, db, final) == (2 * STEPS, LOSS_SUM, STEPS), f"FINAL={final}"
    assert client.query(f"SELECT count() FROM {db}.runs").result_rows[0][0] == 1


def _blocks(path: Path) -> list[tuple[int, int, int]]:
    """(offset, size, records) of each block, as fastavro reads them."""
    with open(path, "rb") as handle:
        return [(block.offset, block.size, block.num_records) for block in fastavro.block_reader(handle)]


def test_a_torn_last_block_is_cut_and_counted_and_the_complete_blocks_loaded(
    tmp_path: Path, children: list[Child], clickhouse_dsn: str
) -> None:
    spool = tmp_path / "spool"
    child = Child(spool, steps=STEPS, flush_every=300)  # ten blocks of 300 steps
    children.append(child)
    child.wait_for("flushed")
    child.kill()
    [steps_file] = [p for p in open_files(spool) if p.name.startswith("metric_steps.")]
    blocks = _blocks(steps_file)
    assert len(blocks) == 10
    with open(steps_file, "rb") as handle:
        records = list(fastavro.reader(handle))
    last_offset, last_size, last_records = blocks[-1]
    kept = records[: len(records) - last_records]
    kept_points = sum(len(r["steps"]) for r in kept)
    kept_loss = sum(value for r in kept for index, value in zip(r["metric_index"], r["values"], strict=True)
                    if r["metric_names"][index] == "loss")

    # The process died in the middle of writing its last block: half of it reached the file.
    torn_at = last_offset + last_size // 2
    os.truncate(steps_file, torn_at)
    header_only = spool / "orphan" / f"metric_steps.0000{OPEN_SUFFIX}"
    header_only.parent.mkdir()
    header_only.write_bytes(steps_file.read_bytes()[:20])  # died before its header was whole

    sink = ClickHouseSink(clickhouse_dsn)
    report = ingest_spool(spool, sink)
    assert report.cut_bytes == (torn_at - last_offset) + 20, report
    assert report.cut_records == last_records and report.live == 0, report
    assert not header_only.exists(), "a file with no whole header held no record and is removed"
    sealed = steps_file.with_name(steps_file.name[: -len(OPEN_SUFFIX)] + SPOOL_SUFFIX)
    assert sealed.stat().st_size == last_offset, "cut at the end of the last complete block"
    assert _blocks(sealed) == blocks[:-1]
    assert report.points == kept_points
    for final in (True, False):
        assert points_in(sink.client, sink.database, final) == (kept_points, kept_loss, kept_points // 2)


def test_two_recoverers_racing_seal_a_file_once(tmp_path: Path, children: list[Child]) -> None:
    spool = tmp_path / "spool"
    child = Child(spool, steps=600, flush_every=100)
    children.append(child)
    child.wait_for("flushed")
    child.kill()
    files = open_files(spool)
    copies = [shutil.copy(p, tmp_path / p.name) for p in files]
    results: list[Any] = []
    barrier = threading.Barrier(4)

    def recover() -> None:
        barrier.wait(timeout=30)
        results.extend(recover_file(path) for path in files)

    threads = [threading.Thread(target=recover) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    sealed = [item for item in results if item is not None]
    assert sorted(item.path for item in sealed) == files, "each file sealed by exactly one recoverer"
    for path, copy in zip(files, copies, strict=True):
        final = path.with_name(path.name[: -len(OPEN_SUFFIX)] + SPOOL_SUFFIX)
        assert final.read_bytes() == Path(copy).read_bytes(), "and not corrupted: nothing was torn"


def test_a_live_writers_files_are_left_alone_and_a_forked_child_does_not_keep_them(
    tmp_path: Path, children: list[Child], kafka_bootstrap: str, topic_prefix: str, clickhouse_dsn: str
) -> None:
    spool = tmp_path / "spool"
    child = Child(spool, flush_every=1_000, fork=True)
    children.append(child)
    child.wait_for("flushed")
    assert child.forked is not None
    before = {p: p.read_bytes() for p in open_files(spool)}
    assert before

    sink = ClickHouseSink(clickhouse_dsn)
    report = ingest_spool(spool, sink)
    assert (report.files, report.recovered, report.live) == (0, 0, len(before)), report
    synced = sync_spool(spool, kafka_bootstrap, topic_prefix, timeout=30)
    assert (synced.files, synced.recovered, synced.live) == (0, 0, len(before)), synced
    assert recover_open_files(spool).files == []
    assert {p: p.read_bytes() for p in open_files(spool)} == before, "a live writer's files are untouched"
    assert points_in(sink.client, sink.database, True)[0] == 0

    # The training process dies; the worker it forked lives on, holding inherited descriptors.
    child.kill()
    os.kill(child.forked, 0)  # still running
    report = ingest_spool(spool, sink)
    assert report.recovered == len(before) and report.cut_bytes == 0, report
    for final in (True, False):
        assert points_in(sink.client, sink.database, final) == (2 * STEPS, LOSS_SUM, STEPS)


def test_a_connected_job_replays_a_dead_jobs_outage_spool_racing_a_sync_and_each_file_goes_once(
    tmp_path: Path, children: list[Child], kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    spool = tmp_path / "spool"
    steps = 600
    child = Child(spool, kafka=closed, topic_prefix=topic_prefix, steps=steps, flush_every=200)
    children.append(child)
    child.wait_for("flushed", timeout=120)
    child.kill()
    dead_files = open_files(spool)
    assert dead_files

    # A later job on the same spool folder, broker up, replays the dead job's files while a
    # `runstream sync` of the same folder runs: every file is claimed by one of them.
    settings = ProducerSettings(kafka=kafka_bootstrap, spool=spool, topic_prefix=topic_prefix, sample_interval_s=0)
    run = Run(project="sigkill", name="next", settings=settings)
    sink = run._worker._sink
    assert isinstance(sink, KafkaSink)
    synced: list[Any] = []
    racer = threading.Thread(target=lambda: synced.append(sync_spool(spool, kafka_bootstrap, topic_prefix,
                                                                     timeout=60)))
    racer.start()
    for step in range(100):
        run.log({"loss": 0.0, "acc": 0.0}, step=step)
    run.finish()
    racer.join(120)
    assert synced and not synced[0].left
    assert sink.recovered_files + synced[0].recovered == len(dead_files), "each dead file sealed once"
    assert not list(spool.rglob("*.avro*")), "and uploaded, then removed"

    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn,
                                               topic_prefix=topic_prefix, batch_max_wait_s=0.2))
    db = service.sink.database
    stop = threading.Event()
    timer = threading.Timer(90, stop.set)
    timer.start()
    try:
        service.run(stop, stop_when=lambda stats: stats.points >= 2 * (steps + 100))
    finally:
        timer.cancel()
    client = service.sink.client
    dead_run = f"SELECT run_id FROM {db}.runs WHERE run_name = 'victim'"
    for final in (True, False):
        row = client.query(f"SELECT count(), sumIf(value, metric = 'loss') FROM {db}.metric_points "
                           f"{'FINAL' if final else ''} WHERE run_id IN ({dead_run})").result_rows[0]
        assert (row[0], row[1]) == (2 * steps, float(sum(range(steps)))), f"FINAL={final}: no file sent twice"


def test_a_connected_job_takes_only_dead_outage_files_meant_for_its_own_topics(
    tmp_path: Path, children: list[Child]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    spool = tmp_path / "spool"
    outage = Child(spool, kafka=closed, topic_prefix="ours.", steps=200, flush_every=200)
    other = Child(spool, kafka=closed, topic_prefix="theirs.", steps=200, flush_every=200)
    offline = Child(spool, steps=200, flush_every=200)
    children.extend([outage, other, offline])
    for child in (outage, other, offline):
        child.wait_for("flushed", timeout=120)
    before = set(open_files(spool))
    outage.kill()
    other.kill()
    offline.kill()
    ours = {p for p in before if _prefix_of(p) == "ours."}
    assert ours and len(ours) < len(before)

    sink = KafkaSink(closed, "ours.", SpoolSink(spool))
    sealed = sink._recover_dead_writers()
    assert sorted(p.with_name(p.name[: -len(SPOOL_SUFFIX)] + OPEN_SUFFIX) for p in sealed) == sorted(ours)
    assert set(open_files(spool)) == before - ours, "an offline run's, or another prefix's, files are left alone"
    assert sink.recovered_files == len(ours)


def _prefix_of(path: Path) -> str | None:
    """The file's topic prefix; None also for a file its writer was killed before it wrote the header into (the
    recovery cannot tell whose it is either, and leaves it alone)."""
    with open(path, "rb") as handle:
        try:
            value = fastavro.reader(handle).metadata.get("runstream.topic_prefix")
        except (ValueError, EOFError):
            return None
    return None if value is None else str(value)
