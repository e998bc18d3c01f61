"""Heartbeats and honest status: a real SDK process sends heartbeats, they are stored, and the status every
reader shows (run list, filter, Client's rows, exporter gauges, cost) says running, stalled, lost, ok, failed
or killed within the configured times. The time is injected (`now`), never slept for: a process is killed -9
after its heartbeats are flushed, and the statuses are read at chosen instants around its last heartbeat.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consuming import run_until
from spool_reader import read_spool

import runstream
from runstream.analysis import queries
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.monitoring import cost
from runstream.monitoring.exporter import SnapshotCollector
from runstream.monitoring.gpu_hours import held_seconds
from runstream.monitoring.run_status import (
    DEFAULT_STALL_AFTER_S,
    LOST_AFTER_INTERVALS,
    run_statuses,
    status_parameters,
)
from runstream.monitoring.settings import ExporterSettings
from runstream.producer.heartbeat import Heartbeat
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings

pytestmark = pytest.mark.integration

INTERVAL_S = 0.2
LOST_AFTER_S = LOST_AFTER_INTERVALS * INTERVAL_S
STEPS = 12
STALL_BEATS = 4
#: A margin around the configured times, far above the µs rounding of stored times.
MARGIN_S = 0.02

# Logs STEPS steps and two GPU samples per GPU (at the start and after the last step), then stops stepping
# while its heartbeats go on; once STALL_BEATS more beats were sent and flushed it says so and waits to be killed.
CHILD = """
import sys, time
from pathlib import Path
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings

spool, kafka, prefix, steps, stall_beats, resume, interval = sys.argv[1:8]
settings = ProducerSettings(kafka=kafka or None, spool=Path(spool), topic_prefix=prefix, sample_interval_s=0,
                            heartbeat_interval_s=float(interval), flush_interval_s=0.05, delivery_timeout_s=5.0)
run = Run(project="beats", name="victim", settings=settings, resume=resume or None)

def gpus():
    now_us = time.time_ns() // 1000
    run.log_gpu_samples([{"time_us": now_us, "gpu_index": i, "gpu_uuid": f"GPU-{i}", "gpu_model": "H100",
                          "utilization_pct": 90.0} for i in (0, 1)], host="node-7")

gpus()
for step in range(int(steps)):
    run.log({"loss": 1.0 / (step + 1)}, step=step)
    time.sleep(0.04)  # 12 steps over ~2.5 heartbeat intervals: the step rate is seen while it advances
gpus()
assert run.flush(timeout=30) == 0
beat = run._heartbeat
if beat is not None:
    target = beat.beats + int(stall_beats)
    deadline = time.monotonic() + 60
    while beat.beats < target and time.monotonic() < deadline:
        time.sleep(0.02)
    assert beat.beats >= target, beat.beats
assert run.flush(timeout=30) == 0
print("ready", run.run_id, run.attempt, flush=True)
time.sleep(600)
"""


class Child:
    """A training process that logs, stalls with heartbeats going on, says so, and waits to be killed -9."""

    def __init__(self, spool: Path, *, kafka: str = "", prefix: str = "beats.", resume: str = "",
                 attempt: int | None = None, interval_s: float = INTERVAL_S) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
        if attempt is not None:
            env["RUNSTREAM_ATTEMPT"] = str(attempt)
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(spool), kafka, prefix, str(STEPS), str(STALL_BEATS), resume,
             str(interval_s)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def ready(self, timeout: float = 90.0) -> tuple[str, int]:
        """(run_id, attempt) once the child flushed its stall's heartbeats."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None or not line.startswith("ready "):
            self.kill()
            assert self.process.stderr is not None
            raise AssertionError(f"the child never got ready ({line!r}):\n{self.process.stderr.read()}")
        _, run_id, attempt = line.split()
        return run_id, int(attempt)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL: nothing gets to finish the run
        self.process.wait(timeout=30)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


