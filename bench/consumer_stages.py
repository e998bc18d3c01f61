"""Where a consumer's time per message goes, stage by stage, without Kafka: the cost behind the messages/s ceiling.

    .venv/bin/python bench/consumer_stages.py                 # SDK mix, 4 batches of 20,000 messages, about 30 s
    .venv/bin/python bench/consumer_stages.py --messages 40000 --repeat 6

The SDK mix of `bench/consumer_throughput.py` (half 20-point metric_steps events, half 8-GPU gpu_samples
events, the same generator) is encoded once per batch, then each batch goes through the consumer's own code
in this process, into a fresh chDB database with runstream's tables and materialized views:

- **decode + check**: `Batch.add_messages` (bulk Avro decode, the column checks, Arrow columns);
- **insert, per table**: the sink's insert calls (`ClickHouseSink._insert_arrow`/`_insert_columns`), which
  include ClickHouse's work for the table's materialized views (rollups);
- **summary and the rest of the write**: `ClickHouseSink.write` less its inserts (the per-run summary
  rewrite, the projects of new runs, deletions).

Each batch carries later steps of the same runs, as a stream does. Per-message figures are medians over
`--repeat` batches; the first batch (cold caches, empty tables) is left out. What the Kafka client costs
(fetching, one Python object per message, commits) is not in these figures: `bench/consumer_throughput.py
--profile` shows it. The last line sets the total against the time a message may take at the issue's
target rate (60,000 messages/s per process: 16.7 µs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from consumer_throughput import Shape, events

from runstream.consumer.batch import Batch
from runstream.consumer.clickhouse_sink import ClickHouseSink
from runstream.schemas import Decoder, Encoder, bundled_catalogue

TARGET_MESSAGES_PER_S = 60_000


class Message:
    """What `Batch.add_messages` reads of a Kafka message."""

    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def encoded_batches(messages: int, batches: int, runs: int) -> list[list[Message]]:
    """`batches` lists of `messages` SDK-mix messages; later batches carry later steps of the same runs."""
    encoder = Encoder(bundled_catalogue())
    shape = Shape("SDK mix", messages * batches // 2, 20, 20, True)
    encoded = [Message(encoder.encode(event_type, record), offset)
               for offset, (event_type, _run, record, _points) in enumerate(events(shape, runs))]
    return [encoded[i * messages:(i + 1) * messages] for i in range(batches)]


def measure(sink: ClickHouseSink, decoder: Decoder, messages: list[Message]) -> dict[str, float]:
    """Seconds per stage for one batch."""
    spent: dict[str, float] = defaultdict(float)
    insert_arrow, insert_columns = sink._insert_arrow, sink._insert_columns

    def timed(call: Any) -> Any:
        def wrapper(table: str, *args: Any) -> None:
            started = time.perf_counter()
            call(table, *args)
            spent[f"insert {table}"] += time.perf_counter() - started
        return wrapper

    batch = Batch()
    started = time.perf_counter()
    rejected = batch.add_messages(decoder, messages)
    spent["decode + check"] = time.perf_counter() - started
    if rejected:
        raise RuntimeError(f"{len(rejected)} messages rejected: {rejected[0][1]}")
    sink._insert_arrow, sink._insert_columns = timed(insert_arrow), timed(insert_columns)  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        sink.write(batch)
        write_s = time.perf_counter() - started
    finally:
        sink._insert_arrow, sink._insert_columns = insert_arrow, insert_columns  # type: ignore[method-assign]
    spent["summary and the rest of the write"] = write_s - sum(v for k, v in spent.items() if k.startswith("insert"))
    return dict(spent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per batch (the consumer's default cap)")
    parser.add_argument("--repeat", type=int, default=4, help="batches measured (one more is run first, unmeasured)")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    batches = encoded_batches(args.messages, args.repeat + 1, args.runs)
    folder = Path(tempfile.mkdtemp(prefix="runstream-bench-stages-"))
    try:
        sink = ClickHouseSink(f"chdb://{folder}?database=bench_stages")
        decoder = Decoder(bundled_catalogue())
        runs = [measure(sink, decoder, batch) for batch in batches][1:]
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    stages = list(dict.fromkeys(stage for run in runs for stage in run))
    per_message = {stage: statistics.median(run.get(stage, 0.0) for run in runs) / args.messages * 1e6
                   for stage in stages}
    total = sum(per_message.values())
    print(f"consumer stages, SDK mix, {args.messages:,} messages per batch, median of {args.repeat} batches, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    print("| stage | µs per message |\n|---|---:|")
    for stage in stages:
        print(f"| {stage} | {per_message[stage]:.1f} |")
    print(f"| **total (without Kafka)** | **{total:.1f}** |")
    budget = 1e6 / TARGET_MESSAGES_PER_S
    print(f"\nat most {1e6 / total:,.0f} messages/s per process from these stages alone; "
          f"{TARGET_MESSAGES_PER_S:,} messages/s leaves {budget:.1f} µs per message for all of them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
