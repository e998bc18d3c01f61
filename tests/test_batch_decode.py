"""Bulk decoding: many bodies decoded together (schemas/columnar.py `decode_many`) and added to a batch
together (consumer/batch.py `Batch.add_messages`) must give exactly what fastavro and the one-by-one
path give on the same bytes, and must reject exactly the messages the one-by-one path rejects."""

from __future__ import annotations

import io
import random
import re
import struct
import time
import uuid
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa
import pytest
from databases import fresh_database_dsn
from test_schemas import _zigzag

from runstream.consumer import ClickHouseSink
from runstream.consumer.batch import BULK_MIN_MESSAGES, TABLE_COLUMNS, Batch, InvalidEvent, _lists_table
from runstream.schemas import DecodeError, Decoder, Encoder, bundled_catalogue
from runstream.schemas.codec import HEADER_SIZE, MAGIC

CATALOGUE = bundled_catalogue()
ENCODER = Encoder(CATALOGUE)
DECODER = Decoder(CATALOGUE)
NOW_US = time.time_ns() // 1000
BIG = [0, 1, -1, 63, -64, 64, 127, 128, 2**31 - 1, -(2**31), 2**40, 2**62, -(2**63), 2**63 - 1]


class Message:
    """What `Batch.add_messages` reads of a Kafka message."""

    def __init__(self, value: bytes | None, offset: int, topic: str = "t") -> None:
        self._value, self._offset, self._topic = value, offset, topic

    def value(self) -> bytes | None:
        return self._value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def metric_steps(rng: random.Random, points: int, *, run_id: str | None = None, names: int = 20,
                 wide: bool = False, negative: bool = True) -> dict[str, Any]:
    big = BIG if negative else [value for value in BIG if value >= 0]
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))), "run_id": run_id or f"run-{rng.randrange(5)}-é",
        "timestamp_us": NOW_US, "metric_names": [f"metric_{m}" for m in range(names)],
        "metric_index": [rng.randrange(names) for _ in range(points)] if names else [],
        "steps": [rng.choice(big) if wide else rng.randrange(10**6) for _ in range(points)],
        "values": [rng.choice([0.5, -1e300, float("inf"), float("nan"), rng.random()]) for _ in range(points)],
        "times_us": [NOW_US - rng.randrange(10**9) for _ in range(points)],
    }


def gpu_samples(rng: random.Random, gpus: int, *, run_id: str | None = None, **fields: Any) -> dict[str, Any]:
    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.2 else value

    samples = [{
        "time_us": NOW_US - rng.randrange(10**9), "gpu_index": g, "gpu_uuid": f"GPU-{g}-{rng.randrange(3)}",
        "gpu_model": rng.choice(["NVIDIA H100 80GB HBM3", "A100"]), "utilization_pct": maybe(rng.random() * 100),
        "memory_used_bytes": maybe(rng.randrange(2**40)), "memory_total_bytes": maybe(80 * 2**30),
        "power_w": maybe(650.5), "temperature_c": maybe(65.0), "sm_clock_mhz": maybe(rng.randrange(3000)),
        "memory_clock_mhz": maybe(2619), "power_limit_w": maybe(700.0), "throttle_reasons": maybe(rng.randrange(2**20)),
        "process_memory_bytes": maybe(rng.randrange(2**35)),
    } for g in range(gpus)]
    host = {name: maybe(value) for name, value in (("host_cpu_pct", 12.5), ("host_memory_used_bytes", 2**33),
                                                   ("host_memory_total_bytes", 2**36), ("process_rss_bytes", 2**30))}
    if rng.random() < 0.3:
        host = dict.fromkeys(host)
    record = {"event_id": uuid.uuid4().hex, "run_id": f"run-{rng.randrange(5)}" if run_id is None else run_id,
              "timestamp_us": NOW_US,
              "host": rng.choice(["node-1", "node-2"]), "samples": samples, **host}
    record.update(fields)
    return record


