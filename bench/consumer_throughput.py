"""Consumer throughput: events pre-produced to a real broker, consumed into ClickHouse (chDB) by one process.

    .venv/bin/python bench/consumer_throughput.py --compare --quick     # three shapes side by side, < 2 min
    .venv/bin/python bench/consumer_throughput.py --compare             # the same, 5x the messages
    .venv/bin/python bench/consumer_throughput.py --points 10000000     # one shape, with its lag curve

`--compare` runs three shapes one after another on one broker and prints them in one table, each
with messages/s and metric points/s:

- SDK mix: half metric_steps events of one 20-metric step (20 points, what `run.log()` flushes on
  a busy loop), half gpu_samples events of 8 GPUs with host readings (what the system sampler sends);
- 50-point metric_steps events;
- 10,000-point metric_steps events (the points ceiling).

One shape alone (`--points`, `--metrics`, `--points-per-event`, `--no-gpu`) prints the lag curve
too. Events are keyed by run id over `--partitions` partitions; one consumer process reads them
with `ConsumerService` (decode, columnar batch, insert, commit) and the clock runs from its first
message to its last commit. The load average is printed next to the figures: the machine may be
shared, and a rate measured under load says so.

ClickHouse's own Kafka table engine is not run against these topics: it cannot read Avro
single-object encoding (its Avro formats are `Avro`, whole container files per message, and
`AvroConfluent`, which needs a Confluent schema registry and its 5-byte header), so the
comparison would need a different wire format; see the README.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Producer

from runstream.consumer import ConsumerService, ConsumerSettings
from runstream.consumer.topics_admin import ensure_topics
from runstream.schemas import Encoder, bundled_catalogue, topic_for

KAFKA = Path(__file__).resolve().parent.parent / "deploy" / "local" / "kafka.sh"


@dataclass(frozen=True)
class Shape:
    name: str
    metric_events: int
    points_per_event: int
    metrics: int
    gpu: bool  # one 8-GPU gpu_samples event per metric_steps event


def compare_shapes(quick: bool) -> list[Shape]:
    scale = 1 if quick else 5
    return [
        Shape("SDK mix: 20-point metric_steps + 8-GPU gpu_samples, half each", 20_000 * scale, 20, 20, True),
        Shape("50-point metric_steps", 20_000 * scale, 50, 10, False),
        Shape("10,000-point metric_steps", 100 * scale, 10_000, 10, False),
    ]


def events(shape: Shape, runs: int) -> Iterator[tuple[str, str, dict[str, Any], int]]:
    """The shape's events in sending order: (event type, run id, record, metric points in it)."""
    rng = np.random.default_rng(1)
    names = [f"metric_{m}" for m in range(shape.metrics)]
    run_ids = [str(uuid.uuid4()) for _ in range(runs)]
    steps_per_event = max(1, shape.points_per_event // shape.metrics)
    metric_index = np.tile(np.arange(shape.metrics), steps_per_event)
    next_step = dict.fromkeys(run_ids, 0)
    now_us = time.time_ns() // 1000
    for event in range(shape.metric_events):
        run_id = run_ids[event % runs]
        first = next_step[run_id]
        next_step[run_id] = first + steps_per_event
        steps = np.repeat(np.arange(first, first + steps_per_event), shape.metrics)
        record = {"event_id": str(uuid.uuid4()), "run_id": run_id, "timestamp_us": now_us, "metric_names": names,
                  "metric_index": metric_index, "steps": steps, "values": rng.random(len(steps)),
                  "times_us": now_us + steps}
        yield "metric_steps", run_id, record, len(steps)
        if shape.gpu:
            gpu = {
                "event_id": str(uuid.uuid4()), "run_id": run_id, "timestamp_us": now_us + first, "host": "node-1",
                "samples": [{"time_us": now_us + first, "gpu_index": g, "gpu_uuid": f"GPU-{run_id[:8]}-{g}",
                             "gpu_model": "NVIDIA H100 80GB HBM3", "utilization_pct": 90.0,
                             "memory_used_bytes": 60 * 2**30, "memory_total_bytes": 80 * 2**30, "power_w": 650.0,
                             "temperature_c": 65.0, "sm_clock_mhz": 1980, "memory_clock_mhz": 2619,
                             "power_limit_w": 700.0, "throttle_reasons": 0, "process_memory_bytes": 50 * 2**30}
                            for g in range(8)],
                "host_cpu_pct": 50.0, "host_memory_used_bytes": 100 * 2**30, "host_memory_total_bytes": 2**40,
                "process_rss_bytes": 8 * 2**30,
            }
            yield "gpu_samples", run_id, gpu, 0


def produce(bootstrap: str, prefix: str, shape: Shape, runs: int) -> tuple[int, int]:
    """Pre-produce the shape's events; return (metric points, messages) sent."""
    encoder = Encoder(bundled_catalogue())
    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": "zstd", "linger.ms": 50,
                         "batch.size": 4_000_000, "message.max.bytes": 8_000_000, "acks": "all"})
    points = messages = 0
    for event_type, run_id, record, event_points in events(shape, runs):
        _send(producer, topic_for(prefix, event_type), run_id, encoder.encode(event_type, record))
        points += event_points
        messages += 1
    if producer.flush(120):
        raise RuntimeError("pre-production did not finish")
    return points, messages


