"""Consumer throughput: a realistic mix pre-produced to a real broker, consumed into ClickHouse (chDB).

    .venv/bin/python bench/consumer_throughput.py --points 10000000

Produces metric_steps events (each run logs `--metrics` scalars per step; events carry
`--points-per-event` points, as the SDK's worker batches them) and gpu_samples events (8 GPUs
per run), all keyed by run id over `--partitions` partitions. Then one consumer process reads
them with `ConsumerService` — decode, columnar batch, insert, commit — and the script prints
metric points per second end to end and the lag curve (points not yet committed, over time).

ClickHouse's own Kafka table engine is not run against these topics: it cannot read Avro
single-object encoding (its Avro formats are `Avro`, whole container files per message, and
`AvroConfluent`, which needs a Confluent schema registry and its 5-byte header), so the
comparison would need a different wire format; see the README.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from runstream.consumer import ConsumerService, ConsumerSettings
from runstream.consumer.topics_admin import ensure_topics
from runstream.schemas import Encoder, bundled_catalogue, topic_for

KAFKA = Path(__file__).resolve().parent.parent / "deploy" / "local" / "kafka.sh"


def produce(bootstrap: str, prefix: str, points: int, runs: int, metrics: int, per_event: int) -> tuple[int, int]:
    """Pre-produce the mix; return (metric points, events) sent."""
    encoder = Encoder(bundled_catalogue())
    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": "zstd", "linger.ms": 50,
                         "batch.size": 4_000_000, "message.max.bytes": 8_000_000, "acks": "all"})
    rng = random.Random(1)  # noqa: S311 - synthetic values
    names = [f"metric_{m}" for m in range(metrics)]
    run_ids = [str(uuid.uuid4()) for _ in range(runs)]
    steps_per_event = max(1, per_event // metrics)
    next_step = dict.fromkeys(run_ids, 0)
    sent_points = events = 0
    now_us = time.time_ns() // 1000
    metric_topic = topic_for(prefix, "metric_steps")
    gpu_topic = topic_for(prefix, "gpu_samples")
    while sent_points < points:
        for run_id in run_ids:
            if sent_points >= points:
                break
            first = next_step[run_id]
            next_step[run_id] = first + steps_per_event
            n = steps_per_event * metrics
            record = {
                "event_id": str(uuid.uuid4()), "run_id": run_id, "timestamp_us": now_us, "metric_names": names,
                "metric_index": [m for _ in range(steps_per_event) for m in range(metrics)],
                "steps": [s for s in range(first, first + steps_per_event) for _ in range(metrics)],
                "values": [rng.random() for _ in range(n)],
                "times_us": [now_us + s for s in range(first, first + steps_per_event) for _ in range(metrics)],
            }
            _send(producer, metric_topic, run_id, encoder.encode("metric_steps", record))
            sent_points += n
            events += 1
            gpu = {
                "event_id": str(uuid.uuid4()), "run_id": run_id, "timestamp_us": now_us, "host": "node-1",
                "samples": [{"time_us": now_us + first, "gpu_index": g, "gpu_uuid": f"GPU-{run_id[:8]}-{g}",
                             "gpu_model": "NVIDIA H100 80GB HBM3", "utilization_pct": 90.0,
                             "memory_used_bytes": 60 * 2**30, "memory_total_bytes": 80 * 2**30, "power_w": 650.0,
                             "temperature_c": 65.0, "sm_clock_mhz": 1980, "memory_clock_mhz": 2619}
                            for g in range(8)],
                "host_cpu_pct": 50.0,
            }
            _send(producer, gpu_topic, run_id, encoder.encode("gpu_samples", gpu))
            events += 1
    if producer.flush(120):
        raise RuntimeError("pre-production did not finish")
    return sent_points, events


def _send(producer: Any, topic: str, key: str, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key.encode())
            return
        except BufferError:
            producer.poll(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=10_000_000, help="metric points to pre-produce")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--metrics", type=int, default=10, help="scalars per step")
    parser.add_argument("--points-per-event", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-max-points", type=int, default=1_000_000)
    parser.add_argument("--kafka", default=None, help="use this broker instead of starting one")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the consume loop")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="runstream-bench-"))
    bootstrap = args.kafka
    if bootstrap is None:
        bootstrap = subprocess.run(["bash", str(KAFKA), "start", "--dir", str(work / "kafka")], check=True,
                                   capture_output=True, text=True).stdout.strip()
    try:
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        ensure_topics(bootstrap, prefix, partitions=args.partitions)
        started = time.monotonic()
        points, events = produce(bootstrap, prefix, args.points, args.runs, args.metrics, args.points_per_event)
        produce_s = time.monotonic() - started
        print(f"pre-produced {points:,} metric points in {events:,} events in {produce_s:.1f}s")

        settings = ConsumerSettings(kafka=bootstrap, clickhouse=f"chdb://{work / 'ch'}?database=bench",
                                    topic_prefix=prefix, group_id="bench", batch_max_points=args.batch_max_points,
                                    batch_max_messages=100_000, batch_max_wait_s=2.0)
        service = ConsumerService(settings)
        curve: list[tuple[float, int]] = []
        done = threading.Event()
        began = time.monotonic()

        def watch() -> None:
            while not done.wait(0.5):
                curve.append((time.monotonic() - began, service.stats.points))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
        stats = service.run(stop_when=lambda s: s.events >= events)
        if args.profile:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        ended = time.monotonic()
        joined_s = (stats.first_message_at or began) - began
        elapsed = ended - (stats.first_message_at or began)
        done.set()
        stored = service.sink.client.query("SELECT count() FROM bench.metric_points").result_rows[0][0]
        rate = stats.points / elapsed
        print(f"group join and first fetch: {joined_s:.1f}s (not counted below)")
        print(f"consumed {stats.points:,} points ({stats.events:,} events, {stats.batches} batches) in {elapsed:.1f}s")
        print(f"stored {stored:,} metric point rows")
        print(f"\nend-to-end: {rate:,.0f} metric points/s per consumer process (goal 1,000,000)\n")
        print("| t (s) | points committed | lag (points) |")
        print("|---:|---:|---:|")
        step = max(1, len(curve) // 12)
        for t, committed in curve[::step] + [(elapsed, stats.points)]:
            print(f"| {t:.1f} | {committed:,} | {points - committed:,} |")
    finally:
        if args.kafka is None:
            subprocess.run(["bash", str(KAFKA), "stop", "--dir", str(work / "kafka")], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