def fastavro_record(data: bytes) -> dict[str, Any]:
    writer = CATALOGUE.by_fingerprint(data[2:HEADER_SIZE])
    assert writer is not None
    body = io.BytesIO(data)
    body.seek(HEADER_SIZE)
    record = fastavro.schemaless_reader(body, writer.parsed, None)
    assert isinstance(record, dict)
    return record


# -- decode_many against fastavro -----------------------------------------------------------------

def _value(column: Any, row: int, buffer: np.ndarray[Any, Any]) -> Any:
    if column.valid is not None and not column.valid[row]:
        return None
    if column.starts is not None:
        start = int(column.starts[row])
        return bytes(buffer[start:start + int(column.lengths[row])]).decode("utf-8")
    return column.values[row].item()


def _no_address(text: str) -> str:
    """An error text without the object addresses fastavro's messages carry."""
    return re.sub(r" at 0x[0-9a-f]+", "", text)


def _same(got: Any, expected: Any) -> bool:
    if isinstance(expected, float) and np.isnan(expected):
        return isinstance(got, float) and np.isnan(got)
    return bool(got == expected)


@pytest.mark.parametrize("event_type", ["metric_steps", "gpu_samples"])
def test_decode_many_agrees_with_fastavro_on_every_field(event_type: str) -> None:
    rng = random.Random(7)
    if event_type == "metric_steps":
        records = [metric_steps(rng, rng.choice([0, 1, 20, 50, 333]), names=rng.choice([0, 1, 20]) or 1,
                                wide=rng.random() < 0.5) for _ in range(300)]
    else:
        records = [gpu_samples(rng, rng.choice([0, 1, 8, 16])) for _ in range(300)]
    bodies = [ENCODER.encode(event_type, record) for record in records]
    found = DECODER.batch_plan(bodies[0][:HEADER_SIZE])
    assert found is not None and found[0] == event_type
    decoded = DECODER.decode_many(found[1], bodies)
    assert not decoded.bad.any()
    checked = 0
    for row, body in enumerate(bodies):
        expected = fastavro_record(body)
        for name, value in expected.items():
            column = decoded.fields[name]
            if not isinstance(value, list):
                assert _same(_value(column, row, decoded.buffer), value), (row, name)
                checked += 1
                continue
            first = int(np.cumsum(column.counts)[row] - column.counts[row])
            assert column.counts[row] == len(value), (row, name)
            for k, item in enumerate(value):
                if isinstance(item, dict):
                    for field, field_value in item.items():
                        got = _value(column.fields[field], first + k, decoded.buffer)
                        assert _same(got, field_value), (row, name, k, field)
                        checked += 1
                else:
                    assert _same(_value(column.items, first + k, decoded.buffer), item), (row, name, k)
                    checked += 1
    assert checked > 10_000


def _blocked(items: list[bytes], split: int) -> bytes:
    """An Avro array written as two blocks, the second with a negative count and its byte size."""
    first, second = items[:split], items[split:]
    body = b"".join(second)
    return _zigzag(len(first)) + b"".join(first) + _zigzag(-len(second)) + _zigzag(len(body)) + body + _zigzag(0)


