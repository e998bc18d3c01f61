"""End to end on the real broker: SDK → Kafka → consumer group → ClickHouse (chDB) → SQL."""

from __future__ import annotations

import dataclasses
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from consuming import consume_until

import runstream
from runstream.consumer import ClickHouseSink, ConsumerService, ConsumerSettings
from runstream.consumer.batch import Batch
from runstream.producer.run import producer_stats
from runstream.schemas import Encoder, bundled_catalogue, dead_letter_topic, topic_for

pytestmark = pytest.mark.integration

RUNS = 5
STEPS = 400
METRICS = ("loss", "acc", "lr")




def produce_fleet(kafka: str, prefix: str) -> tuple[dict[str, dict[str, list[float]]], int]:
    """Log RUNS runs through the SDK; return what was logged (run id → metric → values by step) and events sent."""
    rng = random.Random(7)
    logged: dict[str, dict[str, list[float]]] = {}
    before = producer_stats()["sent_events"]
    for index in range(RUNS):
        run = runstream.init("e2e", f"run-{index}", params={"lr": 10 ** -rng.uniform(2, 4), "seed": index},
                             kafka=kafka, topic_prefix=prefix)
        values: dict[str, list[float]] = {m: [] for m in METRICS}
        for step in range(STEPS):
            point = {"loss": rng.random(), "acc": rng.random(), "lr": 0.1 / (step + 1)}
            run.log(point, step=step)
            for name, value in point.items():
                values[name].append(value)
        run.finish()
        logged[run.run_id] = values
    return logged, producer_stats()["sent_events"] - before


def test_every_logged_point_arrives_exactly_once_and_sql_picks_the_same_best_run(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str
) -> None:
    logged, events = produce_fleet(kafka_bootstrap, topic_prefix)
    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn,
                                               topic_prefix=topic_prefix, batch_max_points=3000))
    stats = consume_until(service, events)
    assert stats.dead_letters == 0
    assert stats.points == RUNS * STEPS * len(METRICS)
    assert stats.batches > 1, "small batches force several write-then-commit cycles"

    client, db = service.sink.client, service.sink.database
    count = client.query(f"SELECT count() FROM {db}.metric_points FINAL").result_rows[0][0]
    assert count == RUNS * STEPS * len(METRICS)
    per_metric = dict(client.query(f"SELECT metric, count() FROM {db}.metric_points FINAL GROUP BY metric").result_rows)
    assert per_metric == {m: RUNS * STEPS for m in METRICS}
    sums = dict(client.query(f"SELECT run_id, sum(value) FROM {db}.metric_points FINAL WHERE metric = 'acc' "
                             "GROUP BY run_id").result_rows)
    assert sums.keys() == logged.keys()
    for run_id, values in logged.items():
        assert sums[run_id] == pytest.approx(sum(values["acc"]), rel=1e-12)

    best_sql = client.query(
        f"SELECT run_id FROM {db}.metric_points FINAL WHERE metric = 'acc' "
        "GROUP BY run_id ORDER BY argMax(value, step) DESC LIMIT 1"
    ).result_rows[0][0]
    best_python = max(logged, key=lambda run_id: logged[run_id]["acc"][-1])
    assert best_sql == best_python
    statuses = client.query(f"SELECT status, count() FROM {db}.run_finishes FINAL GROUP BY status").result_rows
    assert statuses == [("ok", RUNS)]
    assert client.query(f"SELECT count() FROM {db}.run_params FINAL").result_rows[0][0] == RUNS * 2


class CrashAfterInsert(ClickHouseSink):
    """Inserts for real, then fails like a process dying before the commit (fault injection, not a mock)."""

    def write(self, batch: Batch) -> None:
        super().write(batch)
        raise RuntimeError("simulated crash between insert and commit")


