"""The consumer under real faults: kill -9 between insert and commit, a read-only or full data folder,
a rebalance during a write outage, SIGTERM with a batch in hand and during an outage.

Every consumer runs in a process of its own (chDB allows one data folder per process, and the
pytest process may already hold the session's). Storage faults are real: the chDB folder lives on a
small tmpfs this test mounts. For "unwritable", its `store/` (where the parts are written) is
bind-mounted onto itself and that mount remounted read-only (the tmpfs itself cannot be, while chDB
holds its `status` file open for writing); chDB then raises 1001 STD_EXCEPTION ("Read-only file
system"). For "disk full", a ballast file fills the tmpfs; chDB raises 243 NOT_ENOUGH_SPACE.
Counts are read back through `runstream query` with and without FINAL once the consumer has exited.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from confluent_kafka import Consumer, Producer, TopicPartition
from fault_table import FaultRow, FaultTable

from runstream.consumer.config import load_consumer_config
from runstream.consumer.retry import RetryPolicy, is_retryable, retry, retry_reason
from runstream.consumer.service import CONSUMER_RETRY, FAULT_AFTER_INSERT_ENV
from runstream.consumer.topics_admin import ensure_topics
from runstream.schemas import EVENT_TYPES, Encoder, bundled_catalogue, topic_for

PARTITIONS = 3


# -- helpers ----------------------------------------------------------------------------------------


def log_points(kafka: str, prefix: str, runs: int, steps: int, tag: str) -> tuple[int, float]:
    """Produce `runs` runs of `steps` steps × 2 metrics as metric_steps events (50 steps each, keyed by
    run id, run i on partition i mod PARTITIONS so that every consumer-group member has work,
    acknowledged by the broker); return (points, sum of values). The events are made with the schema
    encoder rather than the SDK, so these tests exercise the consumer alone."""
    encoder = Encoder(bundled_catalogue())
    producer = Producer({"bootstrap.servers": kafka, "enable.idempotence": True, "acks": "all"})
    topic = topic_for(prefix, "metric_steps")
    total = 0.0
    now_us = int(time.time() * 1_000_000)
    for index in range(runs):
        run_id = f"{tag}-{uuid.uuid4()}"
        for first in range(0, steps, 50):
            chunk = range(first, min(first + 50, steps))
            values = [v for step in chunk for v in (1.0 / (step + 1), float(step))]
            total += sum(values)
            record = {
                "event_id": str(uuid.uuid4()), "run_id": run_id, "timestamp_us": now_us,
                "metric_names": ["loss", "acc"], "metric_index": [0, 1] * len(chunk),
                "steps": [step for step in chunk for _ in (0, 1)], "values": values,
                "times_us": [now_us + step for step in chunk for _ in (0, 1)],
            }
            producer.produce(topic, value=encoder.encode("metric_steps", record), key=run_id.encode(),
                             partition=index % PARTITIONS)
    assert producer.flush(30) == 0, "the broker acknowledged every event"
    return runs * steps * 2, total


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             context: Callable[[], str] | None = None) -> float:
    """Poll until `condition` holds; return the seconds it took; fail naming `what` (and showing
    `context()`, e.g. the consumer's log) at the deadline."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            detail = context()[-4000:] if context is not None else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")
        time.sleep(0.1)  # polling a condition with a deadline, not ordering a race
    return time.monotonic() - started


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def metric(port: int, name: str) -> float:
    """The sum of every sample of `name` (all label values)."""
    total = 0.0
    for line in scrape(port)[1].splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class ConsumerProcess:
    """`runstream consume` in a process of its own, with its metrics port."""

    def __init__(self, kafka: str, prefix: str, dsn: str, group: str, *, instance_id: str = "",
                 batch_max_wait: float = 0.2, env: dict[str, str] | None = None) -> None:
        self.started = time.monotonic()
        # A file, not a pipe: an unread pipe would fill up and block the consumer's logging.
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in kill()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runstream.cli", "-v", "consume", "--kafka", kafka, "--clickhouse", dsn,
             "--topic-prefix", prefix, "--group", group, "--instance-id", instance_id,
             "--batch-max-wait", str(batch_max_wait), "--partitions", str(PARTITIONS), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env={**os.environ, **(env or {})},
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        if not first.startswith("serving /metrics"):
            self.process.kill()
            self.process.communicate(timeout=30)
            pytest.fail(f"the consumer did not start: {first!r}\n{self.stderr()[-3000:]}")
        self.port = int(first.split("port ")[1])

    def points(self) -> float:
        return metric(self.port, "runstream_consumer_metric_points_total")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout: float = 60) -> tuple[int, str, str]:
        """SIGTERM; (exit code, stdout, stderr)."""
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, self.stderr()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=30)
        self.log.close()