def test_bodies_the_bulk_path_does_not_read_are_flagged_and_the_one_by_one_path_decides() -> None:
    rng = random.Random(11)
    version = CATALOGUE.latest("metric_steps")
    header = MAGIC + version.fingerprint
    good = [ENCODER.encode("metric_steps", metric_steps(rng, 20, run_id="run-good")) for _ in range(40)]
    steps = list(range(30))
    two_blocks = header + (
        _zigzag(3) + b"e-1" + _zigzag(8) + b"run-blkd" + _zigzag(NOW_US)
        + _blocked([_zigzag(4) + b"loss", _zigzag(3) + b"acc"], 1)
        + _blocked([_zigzag(0)] * 30, 7)
        + _blocked([_zigzag(s) for s in steps], 29)
        + _blocked([struct.pack("<d", 0.25)] * 30, 1)
        + _blocked([_zigzag(NOW_US)] * 30, 15)
        + _zigzag(2)  # attempt
    )
    corrupt = {
        "truncated": good[0][:-9],
        "trailing": good[1] + b"\x00",
        "huge count": good[2][:HEADER_SIZE] + _zigzag(3) + b"e-1" + _zigzag(3) + b"r-1" + _zigzag(1) + _zigzag(2**40),
        "bad utf-8": good[3].replace(b"run-good", b"run-\xff\xfeod"),
        "header only": good[4][:HEADER_SIZE],
    }
    bodies = good[5:] + [two_blocks, *corrupt.values()]
    decoded = DECODER.decode_many(DECODER.batch_plan(header)[1], bodies)  # type: ignore[index]
    # Strings stay bytes in decode_many (UTF-8 is checked where Arrow strings are built, in the batch).
    flagged = [name != "bad utf-8" for name in corrupt]
    assert decoded.bad.tolist() == [False] * len(good[5:]) + [True] + flagged

    messages = [Message(body, offset) for offset, body in enumerate(bodies)]
    batch = Batch()
    rejected = batch.add_messages(DECODER, messages, NOW_US)
    # The two-block body is valid: decoded alone, and stored; each corrupt one has the one-by-one error.
    assert batch.events == len(good[5:]) + 1
    assert batch.points == 20 * len(good[5:]) + 30
    assert [message.value() for message, _ in rejected] == list(corrupt.values())
    for message, error in rejected:
        with pytest.raises(DecodeError) as alone:
            DECODER.decode(message.value(), partition=0, offset=message.offset())
        assert isinstance(error, DecodeError)
        assert (error.reason, str(error)) == (alone.value.reason, str(alone.value))
    table = batch.metric_points_table()
    blocked_rows = table.filter(pa.compute.equal(table["run_id"].cast(pa.string()), "run-blkd"))
    assert sorted(blocked_rows["step"].to_pylist()) == steps


@pytest.mark.parametrize("event_type", ["metric_steps", "gpu_samples"])
def test_damaged_bodies_never_break_the_bulk_decoder_or_their_neighbours(event_type: str) -> None:
    """Truncated and bit-flipped bodies anywhere in a poll (last included, where a read could run off
    the joined buffer): no exception, the intact bodies decode as fastavro does, and every damaged one
    is either flagged or read exactly as fastavro reads it."""
    rng = random.Random(29)
    for _ in range(150):
        if event_type == "metric_steps":
            records = [metric_steps(rng, rng.choice([1, 20, 50]), wide=True) for _ in range(20)]
        else:
            records = [gpu_samples(rng, rng.choice([1, 8])) for _ in range(20)]
        bodies = [ENCODER.encode(event_type, record) for record in records]
        damaged = rng.sample(range(len(bodies)), 2) + [len(bodies) - 1]
        for index in damaged:
            body = bytearray(bodies[index])
            if rng.random() < 0.5:
                body = body[: rng.randrange(HEADER_SIZE, len(body))]
            else:
                body[rng.randrange(HEADER_SIZE, len(body))] ^= 1 << rng.randrange(8)
            bodies[index] = bytes(body)
        plan = DECODER.batch_plan(bodies[0][:HEADER_SIZE])
        assert plan is not None
        decoded = DECODER.decode_many(plan[1], bodies)
        for row, body in enumerate(bodies):
            if decoded.bad[row]:
                assert row in damaged
                continue
            try:
                expected = fastavro_record(body)  # not flagged: fastavro reads the same values
            except UnicodeDecodeError:  # a flipped bit in a string: the batch checks UTF-8 (test below)
                assert row in damaged
                continue
            assert _same(_value(decoded.fields["timestamp_us"], row, decoded.buffer), expected["timestamp_us"])
            field = "steps" if event_type == "metric_steps" else "samples"
            assert decoded.fields[field].counts[row] == len(expected[field])
        # And the batch: the same messages rejected, for the same reasons, and the same rows kept.
        messages = [Message(body, offset) for offset, body in enumerate(bodies)]
        bulk = Batch()
        rejected = bulk.add_messages(DECODER, messages, NOW_US)
        alone, expected_rejections = _one_by_one(messages)
        assert sorted((m.offset(), e.reason, _no_address(str(e))) for m, e in rejected) == [
            (offset, reason, _no_address(text)) for offset, reason, text in expected_rejections]
        assert (bulk.events, bulk.points, bulk.table_rows()) == (alone.events, alone.points, alone.table_rows())


