"""Fault 1 of the matrix: the partition leader broker killed -9 mid-run on the 3-broker SASL_SSL cluster.

A real training process logs through the SDK with SCRAM credentials from `RUNSTREAM_KAFKA_*` variables;
while it logs, the broker leading its metric partition is killed with SIGKILL and restarted 5 s later
(the scenario, not a wait for a race). The consumer, also over SASL_SSL, loads everything into chDB and
the counts and sums are compared with what the process logged, with and without FINAL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from fault_table import FaultRow, FaultTable
from kafka_cluster import KafkaCluster

from runstream.consumer import ConsumerService, ConsumerSettings
from runstream.consumer.dsn import connect
from runstream.consumer.topics_admin import ensure_topics
from runstream.producer.kafka_settings import KafkaSettings, normalise_options
from runstream.schemas import topic_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.fault]

STEPS = 24_000
METRICS = 2
HALF = STEPS // 3

TRAINING = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import runstream

    steps, pause_at, go = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    run = runstream.init("fleet-faults", name="leader-killed", sample_interval=0)
    print("RUN", run.run_id, flush=True)
    for step in range(steps):
        run.log({"loss": step * 0.001, "acc": float(step % 7)}, step=step)
        if step % 1000 == 999:
            assert run.flush() == 0
        if step == pause_at:
            assert run.flush() == 0
            print("PAUSED", step, flush=True)
            deadline = time.monotonic() + 120
            while not go.exists():
                assert time.monotonic() < deadline, "the test never said go"
                time.sleep(0.05)
    left = run.flush()
    run.finish()
    print("DONE", left, flush=True)
    """
)


def _expected_sum() -> float:
    return sum(step * 0.001 + float(step % 7) for step in range(STEPS))


def _read_line(process: subprocess.Popen[str], prefix: str, deadline: float) -> str:
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"the training process never printed {prefix!r} (exit {process.poll()})")


def test_partition_leader_killed_mid_run(
    kafka_cluster: KafkaCluster, clickhouse_dsn: str, tmp_path: Path, fault_table: FaultTable
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    settings = KafkaSettings.of(kafka_cluster.sasl_bootstrap, kafka_cluster.sasl_config())
    ensure_topics(settings, prefix, partitions=1)  # every event of the run in partition 0: one leader to kill
    metric_topic = topic_for(prefix, "metric_steps")
    leader = kafka_cluster.leader(metric_topic, 0)
    go = tmp_path / "go"
    sasl = kafka_cluster.sasl_config()
    env = {
        **os.environ,
        "RUNSTREAM_KAFKA": kafka_cluster.sasl_bootstrap,
        "RUNSTREAM_TOPIC_PREFIX": prefix,
        "RUNSTREAM_SPOOL": str(tmp_path / "spool"),
        **{f"RUNSTREAM_KAFKA_{key.upper().replace('.', '_')}": value for key, value in sasl.items()},
    }
    process = subprocess.Popen(
        [sys.executable, "-c", TRAINING, str(STEPS), str(HALF), str(go)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = ""
    try:
        deadline = time.monotonic() + 240
        run_id = _read_line(process, "RUN", deadline).split()[1]
        _read_line(process, "PAUSED", deadline)
        killed_at = time.monotonic()
        kafka_cluster.kill(leader)
        go.touch()  # the run goes on logging while its leader is dead
        new_leader = kafka_cluster.wait_for_leader_change(metric_topic, 0, leader)
        elected_s = time.monotonic() - killed_at
        time.sleep(max(0.0, 5.0 - (time.monotonic() - killed_at)))  # the scenario: restarted 5 s after the kill
        kafka_cluster.start_broker(leader)
        done = _read_line(process, "DONE", deadline)
        rest, _ = process.communicate(timeout=120)
        output = rest
    finally:
        if process.poll() is None:
            process.kill()
        kafka_cluster.heal()
    assert process.returncode == 0, output
    assert done == "DONE 0", f"events left undelivered: {done}"
    assert new_leader != leader
    assert sasl["sasl.password"] not in output

    consumer = ConsumerService(ConsumerSettings(
        kafka=kafka_cluster.sasl_bootstrap, clickhouse=clickhouse_dsn, topic_prefix=prefix,
        group_id=f"g-{uuid.uuid4().hex[:8]}", partitions=1, kafka_options=normalise_options(sasl),
    ))
    # every point, and the run_finished event, which comes on a topic of its own and may land in a later batch
    consumer.run(stop_when=lambda stats: stats.points >= STEPS * METRICS
                 and consumer.sink.rows_written["run_finishes"] >= 1, idle_exit_s=60)

    client, database = connect(clickhouse_dsn)
    final = client.query(f"SELECT count(), sum(value) FROM {database}.metric_points FINAL "
                         "WHERE run_id = {r:String}", parameters={"r": run_id}).result_rows[0]
    raw = client.query(f"SELECT count() FROM {database}.metric_points WHERE run_id = {{r:String}}",
                       parameters={"r": run_id}).result_rows[0][0]
    finished = client.query(f"SELECT status FROM {database}.run_finishes FINAL WHERE run_id = {{r:String}}",
                            parameters={"r": run_id}).result_rows
    row = fault_table.record(FaultRow("partition leader broker killed -9 mid-run (SASL_SSL, rf 3)",
                                      STEPS * METRICS, int(final[0]), int(raw), elected_s))
    assert row.lost == 0 and row.doubled == 0
    assert raw == STEPS * METRICS, "the idempotent producer must not write a point twice"
    assert final[1] == pytest.approx(_expected_sum(), rel=1e-12)
    assert finished == [("ok",)]
