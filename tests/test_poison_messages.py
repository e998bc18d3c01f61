"""No poison message stops the consumer group (issue 10, tests 4 and 8, and the bisection of rejected inserts).

Real broker, real chDB, real bytes: every poison message is valid Kafka and, where it says so, valid
Avro; the consumer must dead-letter it with its original bytes and a reason, store every good event
around it (counted with and without FINAL), commit past it, and a later member of the group must
never see it again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fault_table import FaultRow, FaultTable

from runstream.consumer import ClickHouseSink, ConsumerService, ConsumerSettings
from runstream.consumer.batch import Batch, InvalidEvent
from runstream.consumer.clickhouse_sink import partition_groups
from runstream.consumer.service import ConsumeStats
from runstream.schemas import DecodeError, Decoder, Encoder, bundled_catalogue, dead_letter_topic, topic_for

pytestmark = pytest.mark.integration

ENCODER = Encoder(bundled_catalogue())
NOW_US = time.time_ns() // 1000
GROUP_TIMEOUT_S = 60.0


# -- events ----------------------------------------------------------------------------------------

def metric_steps(run_id: str, steps: int, *, times_us: list[int] | None = None) -> dict[str, Any]:
    times = times_us if times_us is not None else [NOW_US + step for step in range(steps)]
    return {"event_id": uuid.uuid4().hex, "run_id": run_id, "timestamp_us": NOW_US, "metric_names": ["loss"],
            "metric_index": [0] * steps, "steps": list(range(steps)),
            "values": [1.0 / (step + 1) for step in range(steps)], "times_us": times}


def gpu_sample(index: int, *, time_us: int = NOW_US, **fields: Any) -> dict[str, Any]:
    sample = {"time_us": time_us, "gpu_index": index, "gpu_uuid": f"GPU-{index}", "gpu_model": "H100",
              "utilization_pct": 90.0, "memory_used_bytes": 2**30 * (index + 1), "memory_total_bytes": 80 * 2**30,
              "power_w": 600.0, "temperature_c": 60.0, "sm_clock_mhz": 1980, "memory_clock_mhz": 2619,
              "power_limit_w": None, "throttle_reasons": None, "process_memory_bytes": None}
    sample.update(fields)
    return sample


def gpu_samples(run_id: str, samples: list[dict[str, Any]], **host: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "run_id": run_id, "timestamp_us": NOW_US, "host": "node-1",
            "samples": samples, "host_cpu_pct": None, "host_memory_used_bytes": None,
            "host_memory_total_bytes": None, "process_rss_bytes": None, **host}


def run_finished(run_id: str, status: str = "ok") -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "run_id": run_id, "timestamp_us": NOW_US, "status": status,
            "exit_code": 0, "error": None, "summary": {"loss": 0.5}}


def encode(event_type: str, record: dict[str, Any]) -> bytes:
    return ENCODER.encode(event_type, record)


# -- plumbing --------------------------------------------------------------------------------------

def produce(kafka: str, prefix: str, messages: list[tuple[str, bytes | None]], key: bytes = b"run") -> None:
    """Produce (event type, value) pairs in order, all with one key: one partition, one batch."""
    producer = Producer({"bootstrap.servers": kafka, "acks": "all"})
    for event_type, value in messages:
        producer.produce(topic_for(prefix, event_type), value=value, key=key)
    assert producer.flush(30) == 0


def consume(service: ConsumerService, until: Callable[[ConsumeStats], bool]) -> ConsumeStats:
    stop = threading.Event()
    timer = threading.Timer(GROUP_TIMEOUT_S, stop.set)
    timer.start()
    try:
        stats = service.run(stop, stop_when=until)
    finally:
        timer.cancel()
    assert not stop.is_set(), f"the consumer did not get through its messages in {GROUP_TIMEOUT_S}s: {stats}"
    return stats


def read_dead_letters(kafka: str, prefix: str, count: int) -> list[Any]:
    reader = Consumer({"bootstrap.servers": kafka, "group.id": f"dlq-{uuid.uuid4().hex[:8]}",
                       "auto.offset.reset": "earliest"})
    reader.subscribe([dead_letter_topic(prefix)])
    letters: list[Any] = []
    deadline = time.monotonic() + 30
    try:
        while len(letters) < count and time.monotonic() < deadline:
            letters += [m for m in reader.consume(10, 0.5) if m.error() is None]
        # Anything beyond `count` would be a dead letter too many: read a little longer.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            letters += [m for m in reader.consume(10, 0.2) if m.error() is None]
    finally:
        reader.close()
    return letters


def headers(message: Any) -> dict[str, bytes]:
    return {name: value for name, value in (message.headers() or [])}


def assert_committed_to_the_end(kafka: str, prefix: str, group: str, event_types: tuple[str, ...]) -> None:
    """The group's committed offset of every partition holding messages is its high watermark."""
    probe = Consumer({"bootstrap.servers": kafka, "group.id": group, "enable.auto.commit": False})
    try:
        for event_type in event_types:
            topic = topic_for(prefix, event_type)
            partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
            committed = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
            for tp in committed:
                _low, high = probe.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
                if high > 0:
                    assert tp.offset == high, f"{topic}[{tp.partition}]: committed {tp.offset}, end {high}"
    finally:
        probe.close()