# -- Batch.add_messages against Batch.add -----------------------------------------------------------

def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    columns = [column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
               for column in table.columns]
    rows = [tuple("NaN" if isinstance(v, float) and v != v else v for v in row)  # NaN != NaN
            for row in zip(*(column.to_pylist() for column in columns), strict=True)]
    return sorted(rows, key=repr)


def _one_by_one(messages: list[Message]) -> tuple[Batch, list[tuple[int, str, str]]]:
    batch = Batch()
    rejected = []
    for message in messages:
        try:
            batch.add(*DECODER.decode(message.value(), partition=0, offset=message.offset()), NOW_US)
        except (DecodeError, InvalidEvent) as error:
            rejected.append((message.offset(), error.reason, str(error)))
    return batch, rejected


def _mixed_poll(rng: random.Random) -> list[bytes]:
    bodies = [ENCODER.encode("metric_steps", metric_steps(rng, rng.choice([0, 1, 20, 50, 400]), wide=True,
                                                                negative=False))
              for _ in range(120)]
    bodies += [ENCODER.encode("gpu_samples", gpu_samples(rng, rng.choice([0, 1, 8]))) for _ in range(120)]
    bodies += [ENCODER.encode("run_finished", {"event_id": "e", "run_id": "run-1", "timestamp_us": NOW_US,
                                               "status": "ok", "exit_code": 0, "error": None, "summary": {}})]
    return bodies


def test_bulk_batch_holds_exactly_what_the_one_by_one_batch_holds() -> None:
    rng = random.Random(5)
    bodies = _mixed_poll(rng)
    rng.shuffle(bodies)
    messages = [Message(body, offset) for offset, body in enumerate(bodies)]
    bulk = Batch()
    assert bulk.add_messages(DECODER, messages, NOW_US) == []
    alone, rejected = _one_by_one(messages)
    assert rejected == []
    assert (bulk.events, bulk.points, bulk.event_counts) == (alone.events, alone.points, alone.event_counts)
    assert bulk.table_rows() == alone.table_rows()
    assert _rows(bulk.metric_points_table()) == _rows(alone.metric_points_table())
    for table in ("gpu_samples", "host_samples"):
        data = bulk.arrow_table(table)
        assert data is not None and data.column_names == list(TABLE_COLUMNS[table])
        assert _rows(data) == _rows(_lists_table(alone.columns[table], data.schema)), table
    assert bulk.columns["run_finishes"]["run_id"] == ["run-1"]


def _poison(rng: random.Random) -> dict[str, bytes]:
    def steps(**fields: Any) -> bytes:
        return ENCODER.encode("metric_steps", {**metric_steps(rng, 20), **fields})

    def gpus(sample: dict[str, Any] | None = None, **fields: Any) -> bytes:
        record = gpu_samples(rng, 3, **fields)
        record["samples"][1].update(sample or {})
        return ENCODER.encode("gpu_samples", record)

    return {
        "metric_index out of range": steps(metric_index=[0] * 19 + [20]),
        "negative step": steps(steps=[1] * 19 + [-1]),
        "ragged columns": steps(values=[0.5] * 19),
        "time before 1900": steps(times_us=[NOW_US] * 19 + [-(2**61)]),
        "future point": steps(times_us=[NOW_US] * 19 + [NOW_US + 2 * 86_400_000_000]),
        "future event": steps(timestamp_us=NOW_US + 2 * 86_400_000_000),
        "no run id": steps(run_id=""),
        "gpu_index 70000": gpus({"gpu_index": 70000}),
        "gpu_index -1": gpus({"gpu_index": -1}),
        "memory_used_bytes -5": gpus({"memory_used_bytes": -5}),
        "sm_clock_mhz -1": gpus({"sm_clock_mhz": -1}),
        "host_memory_used_bytes -1": gpus(host_memory_used_bytes=-1),
        "gpu time before 1900": gpus({"time_us": -(2**61)}),
        "gpu run id empty": gpus(run_id=""),
        "gpu bad utf-8": gpus(host="node-\u00e9").replace("node-\u00e9".encode(), b"node-\xff\xfe"),
    }


