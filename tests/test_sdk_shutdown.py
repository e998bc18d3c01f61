"""SIGTERM ends a training job within the shutdown bound wherever it lands, the run ends `killed`, and
every point acknowledged by a flush is stored (issue 10, test 6: the training-job part).

Real processes and real signals: a training subprocess logs, prints a marker right before the call
the signal must interrupt, and the test sends SIGTERM as soon as it reads the marker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fault_table import FaultRow, FaultTable
from spool_reader import read_spool

from runstream.consumer import ConsumerService, ConsumerSettings

BOUND_S = 5.0  # RUNSTREAM_SHUTDOWN_TIMEOUT given to the children
SLACK_S = 2.5  # process start-up of the signal path and interpreter teardown, on a loaded 2-core machine

# Logs 10 metrics a step; flushes once (acknowledged), then logs a large volume and flushes again:
# that second flush is what SIGTERM interrupts. "flushed" is printed only if it returned first.
# (The SDK before this change took 31 s with the broker away, and 120 s with a live broker when the
# signal landed in a delivery callback run by flush() itself; now well under the 5 s bound.)
FLUSHING_JOB = """
import sys, time, runstream
run = runstream.init("shutdown", "in-flush", sample_interval=0)
names = [f"m{i}" for i in range(10)]
step = 0
def burst(count):
    global step
    for _ in range(count):
        run.log(dict.fromkeys(names, float(step)), step=step)
        step += 1
burst(int(sys.argv[1]))
if step:  # with the broker away (no first burst) nothing can be acknowledged
    assert run.flush() == 0
print(f"acknowledged {step}", flush=True)
burst(int(sys.argv[2]))  # log() outpaces the worker: the queue is full, flush() has seconds of work
print(f"flushing {step}", flush=True)
left = run.flush()
print(f"flushed {left}", flush=True)
time.sleep(120)
"""

LOGGING_JOB = """
import time, runstream
run = runstream.init("shutdown", "logging", sample_interval=0)
step = 0
while True:
    run.log({"loss": 1.0 / (step + 1), "acc": step / 1e6}, step=step)
    step += 1
    if step % 500 == 0:
        assert run.flush() == 0
        print(f"acknowledged {step}", flush=True)
