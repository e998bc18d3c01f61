"""How runs end: SIGTERM, Ctrl-C, and forked children (DataLoader workers) — each in a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from spool_reader import spooled

from runstream.consumer import ConsumerService, ConsumerSettings


def start_script(body: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", body], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **env})


TRAIN_UNTIL_KILLED = """
import runstream, time
run = runstream.init("exit-paths", "victim", sample_interval=0)
step = 0
while True:
    run.log({"loss": 1.0 / (step + 1), "acc": step / 1e6}, step=step)
    step += 1
    if step % 200 == 0:
        assert run.flush() == 0
        print(f"acknowledged {step}", flush=True)
    time.sleep(0.0005)
"""


@pytest.mark.integration
def test_sigterm_mid_run_ends_killed_with_every_acknowledged_point_stored(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str
) -> None:
    child = start_script(TRAIN_UNTIL_KILLED, RUNSTREAM_KAFKA=kafka_bootstrap, RUNSTREAM_TOPIC_PREFIX=topic_prefix)
    assert child.stdout is not None
    acknowledged = 0
    for line in child.stdout:
        acknowledged = int(line.split()[1])
        if acknowledged >= 1000:
            break
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGTERM, f"the process still dies of SIGTERM; stderr:\n{stderr}"

    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn,
                                               topic_prefix=topic_prefix))
    stop = threading.Event()
    timer = threading.Timer(60, stop.set)
    timer.start()
    db = service.sink.database

    def finished(_stats: Any) -> bool:
        return bool(service.sink.client.query(f"SELECT count() FROM {db}.run_finishes").result_rows[0][0])

    service.run(stop, stop_when=finished)
    timer.cancel()
    client = service.sink.client
    [(status, error)] = client.query(f"SELECT status, error FROM {db}.run_finishes FINAL").result_rows
    assert (status, error) == ("killed", "signal SIGTERM")
    steps = client.query(f"SELECT uniqExact(step), max(step), count() FROM {db}.metric_points FINAL "
                         "WHERE metric = 'loss'").result_rows[0]
    assert steps[0] >= acknowledged and steps[1] + 1 == steps[0], "every step up to the last is there, once"


def test_ctrl_c_marks_the_run_killed(tmp_path: Path) -> None:
    body = (
        "import runstream\n"
        "run = runstream.init('p', sample_interval=0)\n"
        "run.log({'loss': 1.0}, step=0)\n"
        "raise KeyboardInterrupt\n"
    )
    child = start_script(body, RUNSTREAM_SPOOL=str(tmp_path))
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGINT, "Python still exits as interrupted"
    [finished] = spooled(tmp_path, "run_finished")
    assert finished["status"] == "killed"


FORKING_JOB = """
import os, sys, runstream
run = runstream.init("p", "forker", sample_interval=0)
for step in range(10):
    run.log({"loss": float(step)}, step=step)
run.flush()
pid = os.fork()
if pid == 0:
    # A DataLoader-style worker: logs (ignored) and exits through the normal exit path.
    run.log({"loss": -1.0}, step=999)
    sys.exit(0)
os.waitpid(pid, 0)
for step in range(10, 20):
    run.log({"loss": float(step)}, step=step)
run.finish()
"""


def test_a_forked_child_neither_duplicates_nor_corrupts(tmp_path: Path) -> None:
    child = start_script(FORKING_JOB, RUNSTREAM_SPOOL=str(tmp_path))
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    steps = sorted(s for batch in spooled(tmp_path, "metric_steps") for s in batch["steps"])
    assert steps == list(range(20))
    assert len(spooled(tmp_path, "run_started")) == 1
    assert [f["status"] for f in spooled(tmp_path, "run_finished")] == ["ok"]
    assert not list(tmp_path.rglob("*.open"))