def _send(producer: Any, topic: str, key: str, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key.encode())
            return
        except BufferError:
            producer.poll(0.1)


@dataclass
class Result:
    shape: Shape
    messages: int
    points: int
    elapsed_s: float
    stored_points: int
    stored_gpu_rows: int
    batches: int
    load_before: float
    load_after: float
    summary_s: float


def consume(bootstrap: str, chdb: Path, prefix: str, database: str, expected_messages: int, *,
            batch_max_points: int, batch_max_messages: int, partitions: int, profile: bool,
            curve: list[tuple[float, int]] | None = None) -> tuple[ConsumerService, Any, float]:
    settings = ConsumerSettings(kafka=bootstrap, clickhouse=f"chdb://{chdb}?database={database}",
                                topic_prefix=prefix, group_id="bench", batch_max_points=batch_max_points,
                                batch_max_messages=batch_max_messages, batch_max_wait_s=1.0, partitions=partitions)
    service = ConsumerService(settings)
    done = threading.Event()
    began = time.monotonic()
    if curve is not None:
        def watch() -> None:
            while not done.wait(0.5):
                curve.append((time.monotonic() - began, service.stats.points))

        threading.Thread(target=watch, daemon=True).start()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    stats = service.run(stop_when=lambda s: s.messages >= expected_messages)
    ended = time.monotonic()
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    done.set()
    return service, stats, ended - (stats.first_message_at or began)


def stored_rows(service: ConsumerService) -> tuple[int, int]:
    """Metric point rows and GPU sample rows in the bench database (without FINAL: every insert)."""
    client = service.sink.client
    counts = client.query("SELECT (SELECT count() FROM metric_points), (SELECT count() FROM gpu_samples)")
    return int(counts.result_rows[0][0]), int(counts.result_rows[0][1])


def run_shape(bootstrap: str, work: Path, shape: Shape, args: argparse.Namespace) -> Result:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    ensure_topics(bootstrap, prefix, partitions=args.partitions)
    points, messages = produce(bootstrap, prefix, shape, args.runs)
    load_before = os.getloadavg()[0]
    service, stats, elapsed = consume(bootstrap, work / "ch", prefix, f"bench_{uuid.uuid4().hex[:8]}", messages,
                                      batch_max_points=args.batch_max_points,
                                      batch_max_messages=args.batch_max_messages, partitions=args.partitions,
                                      profile=args.profile)
    load_after = os.getloadavg()[0]
    stored, gpu_rows = stored_rows(service)
    service.sink.close()
    return Result(shape, stats.messages, stats.points, elapsed, stored, gpu_rows, stats.batches, load_before,
                  load_after, float(getattr(service.sink, "summary_seconds", 0.0)))


