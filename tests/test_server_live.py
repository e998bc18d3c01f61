"""The server's loaders, live: a real training process writes the spool while a SpoolFollower loads it.

A point logged reaches ClickHouse within 2 s (measured from the child's `log()` call to the row's
presence); every record is stored once, without FINAL too, across a file read while it grows and then
sealed, a writer killed with SIGKILL mid-run, and a follower restarted on the same folder and database.
The Kafka loader runs the consumer service in a thread on the server's sink.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from server_process import clean_environment, running_server

from runstream.consumer import ClickHouseSink
from runstream.consumer.dsn import connect
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings
from runstream.schemas.spool import OPEN_SUFFIX, read_spool_file
from runstream.server import wire
from runstream.server.kafka_loader import start_kafka_loader
from runstream.server.spool_follower import SpoolFollower

pytestmark = pytest.mark.integration

#: A training process with the SDK's default settings (spool mode: no Kafka): logs `loss` = step and `acc` =
#: step % 7 (sums exact in floats), says when each `log()` returned and each acknowledged flush; steps -1:
#: until the stop file exists (or it is killed).
TRAIN = """
import os, sys, time
import runstream
spool, name, steps, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
flush_every, stop = int(sys.argv[5]), sys.argv[6]
run = runstream.init("live", name, spool=spool)
print("run", run.run_id, flush=True)
step = 0
while (steps < 0 and not os.path.exists(stop)) or step < steps:
    run.log({"loss": float(step), "acc": float(step % 7)}, step=step)
    print("logged", step, repr(time.time()), flush=True)
    step += 1
    if flush_every and step % flush_every == 0:
        assert run.flush(timeout=30) == 0
        print("flushed", step, flush=True)
    time.sleep(pause)  # the training step's work
run.finish()
print("finished", flush=True)
"""


class Trainer:
    """The training child; its stdout lines are read by a thread into `lines`."""

    def __init__(self, spool: Path, name: str, *, steps: int, pause: float, flush_every: int = 0) -> None:
        #: steps -1: the child logs until this file exists, then finishes its run
        self.stop_file = spool.parent / f"stop-{name}"
        self.process = subprocess.Popen(
            [sys.executable, "-c", TRAIN, str(spool), name, str(steps), str(pause), str(flush_every),
             str(self.stop_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_environment())
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.run_id = ""
        self.logged: dict[int, float] = {}  # step -> wall time when its log() returned
        self.flushed = 0  # steps acknowledged by a flush
        self.finished = False

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def take(self) -> None:
        """Take in the lines printed so far."""
        while True:
            try:
                words = self.lines.get_nowait().split()
            except queue.Empty:
                return
            if words[0] == "run":
                self.run_id = words[1]
            elif words[0] == "logged":
                self.logged[int(words[1])] = float(words[2])
            elif words[0] == "flushed":
                self.flushed = int(words[1])
            elif words[0] == "finished":
                self.finished = True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        threading.Event().wait(0.05)


def metric_totals(client: Any, database: str, run_id: str, *, final: bool) -> dict[str, tuple[int, float]]:
    """metric -> (rows, sum of values) of the run, with or without FINAL."""
    rows = client.query(
        f"SELECT metric, count(), sum(value) FROM {database}.metric_points {'FINAL' if final else ''} "  # noqa: S608
        "WHERE run_id = {run:String} GROUP BY metric", parameters={"run": run_id}).result_rows
    return {str(metric): (int(count), float(total)) for metric, count, total in rows}


def logged_totals(steps: int) -> dict[str, tuple[int, float]]:
    return {"loss": (steps, float(sum(range(steps)))), "acc": (steps, float(sum(step % 7 for step in range(steps))))}


def rows_of(client: Any, database: str, table: str, run_id: str) -> int:
    query = f"SELECT count() FROM {database}.{table} WHERE run_id = {{run:String}}"  # noqa: S608
    return int(client.query(query, parameters={"run": run_id}).result_rows[0][0])


@pytest.fixture
def following(tmp_path: Path, clickhouse_dsn: str) -> Iterator[tuple[Path, SpoolFollower]]:
    """A SpoolFollower on a spool folder of the test's own, polling in a thread (as in the server)."""
    spool = tmp_path / "spool"
    follower = SpoolFollower(spool, ClickHouseSink(clickhouse_dsn))
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,), name="spool-follower")
    thread.start()
    try:
        yield spool, follower
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive()