def scalar(service: ConsumerService, sql: str) -> Any:
    return service.sink.client.query(sql.format(db=service.sink.database)).result_rows[0][0]


def settings(kafka: str, dsn: str, prefix: str, group: str) -> ConsumerSettings:
    return ConsumerSettings(kafka=kafka, clickhouse=dsn, topic_prefix=prefix, group_id=group,
                            batch_max_wait_s=0.5, partitions=2)


# -- test 4: values the column types cannot hold ---------------------------------------------------

@pytest.mark.fault
def test_type_range_violations_are_dead_lettered_and_the_group_moves_past_them(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str, fault_table: FaultTable
) -> None:
    good_samples = [gpu_sample(index) for index in range(4)]
    good = [
        ("metric_steps", encode("metric_steps", metric_steps("run-a", 300))),
        ("gpu_samples", encode("gpu_samples", gpu_samples("run-a", good_samples, host_memory_used_bytes=2**33))),
        ("run_finished", encode("run_finished", run_finished("run-a"))),
        ("metric_steps", encode("metric_steps", metric_steps("run-b", 200))),
    ]
    poison = {
        "gpu_index 70000": encode("gpu_samples", gpu_samples("run-p", [gpu_sample(0), gpu_sample(70000)])),
        "gpu_index -1": encode("gpu_samples", gpu_samples("run-p", [gpu_sample(-1)])),
        "memory_used_bytes -5": encode("gpu_samples", gpu_samples("run-p", [gpu_sample(1, memory_used_bytes=-5)])),
        "sm_clock_mhz -1": encode("gpu_samples", gpu_samples("run-p", [gpu_sample(2, sm_clock_mhz=-1)])),
        "host_memory_used_bytes -1": encode("gpu_samples", gpu_samples("run-p", [], host_memory_used_bytes=-1)),
        "time before 1900": encode("metric_steps", metric_steps("run-p", 3, times_us=[NOW_US, -(2**61), NOW_US])),
    }
    expected_columns = {
        "gpu_index 70000": "gpu_samples.gpu_index", "gpu_index -1": "gpu_samples.gpu_index",
        "memory_used_bytes -5": "gpu_samples.memory_used_bytes", "sm_clock_mhz -1": "gpu_samples.sm_clock_mhz",
        "host_memory_used_bytes -1": "host_samples.host_memory_used_bytes", "time before 1900": "metric_points.time",
    }
    # Poison first, in the middle and last, among the good events.
    messages = [("gpu_samples", poison["gpu_index 70000"]), good[0], ("gpu_samples", poison["gpu_index -1"]),
                ("gpu_samples", poison["memory_used_bytes -5"]), good[1], ("gpu_samples", poison["sm_clock_mhz -1"]),
                ("gpu_samples", poison["host_memory_used_bytes -1"]), good[2], good[3],
                ("metric_steps", poison["time before 1900"])]
    produce(kafka_bootstrap, topic_prefix, messages)

    group = "poison-ranges"
    first = ConsumerService(settings(kafka_bootstrap, clickhouse_dsn, topic_prefix, group))
    started = time.monotonic()
    stats = consume(first, lambda s: s.messages >= len(messages) and s.events + s.dead_letters >= len(messages))
    fault_table.record(FaultRow(
        f"{len(poison)} poison events (type-range violations) among good ones: dead-lettered", 500,
        scalar(first, "SELECT count() FROM {db}.metric_points FINAL"),
        scalar(first, "SELECT count() FROM {db}.metric_points"), time.monotonic() - started))
    assert (stats.events, stats.dead_letters) == (len(good), len(poison))
    assert first.dead_letters.counts == {"out_of_range": len(poison)}
    assert first.metrics.dead_letters.labels("out_of_range")._value.get() == len(poison)

    # Good rows stored, once, with and without FINAL; nothing of run-p's poison events.
    for final in ("", "FINAL"):
        assert scalar(first, f"SELECT count() FROM {{db}}.metric_points {final}") == 500
        assert scalar(first, f"SELECT sum(value) FROM {{db}}.metric_points {final}") == pytest.approx(
            sum(1.0 / (s + 1) for s in range(300)) + sum(1.0 / (s + 1) for s in range(200)), rel=1e-12)
        assert scalar(first, f"SELECT count() FROM {{db}}.gpu_samples {final}") == 4
        assert scalar(first, f"SELECT sum(memory_used_bytes) FROM {{db}}.gpu_samples {final}") == 2**30 * 10
        assert scalar(first, f"SELECT count() FROM {{db}}.host_samples {final}") == 1
        assert scalar(first, f"SELECT count() FROM {{db}}.run_finishes {final}") == 1
    assert scalar(first, "SELECT count() FROM {db}.metric_points WHERE run_id = 'run-p'") == 0
    assert scalar(first, "SELECT count() FROM {db}.gpu_samples WHERE run_id = 'run-p'") == 0

    # Each poison event in the dead-letter topic with its original bytes, its reason and the column named.
    letters = read_dead_letters(kafka_bootstrap, topic_prefix, len(poison))
    assert sorted(m.value() for m in letters) == sorted(poison.values())
    for name, value in poison.items():
        letter = next(m for m in letters if m.value() == value)
        assert headers(letter)["runstream.reason"] == b"out_of_range", name
        assert expected_columns[name].encode() in headers(letter)["runstream.error"], name

    # Offsets are committed past everything; a later member of the group never sees the poison again.
    assert_committed_to_the_end(kafka_bootstrap, topic_prefix, group, ("metric_steps", "gpu_samples", "run_finished"))
    sentinel = encode("run_finished", run_finished("run-sentinel"))
    produce(kafka_bootstrap, topic_prefix, [("run_finished", sentinel)])
    second = ConsumerService(settings(kafka_bootstrap, clickhouse_dsn, topic_prefix, group), sink=first.sink)
    again = consume(second, lambda s: s.events >= 1)
    assert (again.messages, again.events, again.dead_letters) == (1, 1, 0)
    assert scalar(second, "SELECT count() FROM {db}.run_finishes FINAL") == 2