def test_a_crash_between_insert_and_commit_doubles_nothing(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str
) -> None:
    logged, events = produce_fleet(kafka_bootstrap, topic_prefix)
    settings = ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn, topic_prefix=topic_prefix,
                                group_id="crashy", batch_max_points=100_000, batch_max_wait_s=2.0)
    # The crashing consumer's first write holds every message (its batch closes at `events` messages, not
    # after a wait that a slow partition assignment could beat), so it inserts points before it fails.
    crashing = ConsumerService(dataclasses.replace(settings, batch_max_messages=events, batch_max_wait_s=120.0),
                               sink=CrashAfterInsert(clickhouse_dsn))
    with pytest.raises(RuntimeError, match="simulated crash"):
        consume_until(crashing, events)
    db = crashing.sink.database
    inserted_once = crashing.sink.client.query(f"SELECT count() FROM {db}.metric_points").result_rows[0][0]
    assert inserted_once > 0, "the crashed consumer did insert before failing"

    # A new member of the same group gets the uncommitted messages again and writes them again.
    restarted = ConsumerService(settings)
    stats = consume_until(restarted, events)
    assert stats.events == events, "nothing was committed by the crashed consumer, so all is redelivered"
    client = restarted.sink.client
    raw = client.query(f"SELECT count() FROM {db}.metric_points").result_rows[0][0]
    final = client.query(f"SELECT count() FROM {db}.metric_points FINAL").result_rows[0][0]
    assert raw > final == RUNS * STEPS * len(METRICS)
    total = client.query(f"SELECT sum(value) FROM {db}.metric_points FINAL WHERE metric = 'loss'").result_rows[0][0]
    assert total == pytest.approx(sum(sum(v["loss"]) for v in logged.values()), rel=1e-12)


def test_bad_messages_go_to_the_dead_letter_topic_with_their_bytes(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str
) -> None:
    encoder = Encoder(bundled_catalogue())
    good = encoder.encode("run_finished", {"event_id": "e1", "run_id": "r1", "timestamp_us": 1, "status": "ok",
                                           "exit_code": 0, "error": None, "summary": {}})
    no_run = encoder.encode("run_finished", {"event_id": "e2", "run_id": "", "timestamp_us": 1, "status": "ok",
                                             "exit_code": 0, "error": None, "summary": {}})
    negative_step = encoder.encode("metric_steps", {"event_id": "e3", "run_id": "r1", "timestamp_us": 1,
                                                    "metric_names": ["loss"], "metric_index": [0], "steps": [-5],
                                                    "values": [1.0], "times_us": [1]})
    garbage = b"definitely not avro"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    topic = topic_for(topic_prefix, "run_finished")
    for value in (garbage, good, no_run):
        producer.produce(topic, value=value, key=b"r1")
    producer.produce(topic_for(topic_prefix, "metric_steps"), value=negative_step, key=b"r1")
    assert producer.flush(30) == 0

    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn,
                                               topic_prefix=topic_prefix))
    stats = consume_until(service, 4)
    assert (stats.events, stats.dead_letters) == (1, 3)
    assert service.dead_letters.counts == {"not_single_object": 1, "missing_run_id": 1, "negative_step": 1}

    reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "dlq-reader",
                       "auto.offset.reset": "earliest"})
    reader.subscribe([dead_letter_topic(topic_prefix)])
    letters: list[Any] = []
    for _ in range(60):
        letters += [m for m in reader.consume(10, 1.0) if m.error() is None]
        if len(letters) >= 3:
            break
    reader.close()
    assert sorted(m.value() for m in letters) == sorted([garbage, no_run, negative_step])
    by_value = {m.value(): dict(m.headers()) for m in letters}
    assert by_value[garbage][b"runstream.reason".decode()] == b"not_single_object"
    assert by_value[negative_step]["runstream.topic"] == topic_for(topic_prefix, "metric_steps").encode()
    assert service.sink.client.query(
        f"SELECT count() FROM {service.sink.database}.run_finishes").result_rows[0][0] == 1


def test_an_offline_run_synced_later_arrives_whole(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str, tmp_path: Path
) -> None:
    run = runstream.init("offline", "air-gapped", spool=str(tmp_path), sample_interval=0)
    for step in range(250):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
    run.finish()
    done = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "sync", str(tmp_path), "--kafka", kafka_bootstrap,
         "--topic-prefix", topic_prefix], capture_output=True, text=True, check=False, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # one file per event type: run_started, metric_steps, run_finished and the heartbeat sent at the start
    synced = re.search(r"synced 4 files \((\d+) events\)", done.stdout)
    assert synced, done.stdout
    events = int(synced.group(1))
    assert events >= 4
    assert not list(tmp_path.rglob("*.avro")), "synced files are removed"
    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn,
                                               topic_prefix=topic_prefix))
    stats = consume_until(service, events)
    assert (stats.events, stats.points) == (events, 250)