def _settings(spool: Path, interval_s: float = INTERVAL_S) -> ProducerSettings:
    return ProducerSettings(spool=spool, sample_interval_s=0, heartbeat_interval_s=interval_s, flush_interval_s=0.05)


def _utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.UTC)


def _heartbeat_row(sink: ClickHouseSink, run_id: str) -> tuple[Any, ...]:
    rows = sink.client.query(
        f"SELECT attempt, time, interval_s, last_step, last_step_at, steps_per_s FROM {sink.database}.run_heartbeats "
        "FINAL WHERE run_id = {r:String}", parameters={"r": run_id}).result_rows
    assert len(rows) == 1, rows
    return tuple(rows[0])


def _statuses(sink: ClickHouseSink, now: dt.datetime, stall_after_s: float) -> dict[str, str]:
    return {row["run_id"]: row["status"] for row in run_statuses(sink.client, sink.database, now=now,
                                                                 stall_after_s=stall_after_s)}


# -- the SDK side ----------------------------------------------------------------------------------------


def test_the_step_rate_is_steps_over_the_time_between_beats() -> None:
    steps: list[tuple[int | None, int | None]] = [(None, None), (9, 1_000), (29, 2_000), (29, 2_000)]
    clock = iter([10.0, 10.5, 11.0, 13.0])
    sent: list[dict[str, Any]] = []
    beat = Heartbeat("r", 2, 0.5, lambda: steps.pop(0), sent.append, clock=lambda: next(clock), wall_us=lambda: 7)
    for _ in range(4):
        beat.beat()
    assert [(r["last_step"], r["last_step_us"], r["steps_per_s"]) for r in sent] == [
        (None, None, None), (9, 1_000, None), (29, 2_000, 20 / 0.5), (29, 2_000, 0.0)]
    assert {(r["attempt"], r["interval_s"], r["timestamp_us"]) for r in sent} == {(2, 0.5, 7)}
    beat.stop()
    beat.beat()
    assert len(sent) == 4, "no beat after stop()"


def test_a_bad_interval_is_refused_naming_it_and_zero_turns_heartbeats_off(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("-1", "nan", "inf"):
        monkeypatch.setenv("RUNSTREAM_HEARTBEAT_INTERVAL", bad)
        with pytest.raises(ValueError, match=f"heartbeat_interval_s: expected finite seconds >= 0.*{bad}"):
            ProducerSettings.resolve(spool=str(tmp_path))
    monkeypatch.setenv("RUNSTREAM_HEARTBEAT_INTERVAL", "0")
    settings = ProducerSettings.resolve(spool=str(tmp_path), sample_interval_s=0)
    assert settings.heartbeat_interval_s == 0
    run = Run(project="beats", settings=settings)
    run.log({"loss": 1.0})
    run.finish()
    assert run._heartbeat is None
    spooled = read_spool(tmp_path)
    assert "run_heartbeat" not in spooled and len(spooled["run_finished"]) == 1
    with pytest.raises(ValueError, match="stall_after_s: expected a positive number of seconds, got -5"):
        status_parameters(stall_after_s=-5)
    monkeypatch.delenv("RUNSTREAM_STALL_AFTER", raising=False)
    assert ExporterSettings().stall_after_s == DEFAULT_STALL_AFTER_S == 900  # the dashboards' fixed default
    monkeypatch.setenv("RUNSTREAM_STALL_AFTER", "120")
    assert status_parameters(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))["status_stall_after_s"] == 120.0


# -- stored, and the status at chosen instants ---------------------------------------------------------------