def query(dsn: str, sql: str) -> list[list[Any]]:
    """Rows of `sql` through `runstream query` (a process of its own: chDB opens one folder per process)."""
    done = subprocess.run([sys.executable, "-m", "runstream.cli", "query", "--clickhouse", dsn, "--format", "json",
                           sql], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    return [list(row.values()) if isinstance(row, dict) else list(row) for row in rows]


def stored(dsn: str) -> tuple[int, int, float]:
    """(points with FINAL, points without FINAL, sum of values with FINAL). Also checks the shipped
    rollup: `metric_summary` counts each point once however often it was delivered."""
    final = query(dsn, "SELECT count(), sum(value) FROM metric_points FINAL")[0]
    raw = query(dsn, "SELECT count() FROM metric_points")[0]
    points, deliveries = query(dsn, "SELECT sum(points), sum(deliveries) FROM metric_summary")[0]
    assert int(points) == int(final[0]), f"metric_summary counts {points} points, FINAL {final[0]}"
    # Deliveries count every insert; a background merge may already have collapsed raw duplicates.
    assert int(deliveries) >= int(raw[0]), f"deliveries {deliveries} < rows without FINAL {raw[0]}"
    return int(final[0]), int(raw[0]), float(final[1])


def uncommitted(kafka: str, prefix: str, group: str) -> int:
    """Messages between the group's committed offsets and the high watermarks, over every topic."""
    reader = Consumer({"bootstrap.servers": kafka, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic_for(prefix, t), p) for t in EVENT_TYPES for p in range(PARTITIONS)]
        behind = 0
        for tp in reader.committed(partitions, timeout=10):
            low, high = reader.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            behind += high - (tp.offset if tp.offset >= 0 else low)
        return behind
    finally:
        reader.close()


@contextlib.contextmanager
def tmpfs_chdb(root: Path, size_mb: int = 96) -> Iterator[tuple[str, Path]]:
    """A chDB folder on a tmpfs of its own; yields (dsn, its store/ folder). Fails, never skips."""
    root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(root)], check=True)
    store = root / "ch" / "store"
    try:
        store.mkdir(parents=True)
        yield f"chdb://{root / 'ch'}", store
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False, capture_output=True)  # if still read-only
        subprocess.run(["umount", str(root)], check=True)


def read_only(store: Path, on: bool) -> None:
    """Make chDB's store/ (where parts are written) read-only, or writable again.

    The whole tmpfs cannot be remounted read-only while chDB holds its `status` file open for
    writing, so store/ is bind-mounted onto itself for the fault and that mount made read-only; the
    bind is removed afterwards (it only exists during the fault: chDB's DROP renames files from
    store/ into a sibling folder, which fails across mounts)."""
    if on:
        subprocess.run(["mount", "--bind", str(store), str(store)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(store)], check=True)
    else:
        subprocess.run(["umount", "-l", str(store)], check=True)


def fill(root: Path) -> Path:
    """A ballast file that takes every free byte of the tmpfs at `root`."""
    ballast = root / "ballast"
    block = b"\0" * (1 << 20)
    with ballast.open("wb") as handle:
        try:
            while True:
                handle.write(block)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    while True:  # the last partial block may have left a few bytes; take them too
        try:
            with ballast.open("ab") as handle:
                handle.write(b"\0" * 4096)
        except OSError:
            break
    return ballast


def unique_group(prefix: str) -> str:
    return f"g-{prefix.rstrip('.')}"


# -- test 2: kill -9 between the insert and the commit ------------------------------------------------------