# -- bisection: what only the server rejects ------------------------------------------------------

def test_an_insert_the_server_rejects_is_split_until_the_poison_event_is_isolated(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str
) -> None:
    sink = ClickHouseSink(clickhouse_dsn)
    # A rule only the server knows (the column checks cannot): this test database refuses one status.
    sink.client.command(f"ALTER TABLE {sink.database}.run_finishes ADD CONSTRAINT no_poison CHECK status != 'poison'")
    finishes = [run_finished(f"run-{index}") for index in range(7)]
    bad = encode("run_finished", run_finished("run-bad", status="poison"))
    messages: list[tuple[str, bytes | None]] = []
    for index, finish in enumerate(finishes):
        messages.append(("metric_steps", encode("metric_steps", metric_steps(f"run-{index}", 50))))
        messages.append(("run_finished", encode("run_finished", finish)))
        if index == 4:
            messages.append(("run_finished", bad))
    produce(kafka_bootstrap, topic_prefix, messages)

    group = "poison-bisect"
    service = ConsumerService(settings(kafka_bootstrap, clickhouse_dsn, topic_prefix, group), sink=sink)
    stats = consume(service, lambda s: s.events + s.dead_letters >= len(messages))
    assert (stats.events, stats.dead_letters) == (len(messages) - 1, 1)
    assert service.dead_letters.counts == {"rejected_by_clickhouse": 1}
    assert service.metrics.dead_letters.labels("rejected_by_clickhouse")._value.get() == 1
    assert stats.batches == 1, "every message came in one batch, so the rejection was found by splitting it"

    # Every good event stored exactly once: the tables written before the rejected one (metric_points)
    # were not written again while the batch was split.
    for final in ("", "FINAL"):
        assert scalar(service, f"SELECT count() FROM {{db}}.run_finishes {final}") == 7
        assert scalar(service, f"SELECT count() FROM {{db}}.metric_points {final}") == 7 * 50
        assert scalar(service, f"SELECT sum(step) FROM {{db}}.metric_points {final}") == 7 * sum(range(50))
    assert scalar(service, "SELECT count() FROM {db}.run_finishes WHERE status = 'poison'") == 0

    letters = read_dead_letters(kafka_bootstrap, topic_prefix, 1)
    assert [m.value() for m in letters] == [bad]
    meta = headers(letters[0])
    assert meta["runstream.reason"] == b"rejected_by_clickhouse"
    assert meta["runstream.error_code"] == b"469"  # VIOLATED_CONSTRAINT
    assert b"run_finishes" in meta["runstream.error"]
    assert_committed_to_the_end(kafka_bootstrap, topic_prefix, group, ("metric_steps", "run_finished"))