def all_sealed_and_stored(spool: Path, follower: SpoolFollower, run_id: str) -> bool:
    files = list((spool / run_id).iterdir()) if (spool / run_id).is_dir() else []
    if not files or any(path.name.endswith(OPEN_SUFFIX) for path in files):
        return False
    stored = follower.stored
    return all((progress := stored.get(f"{run_id}/{path.name.removesuffix('.avro')}")) is not None
               and progress.sealed for path in files)


@pytest.mark.latency
def test_a_point_logged_is_in_clickhouse_within_2s_and_stored_once(
        following: tuple[Path, SpoolFollower], clickhouse_dsn: str) -> None:
    spool, follower = following
    client, database = connect(clickhouse_dsn, create_database=False)
    steps = 150
    trainer = Trainer(spool, "live", steps=steps, pause=0.02)
    latencies: dict[int, float] = {}
    try:
        wait_for(lambda: (trainer.take(), bool(trainer.run_id))[1], 60, "the child's run id")
        deadline = time.monotonic() + 90
        while len(latencies) < steps:
            assert time.monotonic() < deadline, f"only {len(latencies)} of {steps} steps seen"
            trainer.take()
            seen = client.query(f"SELECT max(step), count() FROM {database}.metric_points "  # noqa: S608
                                "WHERE run_id = {run:String} AND metric = 'loss'",
                                parameters={"run": trainer.run_id}).result_rows[0]
            now = time.time()
            if seen[1]:
                for step, logged_at in trainer.logged.items():
                    if step <= seen[0] and step not in latencies:
                        latencies[step] = now - logged_at
            threading.Event().wait(0.05)
        assert trainer.process.wait(timeout=60) == 0, trainer.process.stderr
        trainer.take()
        assert trainer.finished
    finally:
        trainer.stop()
    ordered = sorted(latencies.values())
    print(f"log() -> row in ClickHouse: median {ordered[len(ordered) // 2]:.3f}s, max {ordered[-1]:.3f}s "
          f"over {len(ordered)} steps")
    assert ordered[-1] < 2.0, f"slowest step took {ordered[-1]:.2f}s from log() to ClickHouse"
    assert follower.totals.live_files > 0, "the points were loaded while the run's files were open"
    wait_for(lambda: all_sealed_and_stored(spool, follower, trainer.run_id), 30, "the sealed files stored")
    # grown, then sealed and renamed: every record once, with and without FINAL
    assert metric_totals(client, database, trainer.run_id, final=False) == logged_totals(steps)
    assert metric_totals(client, database, trainer.run_id, final=True) == logged_totals(steps)
    assert rows_of(client, database, "runs", trainer.run_id) == 1
    assert rows_of(client, database, "run_finishes", trainer.run_id) == 1
    assert not follower.totals.rejected


def test_a_writer_killed_mid_run_has_everything_it_flushed_stored_once(
        following: tuple[Path, SpoolFollower], clickhouse_dsn: str) -> None:
    spool, follower = following
    client, database = connect(clickhouse_dsn, create_database=False)
    trainer = Trainer(spool, "victim", steps=-1, pause=0.001, flush_every=100)
    try:
        def loaded_live() -> bool:
            trainer.take()
            return bool(trainer.run_id) and trainer.flushed >= 400 and bool(
                metric_totals(client, database, trainer.run_id, final=False))
        wait_for(loaded_live, 60, "400 steps flushed and some loaded while the writer lives")
        os.kill(trainer.process.pid, signal.SIGKILL)
        trainer.process.wait(timeout=30)
        trainer.take()
    finally:
        trainer.stop()
    wait_for(lambda: all_sealed_and_stored(spool, follower, trainer.run_id), 30,
             "the dead writer's files recovered (sealed) and stored")
    assert follower.totals.recovered >= 1
    # what the writer had flushed: the complete blocks of its files, as recovered
    in_files: dict[str, tuple[int, float]] = {}
    for path in (spool / trainer.run_id).glob("metric_steps.*.avro"):
        for _event_type, record in read_spool_file(path):
            for index, value in zip(record["metric_index"], record["values"], strict=True):
                name = record["metric_names"][index]
                count, total = in_files.get(name, (0, 0.0))
                in_files[name] = (count + 1, total + value)
    stored = metric_totals(client, database, trainer.run_id, final=False)
    assert stored == in_files
    assert metric_totals(client, database, trainer.run_id, final=True) == in_files
    loss_rows = stored["loss"][0]
    assert loss_rows >= trainer.flushed, "every step acknowledged by a flush is stored"
    assert stored == logged_totals(loss_rows), "the steps stored are the first ones, each once"
    assert rows_of(client, database, "runs", trainer.run_id) == 1