@pytest.mark.integration
@pytest.mark.fault
def test_consumer_killed_between_insert_and_commit_loses_and_doubles_nothing(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, fault_table: FaultTable
) -> None:
    ensure_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    group = unique_group(topic_prefix)
    dsn = f"chdb://{tmp_path / 'ch'}"
    points, total = log_points(kafka_bootstrap, topic_prefix, runs=2, steps=300, tag="crash")
    marker = tmp_path / "inserted"
    first = ConsumerProcess(kafka_bootstrap, topic_prefix, dsn, group, instance_id="consumer-0",
                            env={FAULT_AFTER_INSERT_ENV: str(marker)})
    try:
        wait_for(marker.exists, 60, "the first insert (fault-injection marker)")
        os.kill(first.process.pid, signal.SIGKILL)
    finally:
        first.kill()
    assert first.process.returncode == -signal.SIGKILL
    assert uncommitted(kafka_bootstrap, topic_prefix, group) > 0, "the killed consumer committed nothing"
    # Restart as the same static member: it takes its partitions back without waiting out a session.
    again = ConsumerProcess(kafka_bootstrap, topic_prefix, dsn, group, instance_id="consumer-0")
    try:
        wait_for(lambda: again.points() > 0, 40, "the restarted consumer's first write", again.stderr)
        recover_s = time.monotonic() - again.started  # from the restart: process start, rejoin, first insert
        wait_for(lambda: again.points() >= points and uncommitted(kafka_bootstrap, topic_prefix, group) == 0, 60,
                 "every point written and committed after the restart", again.stderr)
        code, _out, err = again.stop()
        assert code == 0, err[-2000:]
    finally:
        again.kill()
    final, raw, value_sum = stored(dsn)
    fault_table.record(FaultRow("consumer kill -9 after insert, before commit", points, final, raw, recover_s))
    assert final == points, f"lost or doubled with FINAL: {final} of {points}"
    assert value_sum == pytest.approx(total)
    # The killed process's insert is stored again by its successor (at-least-once); FINAL collapses it,
    # and a background merge may already have (so the raw count lies between once and twice).
    assert points <= raw <= 2 * points
    assert recover_s < 40


# -- test 7: unwritable data folder, then a full disk ------------------------------------------------------


@pytest.mark.integration
@pytest.mark.fault
def test_unwritable_and_full_data_folder_are_waited_out(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, fault_table: FaultTable
) -> None:
    ensure_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    group = unique_group(topic_prefix)
    root = tmp_path / "fs"
    with tmpfs_chdb(root) as (dsn, store):
        consumer = ConsumerProcess(kafka_bootstrap, topic_prefix, dsn, group, instance_id="c7")
        ballast: Path | None = None

        def failures(reason: str) -> float:
            return metric(consumer.port, f'runstream_consumer_write_retry_reasons_total{{reason="{reason}"}}')

        try:
            logged, total = log_points(kafka_bootstrap, topic_prefix, runs=1, steps=200, tag="before")
            wait_for(lambda: consumer.points() >= logged, 60, "the points logged before the fault", consumer.stderr)
            assert scrape(consumer.port, "/readyz")[0] == 200
            fault_started = time.monotonic()
            read_only(store, True)
            more, more_total = log_points(kafka_bootstrap, topic_prefix, runs=1, steps=200, tag="read-only")
            logged, total = logged + more, total + more_total
            wait_for(lambda: failures("storage_1001") > 0, 60, "a write failing on the read-only folder",
                     consumer.stderr)
            assert metric(consumer.port, "runstream_consumer_write_blocked") == 1
            assert scrape(consumer.port, "/readyz")[0] == 503
            assert scrape(consumer.port, "/healthz")[0] == 200
            wait_for(lambda: time.monotonic() - fault_started > 7, 10, "the read-only phase")
            # Writable again, but the disk is full.
            ballast = fill(root)
            read_only(store, False)
            more, more_total = log_points(kafka_bootstrap, topic_prefix, runs=1, steps=200, tag="disk-full")
            logged, total = logged + more, total + more_total
            wait_for(lambda: failures("storage_243") > 0, 60, "a write failing on the full disk", consumer.stderr)
            wait_for(lambda: time.monotonic() - fault_started > 15, 15, "the disk-full phase")
            assert consumer.alive(), "the consumer stays up through storage faults"
            assert consumer.points() < logged
            ballast.unlink()
            resume_s = wait_for(lambda: consumer.points() >= logged, 30, "writes resuming after the fault cleared",
                                consumer.stderr)
            assert metric(consumer.port, "runstream_consumer_write_blocked") == 0
            assert scrape(consumer.port, "/readyz")[0] == 200
            wait_for(lambda: uncommitted(kafka_bootstrap, topic_prefix, group) == 0, 30, "every offset committed",
                     consumer.stderr)
            code, _out, err = consumer.stop()
            assert code == 0, err[-2000:]
            assert "Traceback" not in err
        finally:
            if ballast is not None and ballast.exists():
                ballast.unlink()
            consumer.kill()
        final, raw, value_sum = stored(dsn)
    fault_table.record(FaultRow("ClickHouse data folder read-only 7s, then disk full 8s", logged, final, raw,
                                round(resume_s, 2)))
    assert final == logged, f"lost or doubled with FINAL: {final} of {logged}"
    assert value_sum == pytest.approx(total)
    assert raw >= logged