def print_table(results: list[Result]) -> None:
    print("| events | messages | metric points | s | messages/s | points/s | batches | load (1 min) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.shape.name} | {r.messages:,} | {r.points:,} | {r.elapsed_s:.2f} | "
              f"{r.messages / r.elapsed_s:,.0f} | {r.points / r.elapsed_s:,.0f} | {r.batches} | "
              f"{r.load_before:.1f} → {r.load_after:.1f} |")
    for r in results:
        if r.stored_points != r.points:
            print(f"WARNING {r.shape.name}: {r.stored_points:,} point rows stored for {r.points:,} consumed")
        if r.summary_s:
            print(f"{r.shape.name}: of which {r.summary_s:.2f}s rewriting run summaries")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="store_true", help="the three shapes side by side in one table")
    parser.add_argument("--quick", action="store_true", help="with --compare: sizes that run in under 2 minutes")
    parser.add_argument("--points", type=int, default=10_000_000, help="one shape: metric points to pre-produce")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--metrics", type=int, default=10, help="one shape: scalars per step")
    parser.add_argument("--points-per-event", type=int, default=10_000)
    parser.add_argument("--no-gpu", action="store_true", help="one shape: metric_steps events only")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-max-points", type=int, default=1_000_000)
    parser.add_argument("--batch-max-messages", type=int, default=20_000)
    parser.add_argument("--kafka", default=None, help="use this broker instead of starting one")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each consume loop")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="runstream-bench-"))
    bootstrap = args.kafka
    if bootstrap is None:
        bootstrap = subprocess.run(["bash", str(KAFKA), "start", "--dir", str(work / "kafka")], check=True,
                                   capture_output=True, text=True).stdout.strip()
    try:
        if args.compare:
            results = []
            for shape in compare_shapes(args.quick):
                results.append(run_shape(bootstrap, work, shape, args))
                print(f"done: {shape.name}", flush=True)
            print(f"\none consumer process, {os.cpu_count()} CPUs, chDB sink, batches of up to "
                  f"{args.batch_max_messages:,} messages / {args.batch_max_points:,} points\n")
            print_table(results)
            return 0
        events = max(1, args.points // args.points_per_event)
        shape = Shape(f"{args.points_per_event:,}-point metric_steps" + ("" if args.no_gpu else " + 8-GPU gpu_samples"),
                      events, args.points_per_event, args.metrics, not args.no_gpu)
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        ensure_topics(bootstrap, prefix, partitions=args.partitions)
        started = time.monotonic()
        points, messages = produce(bootstrap, prefix, shape, args.runs)
        print(f"pre-produced {points:,} metric points in {messages:,} messages in {time.monotonic() - started:.1f}s")
        curve: list[tuple[float, int]] = []
        load_before = os.getloadavg()[0]
        service, stats, elapsed = consume(bootstrap, work / "ch", prefix, "bench", messages,
                                          batch_max_points=args.batch_max_points,
                                          batch_max_messages=args.batch_max_messages, partitions=args.partitions,
                                          profile=args.profile, curve=curve)
        stored, gpu_rows = stored_rows(service)
        print_table([Result(shape, stats.messages, stats.points, elapsed, stored, gpu_rows, stats.batches,
                            load_before, os.getloadavg()[0], float(getattr(service.sink, "summary_seconds", 0.0)))])
        print("\n| t (s) | points committed | lag (points) |")
        print("|---:|---:|---:|")
        step = max(1, len(curve) // 12)
        for t, committed in curve[::step] + [(elapsed, stats.points)]:
            print(f"| {t:.1f} | {committed:,} | {points - committed:,} |")
        service.sink.close()
    finally:
        if args.kafka is None:
            subprocess.run(["bash", str(KAFKA), "stop", "--dir", str(work / "kafka")], check=False)
        shutil.rmtree(work, ignore_errors=True)  # the broker's log and chDB's data: hundreds of MB
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