# -- test 8: no value, and one event spanning 120 months ------------------------------------------

@pytest.mark.fault
def test_null_and_empty_values_are_dead_lettered_and_a_120_month_event_is_stored_whole(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str, fault_table: FaultTable
) -> None:
    months = np.datetime64("2015-01", "M") + np.arange(120)
    month_times = [int(t) + 3_600_000_000 for t in months.astype("datetime64[us]").astype(np.int64)]
    long_run = metric_steps("run-decade", 120, times_us=month_times)
    long_gpu = gpu_samples("run-decade", [gpu_sample(0, time_us=t) for t in month_times])
    messages: list[tuple[str, bytes | None]] = [
        ("metric_steps", encode("metric_steps", metric_steps("run-a", 400))),
        ("metric_steps", None),  # a tombstone
        ("run_finished", None),
        ("metric_steps", encode("metric_steps", long_run)),
        ("gpu_samples", encode("gpu_samples", long_gpu)),
        ("run_finished", b""),  # a value of zero bytes
        ("run_finished", encode("run_finished", run_finished("run-a"))),
    ]
    produce(kafka_bootstrap, topic_prefix, messages)

    group = "poison-null"
    service = ConsumerService(settings(kafka_bootstrap, clickhouse_dsn, topic_prefix, group))
    started = time.monotonic()
    stats = consume(service, lambda s: s.events + s.dead_letters >= len(messages))
    fault_table.record(FaultRow(
        "null and empty values and a 120-month event among good ones", 520,
        scalar(service, "SELECT count() FROM {db}.metric_points FINAL"),
        scalar(service, "SELECT count() FROM {db}.metric_points"), time.monotonic() - started))
    assert (stats.events, stats.dead_letters) == (4, 3)
    assert service.dead_letters.counts == {"null_value": 2, "empty_value": 1}

    for final in ("", "FINAL"):
        assert scalar(service, f"SELECT count() FROM {{db}}.metric_points {final} WHERE run_id = 'run-decade'") == 120
        assert scalar(service, f"SELECT sum(value) FROM {{db}}.metric_points {final} WHERE run_id = 'run-decade'") \
            == pytest.approx(sum(long_run["values"]), rel=1e-12)
        assert scalar(service, f"SELECT count() FROM {{db}}.metric_points {final} WHERE run_id = 'run-a'") == 400
        assert scalar(service, f"SELECT count() FROM {{db}}.gpu_samples {final}") == 120
        assert scalar(service, f"SELECT count() FROM {{db}}.run_finishes {final}") == 1
    assert scalar(service, "SELECT uniqExact(_partition_id) FROM {db}.metric_points "
                           "WHERE run_id = 'run-decade'") == 120
    assert scalar(service, "SELECT uniqExact(hour) FROM {db}.gpu_usage_hourly_states") == 120

    letters = read_dead_letters(kafka_bootstrap, topic_prefix, 3)
    assert sorted((headers(m)["runstream.reason"], m.value()) for m in letters) == [
        (b"empty_value", b""), (b"null_value", None), (b"null_value", None)]
    assert_committed_to_the_end(kafka_bootstrap, topic_prefix, group, ("metric_steps", "gpu_samples", "run_finished"))


# -- unit level: the pieces ------------------------------------------------------------------------

def test_decoder_names_a_missing_or_empty_value() -> None:
    decoder = Decoder(bundled_catalogue())
    for value, reason in ((None, "null_value"), (b"", "empty_value")):
        with pytest.raises(DecodeError) as caught:
            decoder.decode(value, partition=3, offset=7)
        assert caught.value.reason == reason
        assert "partition 3, offset 7" in str(caught.value)