# -- test 5: a second consumer joins while ClickHouse is failing ----------------------------------------------

WORKER = textwrap.dedent("""
    import logging, sys, threading, time
    from pathlib import Path
    from runstream.consumer import ConsumerService, ConsumerSettings
    from runstream.consumer.health_server import HealthServer

    kafka, dsn, prefix, group, control = sys.argv[1:6]
    control = Path(control)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s: %(message)s")
    settings = ConsumerSettings(kafka=kafka, clickhouse=dsn, topic_prefix=prefix, group_id=group,
                                batch_max_wait_s=0.2, partitions=3)
    stops, threads = {}, {}
    while not (control / "stop").exists():
        for name in ("a", "b", "c"):
            if (control / f"start-{name}").exists() and name not in threads:
                service = ConsumerService(settings)
                server = HealthServer("127.0.0.1:0", service.metrics.registry, alive=service.alive,
                                      ready=service.ready)
                server.start()
                stops[name] = threading.Event()
                threads[name] = threading.Thread(target=service.run, args=(stops[name],), name=name)
                threads[name].start()
                print(f"{name} {server.port}", flush=True)
            if (control / f"stop-{name}").exists() and name in threads and not stops[name].is_set():
                stops[name].set()
                threads[name].join(60)
                print(f"{name} stopped", flush=True)
        time.sleep(0.05)
    for name, thread in threads.items():
        stops[name].set()
        thread.join(60)
    print("stopped", flush=True)
""")