def test_bulk_path_rejects_exactly_the_poison_messages_with_the_one_by_one_reasons() -> None:
    rng = random.Random(13)
    poison = _poison(rng)
    bodies = _mixed_poll(rng)
    rng.shuffle(bodies)
    for name, body in poison.items():  # first, last and anywhere between
        bodies.insert(rng.choice([0, len(bodies)]) if name.startswith("gpu_index") else rng.randrange(len(bodies)),
                      body)
    messages = [Message(body, offset) for offset, body in enumerate(bodies)]
    bulk = Batch()
    rejected = bulk.add_messages(DECODER, messages, NOW_US)
    alone, expected = _one_by_one(messages)
    assert sorted(message.value() for message, _ in rejected) == sorted(poison.values())  # type: ignore[type-var]
    assert sorted((message.offset(), error.reason, str(error)) for message, error in rejected) == expected
    assert {error.reason for _, error in rejected} >= {"bad_metric_index", "negative_step", "ragged_columns",
                                                      "out_of_range", "future_timestamp", "missing_run_id",
                                                      "corrupt_body"}
    assert (bulk.events, bulk.points) == (alone.events, alone.points)
    assert _rows(bulk.metric_points_table()) == _rows(alone.metric_points_table())
    for table in ("gpu_samples", "host_samples"):
        data = bulk.arrow_table(table)
        assert data is not None
        assert _rows(data) == _rows(_lists_table(alone.columns[table], data.schema)), table


def test_a_small_poll_is_added_one_by_one() -> None:
    rng = random.Random(17)
    bodies = [ENCODER.encode("metric_steps", metric_steps(rng, 20)) for _ in range(BULK_MIN_MESSAGES - 1)]
    batch = Batch()
    assert batch.add_messages(DECODER, [Message(b, i) for i, b in enumerate(bodies)], NOW_US) == []
    assert batch.points == 20 * len(bodies) and not batch._bulk  # the one-by-one path, no bulk tables


def test_bulk_rows_are_stored_once_in_clickhouse(clickhouse_base: str) -> None:
    rng = random.Random(19)
    bodies = []  # every row's key distinct, so that FINAL keeps each once
    for event in range(120):
        record = metric_steps(rng, rng.choice([0, 1, 20, 50, 400]), run_id=f"run-{event}-é")
        record["steps"] = list(range(len(record["steps"])))
        bodies.append(ENCODER.encode("metric_steps", record))
        bodies.append(ENCODER.encode("gpu_samples", gpu_samples(rng, rng.choice([0, 1, 8]), run_id=f"run-{event}-é")))
    messages = [Message(body, offset) for offset, body in enumerate(bodies)]
    bulk = Batch()
    assert bulk.add_messages(DECODER, messages[:150], NOW_US) == []
    for message in messages[150:]:  # one batch holding rows of both paths
        bulk.add(*DECODER.decode(message.value()), NOW_US)
    alone, _ = _one_by_one(messages)
    sink = ClickHouseSink(fresh_database_dsn(clickhouse_base, "bulk"))
    try:
        sink.write(bulk)
        sink.write(bulk)  # redelivered: collapsed by the table engines
        db = sink.database

        def scalar(sql: str) -> Any:
            return sink.client.query(sql.format(db=db)).result_rows[0][0]

        points = alone.metric_points_table()
        finite = [v for v in points["value"].to_pylist() if np.isfinite(v)]
        for final in ("", "FINAL"):
            assert scalar(f"SELECT count() FROM {{db}}.metric_points {final}") == alone.points * (1 if final else 2)
            assert scalar(f"SELECT sum(value) FROM {{db}}.metric_points {final} WHERE isFinite(value)") == \
                pytest.approx(sum(finite) * (1 if final else 2), rel=1e-9)
            for table in ("gpu_samples", "host_samples"):
                assert scalar(f"SELECT count() FROM {{db}}.{table} {final}") == alone.rows(table) * (1 if final else 2)
        expected_memory = sum(v for v in alone.columns["gpu_samples"]["memory_used_bytes"] if v is not None)
        assert scalar("SELECT sum(memory_used_bytes) FROM {db}.gpu_samples FINAL") == expected_memory
        assert scalar("SELECT countIf(utilization_pct IS NULL) FROM {db}.gpu_samples FINAL") == sum(
            v is None for v in alone.columns["gpu_samples"]["utilization_pct"])
        assert scalar("SELECT count() FROM {db}.metric_points FINAL WHERE run_id LIKE 'run-%-é'") == alone.points
    finally:
        sink.close()