def test_a_rejected_event_leaves_the_batch_as_it_was() -> None:
    batch = Batch()
    batch.add("gpu_samples", gpu_samples("run-a", [gpu_sample(0)], host_memory_used_bytes=5))
    before = {table: {name: list(values) for name, values in columns.items()}
              for table, columns in batch.columns.items()}
    # The bad sample comes after a good one, and the host row would be appended after both.
    with pytest.raises(InvalidEvent) as caught:
        batch.add("gpu_samples", gpu_samples("run-b", [gpu_sample(1), gpu_sample(2, gpu_index=2**16)],
                                             host_memory_used_bytes=5))
    assert caught.value.reason == "out_of_range"
    assert "gpu_samples.gpu_index (UInt16) cannot hold 65536" in str(caught.value)
    assert batch.columns == before
    assert (batch.events, batch.table_rows()) == (1, {"gpu_samples": 1, "host_samples": 1})
    with pytest.raises(InvalidEvent, match=r"metric_points\.step \(Int64\)|negative_step|step"):
        batch.add("metric_steps", metric_steps("run-c", 2) | {"steps": [0, -1]})
    with pytest.raises(InvalidEvent) as caught:
        batch.add("run_finished", run_finished("run-d") | {"summary": {"loss": 10**400}})
    assert caught.value.reason == "out_of_range"
    assert "run_finishes.summary" in str(caught.value)


def test_partition_groups_keep_each_insert_within_the_limit() -> None:
    months = np.datetime64("2015-01", "M") + np.arange(250)
    times = np.repeat(months.astype("datetime64[us]").astype(np.int64), 3)
    assert partition_groups(times[:300], 100) is None  # exactly 100 months fit one insert
    groups = partition_groups(times, 100)
    assert groups is not None and [len(g) for g in groups] == [300, 300, 150]
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(times)))
    assert partition_groups(times, 0) is None  # 0: no limit, as in ClickHouse


def test_column_checks_come_from_the_ddl_and_parse_every_type_name() -> None:
    from runstream.consumer.batch import COLUMN_CHECKS, TABLE_COLUMNS
    from runstream.consumer.column_checks import parse_type
    from runstream.consumer.migrations import GPU_SAMPLES

    assert {table: tuple(checks.checks) for table, checks in COLUMN_CHECKS.items()} == TABLE_COLUMNS
    declared = dict(column.split(" ", 1) for column in GPU_SAMPLES.columns)
    assert COLUMN_CHECKS["gpu_samples"].declared["gpu_index"] == declared["gpu_index"] == "UInt16"
    assert COLUMN_CHECKS["gpu_samples"].declared["memory_used_bytes"] == "Nullable(UInt64)"  # codec left out

    cases: list[tuple[str, Any, str | None]] = [
        ("UInt8", 255, None), ("UInt8", 256, "out_of_range"), ("Int8", -129, "out_of_range"),
        ("Int64", 2**63, "out_of_range"), ("UInt64", float("nan"), "not_an_integer"), ("UInt32", "1", "wrong_type"),
        ("Nullable(UInt16)", None, None), ("UInt16", None, "null_not_allowed"),
        ("LowCardinality(Nullable(String))", None, None), ("LowCardinality(String)", "\ud800", "bad_string"),
        ("FixedString(3)", "abcd", "too_long"), ("Enum8('ok' = 1, 'failed' = 2)", "ok", None),
        ("Enum16('a' = -1)", "b", "unknown_enum_value"), ("Array(Nullable(UInt8))", np.array([1, 300]), "out_of_range"),
        ("Map(String, Float64)", {"x": 10**400}, "out_of_range"), ("Float32", 1e39, "out_of_range"),
        ("Float32", float("inf"), None), ("DateTime64(3, 'UTC')", -2_208_988_800_001, "out_of_range"),
        ("Tuple(name String, size Nullable(UInt32))", ("a", -1), "out_of_range"),
    ]
    for type_name, value, reason in cases:
        problem = parse_type(type_name).value(value)
        assert (problem[0] if problem else None) == reason, (type_name, value, problem)
    with pytest.raises(ValueError, match="column t.c: ClickHouse type 'Polygon' has no check"):
        parse_type("Polygon", where="column t.c")


def test_only_errors_about_the_rows_split_a_batch() -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError

    from runstream.consumer.clickhouse_sink import blames_the_rows

    assert blames_the_rows(DataError("Unable to create native array for column `gpu_index`"))
    assert blames_the_rows(DatabaseError("Code: 469. Constraint violated", code=469))
    assert blames_the_rows(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"))
    assert not blames_the_rows(DatabaseError("Code: 60. Unknown table", code=60))  # the table, not the rows
    assert not blames_the_rows(DatabaseError("Code: 497. Access denied", code=497))
    assert not blames_the_rows(DatabaseError("no code"))
    assert not blames_the_rows(OperationalError("connection reset"))
    assert not blames_the_rows(RuntimeError("a bug"))