@pytest.mark.integration
@pytest.mark.fault
def test_rebalance_while_clickhouse_fails_stores_every_point_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, fault_table: FaultTable
) -> None:
    """Members a and b consume; ClickHouse fails; c joins (a rebalance during the retry); more events
    arrive; b leaves (a second rebalance: a and c get partitions they never had, which must start
    paused); more events; ClickHouse returns. All members share one chDB folder in one process, as
    consumers share one ClickHouse (chDB opens one folder per process)."""
    ensure_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    group = unique_group(topic_prefix)
    control = tmp_path / "control"
    control.mkdir()
    with tmpfs_chdb(tmp_path / "fs") as (dsn, store):
        worker_log = (tmp_path / "worker.log").open("w+")
        worker = subprocess.Popen([sys.executable, "-c", WORKER, kafka_bootstrap, dsn, topic_prefix, group,
                                   str(control)], stdout=subprocess.PIPE, stderr=worker_log, text=True)
        assert worker.stdout is not None
        ports: dict[str, int] = {}

        def command(what: str) -> str:
            (control / what).touch()
            line = worker.stdout.readline().strip() if worker.stdout else ""
            name, _, rest = line.partition(" ")
            if rest.isdigit():
                ports[name] = int(rest)
            return line

        def points() -> float:
            return sum(metric(port, "runstream_consumer_metric_points_total") for port in ports.values())

        def worker_tail() -> str:
            return (tmp_path / "worker.log").read_text()

        try:
            assert command("start-a").startswith("a ")
            assert command("start-b").startswith("b ")
            # Both must own partitions (and have written from them) before the fault; a group join takes
            # a few seconds, so keep logging small rounds until b has written some.
            logged, total = 0, 0.0
            deadline = time.monotonic() + 60
            while metric(ports["b"], "runstream_consumer_metric_points_total") == 0:
                assert time.monotonic() < deadline, "b never got partitions:\n" + worker_tail()[-3000:]
                more, more_total = log_points(kafka_bootstrap, topic_prefix, runs=3, steps=50, tag="before")
                logged, total = logged + more, total + more_total
                time.sleep(1)  # pacing the rounds of a workload, not ordering a race
            wait_for(lambda: points() >= logged and uncommitted(kafka_bootstrap, topic_prefix, group) == 0, 60,
                     "a and b writing", worker_tail)
            read_only(store, True)
            fault_started = time.monotonic()
            more, more_total = log_points(kafka_bootstrap, topic_prefix, runs=3, steps=100, tag="outage")
            logged, total = logged + more, total + more_total
            wait_for(lambda: sum(metric(port, "runstream_consumer_write_blocked") for port in ports.values()) == 2,
                     60, "a and b blocked", worker_tail)
            assert command("start-c").startswith("c ")
            # The rebalance happens while a and b are retrying; c reads what they hold uncommitted.
            wait_for(lambda: metric(ports["c"], "runstream_consumer_messages_total") > 0, 60, "member c reading",
                     worker_tail)
            # Events that arrive during the outage: a member that fetched them and dropped them
            # (instead of keeping its partitions paused, or seeking back) would lose them.
            more, more_total = log_points(kafka_bootstrap, topic_prefix, runs=3, steps=200, tag="outage-late")
            logged, total = logged + more, total + more_total
            assert command("stop-b") == "b stopped"
            more, more_total = log_points(kafka_bootstrap, topic_prefix, runs=6, steps=200, tag="after-b-left")
            logged, total = logged + more, total + more_total
            wait_for(lambda: time.monotonic() - fault_started > 12, 15, "the outage")
            read_only(store, False)
            restored = time.monotonic()
            more, more_total = log_points(kafka_bootstrap, topic_prefix, runs=3, steps=100, tag="after")
            logged, total = logged + more, total + more_total
            wait_for(lambda: uncommitted(kafka_bootstrap, topic_prefix, group) == 0, 90, "every offset committed",
                     worker_tail)
            recover_s = time.monotonic() - restored  # ClickHouse back -> every offset committed
            assert metric(ports["c"], "runstream_consumer_metric_points_total") > 0, "c did part of the work"
            assert command("stop") == "stopped"
            worker.communicate(timeout=90)
            assert worker.returncode == 0, worker_tail()[-3000:]
        finally:
            (control / "stop").touch()
            if worker.poll() is None:
                worker.kill()
                worker.communicate(timeout=30)
            worker_log.close()
        final, raw, value_sum = stored(dsn)
    fault_table.record(FaultRow("ClickHouse read-only 12s; a consumer joins, another leaves", logged, final, raw,
                                round(recover_s, 2)))
    assert final == logged, f"lost or doubled with FINAL: {final} of {logged}"
    assert value_sum == pytest.approx(total)
    assert raw >= logged


# -- test 6 (consumer part): SIGTERM with a batch in hand, and during an outage -------------------------------


@pytest.mark.integration
@pytest.mark.fault
def test_sigterm_writes_and_commits_the_half_full_batch(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, fault_table: FaultTable
) -> None:
    ensure_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    group = unique_group(topic_prefix)
    dsn = f"chdb://{tmp_path / 'ch'}"
    # A long batch wait: the messages stay in hand (read, not written) until the SIGTERM.
    consumer = ConsumerProcess(kafka_bootstrap, topic_prefix, dsn, group, instance_id="c6", batch_max_wait=600)
    try:
        points, total = log_points(kafka_bootstrap, topic_prefix, runs=2, steps=100, tag="half")
        wait_for(lambda: metric(consumer.port, "runstream_consumer_messages_total") >= 2 * 100 / 50, 60,
                 "the batch in hand")
        assert consumer.points() == 0, "nothing written before the stop"
        stopped = time.monotonic()
        code, out, err = consumer.stop(timeout=30)
        stop_s = time.monotonic() - stopped
        assert code == 0, err[-2000:]
        assert f"{points} metric points" in out
    finally:
        consumer.kill()
    assert uncommitted(kafka_bootstrap, topic_prefix, group) == 0, "the batch in hand was committed"
    final, raw, value_sum = stored(dsn)
    fault_table.record(FaultRow("consumer SIGTERM with a half-full batch", points, final, raw, round(stop_s, 2)))
    assert (final, raw) == (points, points)
    assert value_sum == pytest.approx(total)