def test_a_killed_process_is_stalled_then_lost_and_finished_runs_keep_their_status(
        tmp_path: Path, clickhouse_dsn: str, children: list[Child]) -> None:
    spool = tmp_path / "spool"
    child = Child(spool)
    children.append(child)
    # Finished runs in this process, their heartbeats going while they log.
    finished: dict[str, str] = {}
    ok = Run(project="beats", name="ok", settings=_settings(spool))
    for step in range(5):
        ok.log({"loss": 1.0}, step=step)
    ok.finish()
    finished[ok.run_id] = "ok"
    with pytest.raises(RuntimeError), Run(project="beats", name="failed", settings=_settings(spool)) as failing:
        failing.log({"loss": 2.0}, step=0)
        raise RuntimeError("diverged")
    finished[failing.run_id] = "failed"
    killed = Run(project="beats", name="preempted", settings=_settings(spool))
    killed.log({"loss": 3.0}, step=0)
    killed.finish("killed")
    finished[killed.run_id] = "killed"

    run_id, attempt = child.ready()
    child.kill()
    sink = ClickHouseSink(clickhouse_dsn)
    report = ingest_spool(spool, sink)
    assert report.rejected == [] and report.recovered > 0, report

    # Stored: the last heartbeat the killed process got into its spool, exactly.
    beats = [r for r in read_spool(spool)["run_heartbeat"] if r["run_id"] == run_id]
    assert len(beats) >= STALL_BEATS + 1
    last = max(beats, key=lambda r: r["timestamp_us"])
    stored = _heartbeat_row(sink, run_id)
    assert (stored[0], stored[2], stored[3]) == (attempt, INTERVAL_S, STEPS - 1) == (last["attempt"],
                                                                                      last["interval_s"],
                                                                                      last["last_step"])
    assert int(_utc(stored[1]).timestamp() * 1e6) == last["timestamp_us"]
    assert int(_utc(stored[4]).timestamp() * 1e6) == last["last_step_us"]
    assert last["steps_per_s"] == 0.0, "the step stood still over the last interval"
    assert any((r["steps_per_s"] or 0) > 0 for r in beats), "the step advanced while it logged"
    for run in (ok, failing, killed):
        assert _heartbeat_row(sink, run.run_id)[0] == 1, "finished runs sent heartbeats too"

    beat_at, step_at = _utc(stored[1]), _utc(stored[4])
    just_after = beat_at + dt.timedelta(seconds=MARGIN_S)
    stalled_for = (just_after - step_at).total_seconds()
    assert stalled_for > (STALL_BEATS - 1) * INTERVAL_S
    # Heartbeats arriving, the step still: stalled once stall_after_s has passed, running before.
    stall_after = stalled_for - 2 * MARGIN_S
    assert _statuses(sink, just_after, stall_after)[run_id] == "stalled"
    assert _statuses(sink, just_after, stalled_for + 2 * MARGIN_S)[run_id] == "running"
    # No heartbeat for 3 intervals, no finish: lost, whatever stall_after_s says.
    before_lost = beat_at + dt.timedelta(seconds=LOST_AFTER_S - MARGIN_S)
    after_lost = beat_at + dt.timedelta(seconds=LOST_AFTER_S + MARGIN_S)
    assert _statuses(sink, before_lost, 3600)[run_id] == "running"
    assert _statuses(sink, after_lost, 3600)[run_id] == "lost"
    assert _statuses(sink, after_lost, 0.001)[run_id] == "lost"
    # Finished runs keep their end, even a day after their last heartbeat.
    for now in (just_after, after_lost, beat_at + dt.timedelta(days=1)):
        got = _statuses(sink, now, stall_after)
        assert {r: got[r] for r in finished} == finished

    # The run list and its filter show the same status.
    table = queries.runs(sink.client, sink.database, project="beats", now=just_after, stall_after_s=stall_after)
    status_of = {row[0]: row[table.columns.index("status")] for row in table.rows}
    assert status_of == {**finished, run_id: "stalled"}
    stalled_only = queries.runs(sink.client, sink.database, where="status = 'stalled'", now=just_after,
                                stall_after_s=stall_after)
    assert [row[0] for row in stalled_only.rows] == [run_id]
    lost_only = queries.runs(sink.client, sink.database, where="status = 'lost'", now=after_lost, stall_after_s=3600)
    assert [row[0] for row in lost_only.rows] == [run_id]

    # The Client: the same status with what decided it; at the real time the run has long been lost.
    rs = runstream.Client(clickhouse_dsn)
    frame = rs.status("beats", now=just_after, stall_after_s=stall_after)
    assert dict(zip(frame["run_id"], frame["status"], strict=True)) == {**finished, run_id: "stalled"}
    mine = frame[frame["run_id"] == run_id].iloc[0]
    assert (mine["attempt"], mine["stalled_s"]) == (attempt, pytest.approx(stalled_for, abs=1e-6))
    listed = rs.runs("beats")
    assert dict(zip(listed["run_id"], listed["status"], strict=True)) == {**finished, run_id: "lost"}
    # Rankings and comparisons, which read the summary, show the same honest status.
    board = queries.leaderboard(sink.client, sink.database, "beats", "loss")
    assert {row[1]: row[3] for row in board.rows} == {**finished, run_id: "lost"}
    compared = queries.compare(sink.client, sink.database, [run_id, *finished])
    [status_row] = [row for row in compared.rows if row[0] == "status"]
    assert status_row[1:-1] == ["lost", *finished.values()]

    # Cost: the GPU-hours of the run, by the one definition, counted as stalled, then as lost.
    samples = [r for r in read_spool(spool)["gpu_samples"] if r["run_id"] == run_id]
    times: dict[int, list[int]] = {}
    for record in samples:
        for sample in record["samples"]:
            times.setdefault(sample["gpu_index"], []).append(sample["time_us"] // 1000)
    expected_h = sum(held_seconds(t) for t in times.values()) / 3600
    assert expected_h > 0 and sorted(times) == [0, 1]
    start = beat_at - dt.timedelta(hours=1)
    for now, stall, column in ((just_after, stall_after, "stalled_gpu_hours"), (after_lost, 3600, "lost_gpu_hours")):
        rows = {r["run_id"]: r for r in cost.cost_by(sink.client, sink.database, "run_id", start=start, end=now,
                                                     stall_after_s=stall)}
        row = rows[run_id]
        other = "lost_gpu_hours" if column == "stalled_gpu_hours" else "stalled_gpu_hours"
        assert row["gpu_hours"] == pytest.approx(expected_h, rel=1e-9)
        assert (row[column], row[other], row["status"]) == (pytest.approx(expected_h, rel=1e-9), 0.0,
                                                            column.split("_")[0])
        [by_project] = cost.cost_by(sink.client, sink.database, "project", start=start, end=now, stall_after_s=stall)
        assert by_project[column] == pytest.approx(expected_h, rel=1e-9) and by_project[other] == 0.0

    # The exporter's gauges, refreshed at each instant.
    def gauges(now: dt.datetime, stall_after_s: float) -> dict[str, list[Any]]:
        settings = ExporterSettings(stall_after_s=stall_after_s, lost_window_s=3600)
        collector = SnapshotCollector(sink.client, sink.database, settings, now=lambda: now)
        collector.refresh()
        return {family.name: family.samples for family in collector.collect()}

    def runs_by_status(families: dict[str, list[Any]]) -> dict[str, float]:
        return {s.labels["status"]: s.value for s in families["runstream_runs"] if s.labels["project"] == "beats"}

    stalled_view = gauges(just_after, stall_after)
    assert runs_by_status(stalled_view) == {"running": 0, "stalled": 1, "lost": 0, "ok": 1, "failed": 1, "killed": 1,
                                            "pruned": 0}
    [stalled_gauge] = stalled_view["runstream_stalled_run_seconds"]
    assert stalled_gauge.labels == {"project": "beats", "run_id": run_id, "run_name": "victim"}
    assert stalled_gauge.value == pytest.approx(stalled_for, abs=1e-6)
    assert stalled_view["runstream_lost_run_gpus"] == []
    lost_view = gauges(after_lost, 3600)
    assert runs_by_status(lost_view) == {"running": 0, "stalled": 0, "lost": 1, "ok": 1, "failed": 1, "killed": 1,
                                         "pruned": 0}
    assert [(s.labels, s.value) for s in lost_view["runstream_lost_run_gpus"]] == [({"project": "beats"}, 2.0)]
    assert lost_view["runstream_stalled_run_seconds"] == []
    # Outside the lost window the run still counts as lost, but no longer as holding GPUs.
    late_view = gauges(beat_at + dt.timedelta(hours=2), 3600)
    assert runs_by_status(late_view)["lost"] == 1 and late_view["runstream_lost_run_gpus"] == []


def test_a_resumed_runs_status_follows_its_latest_attempt(tmp_path: Path, clickhouse_dsn: str,
                                                          children: list[Child]) -> None:
    spool = tmp_path / "spool"
    sink = ClickHouseSink(clickhouse_dsn)
    # Attempt 1 is preempted (SIGTERM finishes it as killed).
    first = Run(project="beats", name="victim", settings=_settings(spool))
    for step in range(5):
        first.log({"loss": 1.0}, step=step)
    first.finish("killed")
    run_id = first.run_id
    # Attempt 2 resumes it, then dies unseen.
    child = Child(spool, resume=run_id, attempt=2)
    children.append(child)
    assert child.ready() == (run_id, 2)
    child.kill()
    ingest_spool(spool, sink)
    attempt, beat_time, *_ = _heartbeat_row(sink, run_id)
    assert attempt == 2
    beat_at = _utc(beat_time)
    soon = beat_at + dt.timedelta(seconds=MARGIN_S)
    assert _statuses(sink, soon, 3600)[run_id] == "running", "attempt 1's end does not end attempt 2"
    assert _statuses(sink, beat_at + dt.timedelta(seconds=LOST_AFTER_S + MARGIN_S), 3600)[run_id] == "lost"
    # Attempt 3 resumes again and ends well: its end counts, attempt 2's silence does not.
    third = Run(project="beats", name="victim", settings=_settings(spool), resume=run_id)
    assert third.attempt == 3
    third.log({"loss": 0.5}, step=5)
    third.finish("ok")
    ingest_spool(spool, sink)
    assert _heartbeat_row(sink, run_id)[0] == 3
    for now in (soon, beat_at + dt.timedelta(days=1)):
        assert _statuses(sink, now, 3600)[run_id] == "ok"


def test_heartbeats_travel_through_kafka_to_the_status(tmp_path: Path, clickhouse_dsn: str, kafka_bootstrap: str,
                                                       topic_prefix: str, children: list[Child]) -> None:
    from runstream.consumer import ConsumerService, ConsumerSettings

    child = Child(tmp_path / "spool", kafka=kafka_bootstrap, prefix=topic_prefix)
    children.append(child)
    run_id, _ = child.ready()
    child.kill()
    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn,
                                               topic_prefix=topic_prefix))
    client, db = service.sink.client, service.sink.database
    found: list[tuple[Any, ...]] = []

    def stored(_stats: Any) -> bool:
        rows = client.query(f"SELECT h.last_step, h.time, s.run_id FROM {db}.run_heartbeats AS h FINAL "
                            f"LEFT JOIN (SELECT run_id FROM {db}.run_summary FINAL) AS s ON s.run_id = h.run_id "
                            "WHERE h.run_id = {r:String}", parameters={"r": run_id}).result_rows
        found[:] = [tuple(r) for r in rows if r[0] == STEPS - 1 and r[2] == run_id]
        return bool(found)

    run_until(service, stored)
    row = found[0] if found else None
    sink = service.sink
    assert row is not None, "the heartbeats of the killed run never reached run_heartbeats"
    beat_at = _utc(row[1])
    assert _statuses(sink, beat_at + dt.timedelta(seconds=LOST_AFTER_S + MARGIN_S), 3600) == {run_id: "lost"}
    assert _statuses(sink, beat_at + dt.timedelta(seconds=MARGIN_S), 3600) == {run_id: "running"}