def test_a_restarted_follower_stores_nothing_twice(tmp_path: Path, clickhouse_dsn: str) -> None:
    spool = tmp_path / "spool"
    settings = ProducerSettings(spool=spool, sample_interval_s=0, heartbeat_interval_s=0)
    run = Run(project="restart", name="r", settings=settings)

    def log_steps(steps: range) -> None:
        for step in steps:
            run.log({"loss": float(step), "acc": float(step % 7)}, step=step)
        assert run.flush(timeout=30) == 0

    log_steps(range(0, 100))
    first = SpoolFollower(spool, ClickHouseSink(clickhouse_dsn))
    report = first.poll_once()
    assert (report.points, report.live_files) == (200, 2)  # run_started and metric_steps, both open
    log_steps(range(100, 200))
    assert first.poll_once().points == 200  # the growing file: only its new blocks
    # the server stopped and started again: progress comes back from ClickHouse
    second = SpoolFollower(spool, ClickHouseSink(clickhouse_dsn))
    assert second.stored == first.stored
    again = second.poll_once()
    assert (again.events, again.points) == (0, 0)
    log_steps(range(200, 300))
    run.finish()  # sealed: renamed to .avro
    report = second.poll_once()
    assert (report.points, report.live_files) == (200, 0)
    third = SpoolFollower(spool, ClickHouseSink(clickhouse_dsn))
    assert third.poll_once().events == 0
    client, database = connect(clickhouse_dsn, create_database=False)
    assert metric_totals(client, database, run.run_id, final=False) == logged_totals(300)
    assert metric_totals(client, database, run.run_id, final=True) == logged_totals(300)
    assert rows_of(client, database, "runs", run.run_id) == 1
    assert rows_of(client, database, "run_finishes", run.run_id) == 1


def test_a_write_that_failed_part_way_is_finished_not_repeated(tmp_path: Path, clickhouse_dsn: str) -> None:
    """A real fault between two tables' inserts (metric_points detached): the next poll writes the tables the
    failed write did not finish, so the run's row is not stored twice and every point arrives once."""
    spool = tmp_path / "spool"
    run = Run(project="fault", name="f", settings=ProducerSettings(spool=spool, sample_interval_s=0,
                                                                   heartbeat_interval_s=0))
    for step in range(50):
        run.log({"loss": float(step), "acc": float(step % 7)}, step=step)
    assert run.flush(timeout=30) == 0
    sink = ClickHouseSink(clickhouse_dsn)
    client, database = sink.client, sink.database
    follower = SpoolFollower(spool, sink)
    client.command(f"DETACH TABLE {database}.metric_points")
    try:
        with pytest.raises(Exception, match="metric_points"):
            follower.poll_once()
        assert "runs" in sink.completed and "metric_points" not in sink.completed
        assert rows_of(client, database, "runs", run.run_id) == 1
        assert follower.stored == {}, "no progress stored for a batch not written"
    finally:
        client.command(f"ATTACH TABLE {database}.metric_points")
    report = follower.poll_once()
    assert (report.events, report.points) == (2, 100)
    run.finish()
    follower.poll_once()
    assert metric_totals(client, database, run.run_id, final=False) == logged_totals(50)
    assert rows_of(client, database, "runs", run.run_id) == 1