# -- through a real broker ---------------------------------------------------------------------------

def test_chunk_size_keeps_the_batch_within_its_limits() -> None:
    from runstream.consumer.service import MIN_POINT_BYTES, _chunk_size

    messages = [Message(bytes(1000), offset) for offset in range(50)]
    assert _chunk_size(messages, 20, 10**9) == 20  # message room
    assert _chunk_size(messages, 50, 3000 // MIN_POINT_BYTES) == 2  # 3,000 bytes hold at most 272 points
    assert _chunk_size(messages, 50, 0) == 1  # always at least one, so the loop moves
    assert _chunk_size(messages, 0, 0) == 1


@pytest.mark.integration
def test_a_busy_poll_through_kafka_stores_the_good_events_and_dead_letters_exactly_the_poison(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str
) -> None:
    from test_poison_messages import (
        assert_committed_to_the_end,
        consume,
        headers,
        produce,
        read_dead_letters,
        scalar,
        settings,
    )

    from runstream.consumer import ConsumerService

    rng = random.Random(23)
    good: list[tuple[str, bytes]] = []
    points = gpu_rows = 0
    for event in range(150):  # distinct keys: FINAL keeps every row
        record = metric_steps(rng, 20, run_id=f"run-{event}")
        record["steps"] = list(range(20))
        good.append(("metric_steps", ENCODER.encode("metric_steps", record)))
        samples = gpu_samples(rng, 8, run_id=f"run-{event}")
        good.append(("gpu_samples", ENCODER.encode("gpu_samples", samples)))
        points += 20
        gpu_rows += 8
    poison = _poison(rng)
    messages = list(good)
    for name, body in poison.items():
        topic = "gpu_samples" if name.startswith(("gpu", "memory", "sm_", "host")) else "metric_steps"
        messages.insert(rng.randrange(len(messages)), (topic, body))
    produce(kafka_bootstrap, topic_prefix, messages)  # type: ignore[arg-type]

    service = ConsumerService(settings(kafka_bootstrap, clickhouse_dsn, topic_prefix, "bulk"))
    stats = consume(service, lambda s: s.messages >= len(messages))
    assert (stats.events, stats.dead_letters) == (len(good), len(poison))
    for final in ("", "FINAL"):
        assert scalar(service, f"SELECT count() FROM {{db}}.metric_points {final}") == points
        assert scalar(service, f"SELECT count() FROM {{db}}.gpu_samples {final}") == gpu_rows
    assert scalar(service, "SELECT count() FROM {db}.metric_points WHERE run_id NOT LIKE 'run-%'") == 0
    letters = read_dead_letters(kafka_bootstrap, topic_prefix, len(poison))
    assert sorted(letter.value() for letter in letters) == sorted(poison.values())
    for letter in letters:  # each with its reason and where it came from
        named = headers(letter)
        assert named["runstream.reason"] in {b"bad_metric_index", b"negative_step", b"ragged_columns", b"out_of_range",
                                             b"future_timestamp", b"missing_run_id", b"corrupt_body"}
        assert named["runstream.partition"].isdigit() and named["runstream.offset"].isdigit()
    assert_committed_to_the_end(kafka_bootstrap, topic_prefix, "bulk", ("metric_steps", "gpu_samples"))