"""


def start(body: str, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", body, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "RUNSTREAM_SHUTDOWN_TIMEOUT": str(BOUND_S), **env})


def read_until(child: subprocess.Popen[str], prefix: str, timeout_s: float) -> tuple[int, list[str]]:
    """Lines up to the first starting with `prefix` (its number returned); fails after `timeout_s`."""
    assert child.stdout is not None
    lines: list[str] = []
    found: list[int] = []

    def reader() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line.strip())
            if line.startswith(prefix):
                found.append(int(line.split()[1]))
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not found:
        child.kill()
        _, stderr = child.communicate(timeout=30)
        pytest.fail(f"no {prefix!r} line within {timeout_s}s; output {lines}; stderr:\n{stderr[-3000:]}")
    return found[0], lines


def terminate_and_time(child: subprocess.Popen[str]) -> tuple[float, str, str]:
    """SIGTERM now; seconds until the process is gone (it must be, well within the test's timeout)."""
    sent = time.monotonic()
    child.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = child.communicate(timeout=BOUND_S + 30)
    except subprocess.TimeoutExpired:
        child.kill()
        _, stderr = child.communicate(timeout=30)
        pytest.fail(f"still running {BOUND_S + 30:.0f}s after SIGTERM (bound {BOUND_S}s); stderr:\n{stderr[-3000:]}")
    return time.monotonic() - sent, stdout, stderr


def consume_until_finished(kafka: str, dsn: str, prefix: str) -> Any:
    service = ConsumerService(ConsumerSettings(kafka=kafka, clickhouse=dsn, topic_prefix=prefix))
    stop = threading.Event()
    timer = threading.Timer(180, stop.set)  # 150,000 points first, on a machine loaded by other test workers
    timer.start()
    db = service.sink.database

    def finished(_stats: Any) -> bool:
        return bool(service.sink.client.query(f"SELECT count() FROM {db}.run_finishes").result_rows[0][0])

    try:
        service.run(stop, stop_when=finished)
    finally:
        timer.cancel()
    return service


@pytest.mark.integration
@pytest.mark.fault
def test_sigterm_inside_flush_exits_within_the_bound_with_every_acknowledged_point(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str, tmp_path: Path, fault_table: FaultTable
) -> None:
    child = start(FLUSHING_JOB, "3000", "150000", RUNSTREAM_KAFKA=kafka_bootstrap,
                  RUNSTREAM_TOPIC_PREFIX=topic_prefix, RUNSTREAM_SPOOL=str(tmp_path / "spool"))
    acknowledged, _ = read_until(child, "acknowledged", 120)
    logged, _ = read_until(child, "flushing", 300)
    took, stdout, stderr = terminate_and_time(child)
    assert "flushed" not in stdout, "the signal landed inside flush(), not after it returned"
    assert child.returncode == -signal.SIGTERM, f"the process still dies of SIGTERM; stderr:\n{stderr[-3000:]}"
    assert took < BOUND_S + SLACK_S, f"SIGTERM inside flush() took {took:.1f}s (bound {BOUND_S}s)"

    service = consume_until_finished(kafka_bootstrap, clickhouse_dsn, topic_prefix)
    client, db = service.sink.client, service.sink.database
    [(status, error)] = client.query(f"SELECT status, error FROM {db}.run_finishes FINAL").result_rows
    assert (status, error) == ("killed", "signal SIGTERM")
    expected_sum = 10 * sum(range(acknowledged))
    stored = {final: client.query(f"SELECT count() FROM {db}.metric_points {final} WHERE step < {acknowledged}")
              .result_rows[0][0] for final in ("FINAL", "")}
    fault_table.record(FaultRow(f"SIGTERM of a training job inside flush() (exit bound {BOUND_S:.0f} s; "
                                "acknowledged points)", 10 * acknowledged, stored["FINAL"], stored[""], took))
    for final in ("FINAL", ""):
        count, steps, total = client.query(
            f"SELECT count(), uniqExact(step), sum(value) FROM {db}.metric_points {final} "
            f"WHERE step < {acknowledged}").result_rows[0]
        assert (count, steps, total) == (10 * acknowledged, acknowledged, expected_sum), \
            f"every acknowledged point stored once ({final or 'without FINAL'})"
    later = client.query(f"SELECT count() FROM {db}.metric_points FINAL WHERE step >= {acknowledged}").result_rows
    assert later[0][0] <= 10 * (logged - acknowledged)


@pytest.mark.integration
def test_sigterm_inside_flush_with_the_broker_away_spools_what_was_accepted(tmp_path: Path) -> None:
    """Nothing reaches a broker that is not there: flush() would wait out the 30 s delivery timeout.
    SIGTERM must still end the job within the bound, and what librdkafka held is spooled, not lost."""
    with socket.socket() as closed:  # a port the OS gave us and nobody listens on
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
    spool = tmp_path / "spool"
    child = start(FLUSHING_JOB, "0", "2000", RUNSTREAM_KAFKA=address, RUNSTREAM_SPOOL=str(spool))
    read_until(child, "acknowledged", 120)
    logged, _ = read_until(child, "flushing", 120)
    took, stdout, stderr = terminate_and_time(child)
    assert "flushed" not in stdout
    assert child.returncode == -signal.SIGTERM, stderr[-3000:]
    assert took < BOUND_S + SLACK_S, f"SIGTERM took {took:.1f}s with the broker away (bound {BOUND_S}s)"
    events = read_spool(spool)
    [finished] = events["run_finished"]
    assert (finished["status"], finished["error"]) == ("killed", "signal SIGTERM")
    steps = sorted(s for batch in events["metric_steps"] for s in batch["steps"])
    assert steps == sorted(list(range(logged)) * 10), "every accepted point is in the spool, once"


def test_sigterm_while_logging_ends_killed_within_the_bound(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    child = start(LOGGING_JOB, RUNSTREAM_SPOOL=str(spool))
    acknowledged = 0
    while acknowledged < 5000:
        acknowledged, _ = read_until(child, "acknowledged", 120)
    took, _, stderr = terminate_and_time(child)
    assert child.returncode == -signal.SIGTERM, stderr[-3000:]
    assert took < BOUND_S + SLACK_S, f"SIGTERM while logging took {took:.1f}s"
    events = read_spool(spool)
    [finished] = events["run_finished"]
    assert (finished["status"], finished["error"]) == ("killed", "signal SIGTERM")
    loss_steps = sorted(
        step for batch in events["metric_steps"]
        for step, index in zip(batch["steps"], batch["metric_index"], strict=True)
        if batch["metric_names"][index] == "loss"
    )
    assert loss_steps[:acknowledged] == list(range(acknowledged)), "every acknowledged step, once"
    assert len(set(loss_steps)) == len(loss_steps)
    assert finished["summary"]["loss"] == pytest.approx(1.0 / (loss_steps[-1] + 1))


def test_the_bounds_come_from_settings_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from runstream.producer.settings import ProducerSettings

    defaults = ProducerSettings()
    assert defaults.shutdown_timeout_s == 10.0 and defaults.queue_capacity_bytes <= 64 * 2**20
    monkeypatch.setenv("RUNSTREAM_SHUTDOWN_TIMEOUT", "2.5")
    monkeypatch.setenv("RUNSTREAM_QUEUE_CAPACITY_BYTES", "1000000")
    resolved = ProducerSettings.resolve()
    assert (resolved.shutdown_timeout_s, resolved.queue_capacity_bytes) == (2.5, 1_000_000)
    assert ProducerSettings.resolve(shutdown_timeout_s=7.0).shutdown_timeout_s == 7.0, "arguments win"
    monkeypatch.setenv("RUNSTREAM_SHUTDOWN_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="RUNSTREAM_SHUTDOWN_TIMEOUT: shutdown_timeout_s must be float, got 'soon'"):
        ProducerSettings.resolve()
    with pytest.raises(ValueError, match="shutdown_timeout_s: expected a positive number of seconds, got 0"):
        ProducerSettings(shutdown_timeout_s=0)
    with pytest.raises(ValueError, match="queue_capacity_bytes: expected at least 1, got 0"):
        ProducerSettings(queue_capacity_bytes=0)