def test_the_kafka_loader_consumes_into_the_servers_sink(
        kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str) -> None:
    settings = ProducerSettings(kafka=kafka_bootstrap, topic_prefix=topic_prefix, sample_interval_s=0,
                                heartbeat_interval_s=0)
    run_ids = []
    for name in ("a", "b"):
        run = Run(project="kafka-live", name=name, settings=settings)
        for step in range(50):
            run.log({"loss": float(step), "acc": float(step % 7)}, step=step)
        run.finish()
        run_ids.append(run.run_id)
    sink = ClickHouseSink(clickhouse_dsn)
    stop = threading.Event()
    # as `runstream server --kafka B --topic-prefix P --group G` makes it (its own sink, on the server's client)
    args = argparse.Namespace(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn, topic_prefix=topic_prefix,
                              group=f"{topic_prefix}server", kafka_option=[], config=None)
    made = start_kafka_loader(args, sink, stop)
    loader, thread = made.loader, made.thread
    assert loader.sink is not sink and loader.sink.client is sink.client
    thread.start()
    try:
        wait_for(lambda: loader.counts()["points"] >= 200, 90, "both runs' points consumed")
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert loader.counts()["points"] == 200 and loader.counts()["restarts"] == 0
    for run_id in run_ids:
        assert metric_totals(sink.client, sink.database, run_id, final=True) == logged_totals(50)
        assert rows_of(sink.client, sink.database, "runs", run_id) == 1


def sql_through(url: str, sql: str, **parameters: Any) -> list[tuple[Any, ...]]:
    """Rows of a read-only query sent to the server's POST /api/sql."""
    body = json.dumps({"sql": sql, "parameters": wire.encode_parameters(parameters)}).encode()
    request = urllib.request.Request(f"{url}/api/sql", data=body,  # noqa: S310 - the test's own server
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return wire.decode_result(response.read())[2]


@pytest.mark.latency
def test_the_server_loads_a_live_run_while_the_cli_answers(tmp_path: Path) -> None:
    """`runstream server` + a training process + `runstream runs` on the same embedded folder at once."""
    dsn = f"chdb://{tmp_path / 'data'}"  # the server's own folder: only its process opens it
    spool = tmp_path / "spool"
    spool.mkdir()
    with running_server("--clickhouse", dsn, "--spool", str(spool)) as server:
        trainer = Trainer(spool, "e2e", steps=-1, pause=0.02)
        latencies: dict[int, float] = {}
        try:
            wait_for(lambda: (trainer.take(), bool(trainer.run_id))[1], 60, "the child's run id")

            def seen_through_api() -> bool:
                trainer.take()
                top, count = sql_through(server.url, "SELECT max(step), count() FROM metric_points "
                                         "WHERE run_id = {run:String} AND metric = 'loss'", run=trainer.run_id)[0]
                now = time.time()
                for step, logged_at in list(trainer.logged.items()):
                    if count and step <= top and step not in latencies:
                        latencies[step] = now - logged_at
                return len(latencies) >= 40
            wait_for(seen_through_api, 60, "40 steps visible through the API")
            listed = subprocess.run([sys.executable, "-m", "runstream.cli", "runs", "--clickhouse", dsn,
                                     "--project", "live", "--format", "json"],
                                    capture_output=True, text=True, timeout=120, env=clean_environment())
            assert trainer.process.poll() is None, "the run was still live when the CLI answered"
            assert listed.returncode == 0, listed.stderr
            assert [row["name"] for row in json.loads(listed.stdout)] == ["e2e"]
            trainer.stop_file.touch()
            assert trainer.process.wait(timeout=60) == 0, trainer.process.stderr
            trainer.take()
        finally:
            trainer.stop()
        steps = len(trainer.logged)
        assert trainer.finished and steps > 40
        query = ("SELECT metric, count(), sum(value) FROM metric_points {final} WHERE run_id = {{run:String}} "
                 "GROUP BY metric ORDER BY metric")
        expected = sorted((metric, *totals) for metric, totals in logged_totals(steps).items())

        def all_stored(final: str) -> bool:
            rows = sql_through(server.url, query.format(final=final), run=trainer.run_id)
            return [(str(m), int(c), float(t)) for m, c, t in rows] == expected
        wait_for(lambda: all_stored("FINAL"), 30, "every point of the finished run stored")
        assert all_stored(""), "no point stored twice (without FINAL)"
    assert server.process.returncode == 0, "".join(server.output)
    ordered = sorted(latencies.values())
    print(f"through the server's API: log() -> visible median {ordered[len(ordered) // 2]:.3f}s, "
          f"max {ordered[-1]:.3f}s over {len(ordered)} steps")
    assert ordered[-1] < 2.0, f"slowest step took {ordered[-1]:.2f}s from log() to the API"