@pytest.mark.integration
@pytest.mark.fault
def test_sigterm_during_an_outage_exits_promptly_and_loses_nothing(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, fault_table: FaultTable
) -> None:
    ensure_topics(kafka_bootstrap, topic_prefix, partitions=PARTITIONS)
    group = unique_group(topic_prefix)
    with tmpfs_chdb(tmp_path / "fs") as (dsn, store):
        consumer = ConsumerProcess(kafka_bootstrap, topic_prefix, dsn, group, instance_id="c6b")
        try:
            read_only(store, True)
            points, total = log_points(kafka_bootstrap, topic_prefix, runs=2, steps=100, tag="outage")
            wait_for(lambda: metric(consumer.port, "runstream_consumer_write_blocked") == 1, 60, "a blocked write")
            stopped = time.monotonic()
            code, _out, err = consumer.stop(timeout=30)
            stop_s = time.monotonic() - stopped
            assert code == 0, err[-2000:]
            assert "will be redelivered" in err
        finally:
            consumer.kill()
        assert stop_s < 10, f"SIGTERM during an outage took {stop_s:.1f}s"
        assert uncommitted(kafka_bootstrap, topic_prefix, group) > 0, "nothing committed during the outage"
        read_only(store, False)
        again = ConsumerProcess(kafka_bootstrap, topic_prefix, dsn, group, instance_id="c6b")
        try:
            recover_s = wait_for(lambda: again.points() >= points, 40, "the restarted consumer writing")
            wait_for(lambda: uncommitted(kafka_bootstrap, topic_prefix, group) == 0, 30, "every offset committed")
            code, _out, err = again.stop()
            assert code == 0, err[-2000:]
        finally:
            again.kill()
        final, raw, value_sum = stored(dsn)
    fault_table.record(FaultRow("consumer SIGTERM during a ClickHouse outage, restarted", points, final, raw,
                                round(recover_s, 2)))
    assert final == points, f"lost or doubled with FINAL: {final} of {points}"
    assert value_sum == pytest.approx(total)


# -- unit level: what is retried, for how long, and the instance id -----------------------------------------


def test_storage_errors_are_retried_by_code_without_a_give_up() -> None:
    # The codes chDB raised above: 243 for a full disk, 1001 for a read-only folder (both DatabaseError).
    full = DatabaseError("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space", code=243)
    read_only_folder = DatabaseError("Code: 1001. filesystem error: Read-only file system", code=1001)
    bad_value = DatabaseError("Code: 53. Type mismatch", code=53)
    assert is_retryable(full) and is_retryable(read_only_folder)
    assert not is_retryable(bad_value)
    assert not is_retryable(DatabaseError("NOT_ENOUGH_SPACE in the text but no code")), "codes, never text"
    assert (retry_reason(full), retry_reason(read_only_folder), retry_reason(bad_value)) == (
        "storage_243", "storage_1001", "clickhouse_53")
    assert (retry_reason(ConnectionError()), retry_reason(TimeoutError())) == ("connection", "timeout")
    assert CONSUMER_RETRY.attempts is None and CONSUMER_RETRY.deadline_s is None
    failures: list[str] = []

    def down_for_a_while() -> str:
        if len(failures) < 40:  # more attempts than any fixed limit the helper used to have
            failures.append(retry_reason(full))
            raise full
        return "written"

    forever = RetryPolicy(attempts=None, deadline_s=None, initial_backoff_s=0.001, max_backoff_s=0.002)
    assert retry(down_for_a_while, policy=forever, stop=threading.Event(), what="test") == "written"
    assert len(failures) == 40
    with pytest.raises(DatabaseError):
        retry(lambda: (_ for _ in ()).throw(bad_value), policy=forever, stop=threading.Event(), what="test")
    with pytest.raises(ValueError, match="attempts: expected at least 1 or None"):
        RetryPolicy(attempts=0)


def test_instance_id_from_option_environment_or_host_name() -> None:
    settings = load_consumer_config({"kafka": "k:1"}, {}).settings
    assert settings.instance_id == socket.gethostname()
    assert load_consumer_config({"kafka": "k:1"}, {"RUNSTREAM_INSTANCE_ID": "consumer-3"}).settings.instance_id == (
        "consumer-3")
    given = load_consumer_config({"kafka": "k:1", "instance_id": "pod-0"}, {"RUNSTREAM_INSTANCE_ID": "x"})
    assert given.settings.instance_id == "pod-0"
    assert load_consumer_config({"kafka": "k:1", "instance_id": ""}, {}).settings.instance_id is None, (
        "'' turns static membership off")
    assert load_consumer_config({"kafka": "k:1"}, {"RUNSTREAM_INSTANCE_ID": ""}).settings.instance_id is None
    assert "instance=pod-0" in given.describe()
