"""Capacity model: what a fleet of 1,000, 10,000 and 100,000 GPUs sends through runstream, and what it needs.

    python bench/capacity.py                 # print the model from the recorded inputs (instant)
    python bench/capacity.py --measure       # re-measure the storage and wire figures first (~1 min)

Every input is either a *stated rate* (what a fleet does: an assumption you change with an option)
or a *measured figure* with the benchmark and command it comes from:

- per-process consumer throughput, from bench/consumer_throughput.py, in two regimes: large events
  (10,000 points/event: the points ceiling) and the SDK's real event shape (one step of 20 metrics
  per metric_steps event plus 8-GPU gpu_samples events: the messages ceiling);
- per-process producer throughput, from bench/producer_overhead.py;
- bytes per event on the wire and compressed bytes per stored row in ClickHouse, measured by
  `--measure` through the real code path: the SDK's Avro Encoder, the consumer's Decoder and
  columnar Batch, and ClickHouseSink into ClickHouse (chDB) with runstream's own tables and
  materialized views, then OPTIMIZE FINAL and system.parts. `--measure` rewrites
  bench/results/capacity_inputs.json; the plain run reads it.

The model is deliberately simple arithmetic so that each line can be checked by hand; docs/capacity.md
walks through it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "capacity_inputs.json"
FLEETS = (1_000, 10_000, 100_000)
DAY_S = 86_400


@dataclass(frozen=True)
class Rates:
    """Stated rates: how a fleet behaves. Defaults are a busy fleet of 8-GPU jobs (the conservative case)."""

    gpus_per_run: int = 8  # one runstream run per 8-GPU node: many small jobs is the costly case
    steps_per_s: float = 2.0  # per run: a 0.5 s training step
    points_per_step: int = 20  # scalars logged per step
    gpu_sample_interval_s: float = 5.0  # SDK default (producer/settings.py sample_interval_s)
    sdk_flush_interval_s: float = 0.2  # SDK default (producer/settings.py flush_interval_s)
    utilisation: float = 1.0  # share of the fleet's GPUs running a tracked job at once
    kafka_replication: int = 3
    kafka_retention_days: float = 7.0
    clickhouse_replicas: int = 2
    metric_retention_days: float = 365.0
    sample_retention_days: float = 90.0  # `runstream migrate --sample-ttl-days` (the hourly rollup stays)
    storage_usd_per_gb_month: float = 0.08  # block storage list price; set your own
    headroom: float = 2.0  # consumers to drain a backlog while keeping up: 2x = an hour's backlog in an hour
    max_partition_mb_s: float = 5.0  # ingress one partition should carry (a conservative broker guideline)


def load_inputs(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `python bench/capacity.py --measure` first")
    return json.loads(path.read_text())


def model(gpus: int, rates: Rates, m: dict[str, Any]) -> dict[str, float]:
    """One fleet's figures; `m` holds the measured inputs (capacity_inputs.json)."""
    wire = m["wire"]
    storage = m["storage"]
    consumer = m["consumer"]
    runs = gpus * rates.utilisation / rates.gpus_per_run
    points_s = runs * rates.steps_per_s * rates.points_per_step
    # The SDK worker packs what a run logged since its last flush into one metric_steps event per flush.
    metric_events_s = runs * min(rates.steps_per_s, 1 / rates.sdk_flush_interval_s)
    points_per_event = points_s / metric_events_s if metric_events_s else 0.0
    gpu_samples_s = gpus * rates.utilisation / rates.gpu_sample_interval_s
    gpu_events_s = runs / rates.gpu_sample_interval_s  # one event carries the run's GPUs
    events_s = metric_events_s + gpu_events_s
    metric_event_bytes = wire["metric_steps_fixed_bytes"] + points_per_event * wire["metric_steps_bytes_per_point"]
    gpu_event_bytes = wire["gpu_samples_fixed_bytes"] + rates.gpus_per_run * wire["gpu_samples_bytes_per_sample"]
    kafka_bytes_s = metric_events_s * (metric_event_bytes + wire["key_bytes"]) + gpu_events_s * (
        gpu_event_bytes + wire["key_bytes"])
    by_points = points_s / consumer["points_per_s_large_events"]
    by_messages = events_s / consumer["messages_per_s_sdk_events"]
    consumers = max(by_points, by_messages)
    consumers_needed = max(2, math.ceil(consumers * rates.headroom))  # 2: one may restart
    partitions_for_bytes = kafka_bytes_s / (rates.max_partition_mb_s * 1e6)
    partitions = max(6, 6 * math.ceil(max(consumers_needed, partitions_for_bytes) / 6))
    point_rows_day = points_s * DAY_S
    sample_rows_day = gpu_samples_s * DAY_S
    ch_bytes_day = (point_rows_day * storage["bytes_per_point"]
                    + sample_rows_day * storage["bytes_per_gpu_sample"]) * rates.clickhouse_replicas
    metric_bytes_kept = point_rows_day * storage["bytes_per_point"] * rates.metric_retention_days
    sample_bytes_kept = sample_rows_day * storage["bytes_per_gpu_sample"] * rates.sample_retention_days
    rollup_bytes_kept = sample_rows_day * storage["rollup_bytes_per_gpu_sample"] * rates.metric_retention_days
    ch_bytes_kept = (metric_bytes_kept + sample_bytes_kept + rollup_bytes_kept) * rates.clickhouse_replicas
    kafka_bytes_kept = kafka_bytes_s * DAY_S * rates.kafka_retention_days * rates.kafka_replication
    gb_month = rates.storage_usd_per_gb_month / 1e9
    return {
        "gpus": gpus, "runs": runs, "points_s": points_s, "gpu_samples_s": gpu_samples_s,
        "metric_events_s": metric_events_s, "gpu_events_s": gpu_events_s, "events_s": events_s,
        "points_per_event": points_per_event, "kafka_bytes_s": kafka_bytes_s,
        "by_points": by_points, "by_messages": by_messages, "consumers": consumers_needed,
        "partitions": partitions, "point_rows_day": point_rows_day, "sample_rows_day": sample_rows_day,
        "ch_bytes_day": ch_bytes_day, "ch_bytes_kept": ch_bytes_kept, "kafka_bytes_kept": kafka_bytes_kept,
        "usd_month": (ch_bytes_kept + kafka_bytes_kept) * gb_month,
        "producer_share": rates.steps_per_s * rates.points_per_step / m["producer"]["points_per_s"],
    }


def human(value: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= scale:
            return f"{value / scale:,.1f}{suffix}{unit}"
    return f"{value:,.1f} {unit}".rstrip() if value != int(value) else f"{int(value):,} {unit}".rstrip()


def print_model(rates: Rates, m: dict[str, Any]) -> None:
    rows = [model(gpus, rates, m) for gpus in FLEETS]
    wire, storage, consumer, producer = m["wire"], m["storage"], m["consumer"], m["producer"]
    print("# runstream capacity model\n")
    print("## Stated rates (assumptions: change them with the options, see --help)\n")
    print(f"- {rates.gpus_per_run} GPUs per run (one tracked run per node), {rates.utilisation:.0%} of GPUs busy")
    print(f"- {rates.steps_per_s:g} steps/s per run, {rates.points_per_step} metric points per step")
    print(f"- one GPU sample per GPU every {rates.gpu_sample_interval_s:g} s; the SDK flushes every "
          f"{rates.sdk_flush_interval_s:g} s (both SDK defaults, producer/settings.py)")
    print(f"- Kafka: replication {rates.kafka_replication}, retention {rates.kafka_retention_days:g} days; "
          f"at most {rates.max_partition_mb_s:g} MB/s into one partition")
    print(f"- ClickHouse: {rates.clickhouse_replicas} replicas; metric points and hourly GPU rollups kept "
          f"{rates.metric_retention_days:g} days, raw GPU samples {rates.sample_retention_days:g} days")
    print(f"- consumers: {rates.headroom:g}x what keeps up (to drain a backlog while keeping up); "
          f"storage ${rates.storage_usd_per_gb_month:g}/GB-month")
    print("\n## Measured inputs\n")
    print("| figure | value | source |")
    print("|---|---:|---|")
    print(f"| consumer, points/s per process, large events | {consumer['points_per_s_large_events']:,.0f} "
          f"| {consumer['points_source']} |")
    print(f"| consumer, messages/s per process, SDK-shaped events | {consumer['messages_per_s_sdk_events']:,.0f} "
          f"| {consumer['messages_source']} |")
    print(f"| producer, points/s per process | {producer['points_per_s']:,.0f} | {producer['source']} |")
    print(f"| metric_steps event, bytes: fixed + per point | {wire['metric_steps_fixed_bytes']:.0f} + "
          f"{wire['metric_steps_bytes_per_point']:.2f} | {wire['source']} |")
    print(f"| gpu_samples event, bytes: fixed + per GPU | {wire['gpu_samples_fixed_bytes']:.0f} + "
          f"{wire['gpu_samples_bytes_per_sample']:.1f} | {wire['source']} |")
    print(f"| ClickHouse, compressed bytes per metric point (incl. rollup) | {storage['bytes_per_point']:.2f} "
          f"| {storage['source']} |")
    print(f"| ClickHouse, compressed bytes per GPU sample (incl. host samples) | "
          f"{storage['bytes_per_gpu_sample']:.2f} | {storage['source']} |")
    print(f"| ClickHouse, hourly GPU rollup bytes per GPU sample | {storage['rollup_bytes_per_gpu_sample']:.3f} "
          f"| {storage['source']} |")
    print("\n## Per fleet\n")
    header = "| | " + " | ".join(f"{r['gpus']:,} GPUs" for r in rows) + " |"
    print(header)
    print("|---|" + "---:|" * len(rows))
    lines: list[tuple[str, Any]] = [
        ("tracked runs", lambda r: f"{r['runs']:,.0f}"),
        ("metric points/s", lambda r: human(r["points_s"])),
        ("GPU samples/s", lambda r: human(r["gpu_samples_s"])),
        ("events/s into Kafka (metric_steps + gpu_samples)", lambda r: human(r["events_s"])),
        ("points per metric_steps event", lambda r: f"{r['points_per_event']:.0f}"),
        ("bytes/s into Kafka (before zstd)", lambda r: human(r["kafka_bytes_s"], "B/s")),
        ("consumer processes to keep up: by points / by messages",
         lambda r: f"{r['by_points']:.2f} / {r['by_messages']:.2f}"),
        (f"consumer processes to run ({rates.headroom:g}x, at least 2)", lambda r: f"{r['consumers']}"),
        ("partitions per busy topic", lambda r: f"{r['partitions']}"),
        ("ClickHouse rows/day: metric points", lambda r: human(r["point_rows_day"])),
        ("ClickHouse rows/day: GPU samples", lambda r: human(r["sample_rows_day"])),
        (f"ClickHouse compressed bytes/day ({rates.clickhouse_replicas} replicas)",
         lambda r: human(r["ch_bytes_day"], "B")),
        ("ClickHouse kept at retention (all replicas)", lambda r: human(r["ch_bytes_kept"], "B")),
        ("Kafka kept at retention (all replicas)", lambda r: human(r["kafka_bytes_kept"], "B")),
        ("storage cost at retention, USD/month", lambda r: f"{r['usd_month']:,.0f}"),
        ("one training process's logging, share of one producer process",
         lambda r: f"{r['producer_share']:.4%}"),
    ]
    for label, cell in lines:
        print(f"| {label} | " + " | ".join(cell(r) for r in rows) + " |")
    print(f"\ninputs recorded {m['measured_at']} ({m['machine']}); re-measure with --measure")


# ---------------------------------------------------------------------------------------------- measurement


def measure(runs: int, steps: int, metrics: int, gpus: int, samples: int) -> dict[str, Any]:
    """Wire and storage figures through the real encode -> decode -> batch -> ClickHouse path."""
    import numpy as np

    from runstream.consumer import ClickHouseSink
    from runstream.consumer.batch import Batch
    from runstream.schemas import Decoder, Encoder, bundled_catalogue

    catalogue = bundled_catalogue()
    encoder, decoder = Encoder(catalogue), Decoder(catalogue)
    rng = np.random.default_rng(20240611)
    names = ["train/loss", "train/acc", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss", "val/acc",
             "gpu/mem_frac", "sys/step_time_ms", "epoch"]
    names = (names + [f"train/aux_{i}" for i in range(metrics)])[:metrics]
    start_us = (int(time.time()) - 30 * DAY_S) * 1_000_000
    metric_bytes: list[tuple[int, int]] = []  # (points, bytes)
    gpu_bytes: list[tuple[int, int]] = []
    key_bytes = len(str(uuid.uuid4()).encode())
    work = Path(tempfile.mkdtemp(prefix="runstream-capacity-"))
    try:
        sink = ClickHouseSink(f"chdb://{work}?database=capacity")
        batch = Batch()
        points = gpu_rows = 0
        for r in range(runs):
            run_id = str(uuid.uuid4())
            t0 = start_us + r * 3_600_000_000
            decay = 200 + r % 300
            s = np.arange(steps)
            noise = rng.random((steps, metrics)) - 0.5
            curves = np.empty((steps, metrics))
            for m in range(metrics):  # shaped like training logs: float32 tensors, schedules, counters
                kind = m % 10
                if kind in (0, 5):
                    curves[:, m] = np.float32(2.5 * np.exp(-s / decay) + 0.1 + 0.05 * noise[:, m])
                elif kind in (1, 6):
                    curves[:, m] = np.float32(0.95 - 0.85 * np.exp(-s / decay) + 0.02 * noise[:, m])
                elif kind == 2:
                    curves[:, m] = 3e-4 * 0.5 * (1 + np.cos(np.pi * s / steps))
                elif kind == 4:
                    curves[:, m] = 131072.0 / (0.5 + 0.01 * noise[:, m])
                elif kind == 9:
                    curves[:, m] = s // 100
                else:
                    curves[:, m] = np.float32(1.0 + 0.3 * noise[:, m])
            for step in range(steps):  # one event per step: the SDK's shape at 2 steps/s, 0.2 s flushes
                t = t0 + step * 500_000 + int(rng.integers(0, 20_000))
                record = {"event_id": str(uuid.uuid4()), "run_id": run_id, "timestamp_us": t,
                          "metric_names": names, "metric_index": list(range(metrics)), "steps": [step] * metrics,
                          "values": curves[step].tolist(), "times_us": [t] * metrics}
                data = encoder.encode("metric_steps", record)
                metric_bytes.append((metrics, len(data)))
                batch.add(*decoder.decode(data))
                points += metrics
            for i in range(samples):
                t = t0 + i * 5_000_000 + int(rng.integers(0, 3_000))
                u = rng.random(gpus) - 0.5
                record = {"event_id": str(uuid.uuid4()), "run_id": run_id, "timestamp_us": t, "host": f"node-{r}",
                          "samples": [{"time_us": t, "gpu_index": g, "gpu_uuid": f"GPU-{run_id[:8]}-{g}",
                                       "gpu_model": "NVIDIA H100 80GB HBM3",
                                       "utilization_pct": float(min(100, max(0, round(85 + 20 * u[g])))),
                                       "memory_used_bytes": (60_000 + i // 40 * 16 + g * 3) * 1_048_576,
                                       "memory_total_bytes": 80 * 2**30, "power_w": round(420 + 150 * u[g], 3),
                                       "temperature_c": float(round(65 + 8 * u[g])), "sm_clock_mhz": 1980,
                                       "memory_clock_mhz": 2619} for g in range(gpus)],
                          "host_cpu_pct": round(40 + 20 * float(u[0]), 1)}
                data = encoder.encode("gpu_samples", record)
                gpu_bytes.append((gpus, len(data)))
                batch.add(*decoder.decode(data))
                gpu_rows += gpus
            if batch.points >= 500_000:
                sink.write(batch)
                batch = Batch()
        sink.write(batch)
        client = sink.client
        for (table,) in client.query("SELECT name FROM system.tables WHERE database = 'capacity' "
                                     "AND engine LIKE '%MergeTree'").result_rows:
            client.command(f"OPTIMIZE TABLE capacity.`{table}` FINAL")
        sizes = dict(client.query(
            "SELECT table, sum(data_compressed_bytes) FROM system.parts WHERE database = 'capacity' AND active "
            "GROUP BY table").result_rows)
        version = client.query("SELECT version()").result_rows[0][0]
        sink.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # Fixed part of an event: encode the same event with no points / no GPUs.
    empty_metric = len(encoder.encode("metric_steps", {
        "event_id": str(uuid.uuid4()), "run_id": str(uuid.uuid4()), "timestamp_us": start_us, "metric_names": names,
        "metric_index": [], "steps": [], "values": [], "times_us": []}))
    empty_gpu = len(encoder.encode("gpu_samples", {
        "event_id": str(uuid.uuid4()), "run_id": str(uuid.uuid4()), "timestamp_us": start_us, "host": "node-0",
        "samples": [], "host_cpu_pct": 50.0}))
    metric_mean = sum(size for _, size in metric_bytes) / len(metric_bytes)
    gpu_mean = sum(size for _, size in gpu_bytes) / len(gpu_bytes)
    point_tables = ("metric_points", "metric_summary_states")
    sample_tables = ("gpu_samples", "host_samples")
    rollup_tables = ("gpu_usage_hourly_states",)
    command = (f"python bench/capacity.py --measure --runs {runs} --steps {steps} --metrics {metrics} "
               f"--gpus {gpus} --samples {samples}")
    return {
        "wire": {
            "metric_steps_fixed_bytes": empty_metric,
            "metric_steps_bytes_per_point": (metric_mean - empty_metric) / metrics,
            "gpu_samples_fixed_bytes": empty_gpu,
            "gpu_samples_bytes_per_sample": (gpu_mean - empty_gpu) / gpus,
            "key_bytes": key_bytes,
            "source": f"`{command}`: Avro single-object bytes from the SDK's Encoder",
        },
        "storage": {
            "bytes_per_point": sum(sizes.get(t, 0) for t in point_tables) / points,
            "bytes_per_gpu_sample": sum(sizes.get(t, 0) for t in sample_tables) / gpu_rows,
            "rollup_bytes_per_gpu_sample": sum(sizes.get(t, 0) for t in rollup_tables) / gpu_rows,
            "tables": {t: int(v) for t, v in sorted(sizes.items())},
            "points": points,
            "gpu_samples": gpu_rows,
            "source": f"`{command}`: Decoder + Batch + ClickHouseSink into ClickHouse {version} (chDB), "
                      "OPTIMIZE FINAL, system.parts",
        },
    }


def main() -> int:
    defaults = Rates()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="re-measure wire and storage figures, then print")
    parser.add_argument("--inputs", type=Path, default=RESULTS, help="measured inputs (default %(default)s)")
    for field, value in vars(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value,
                            help=f"stated rate (default {value})")
    group = parser.add_argument_group("--measure sample")
    group.add_argument("--runs", type=int, default=40)
    group.add_argument("--steps", type=int, default=1500, help="steps per run (one metric_steps event each)")
    group.add_argument("--metrics", type=int, default=20, help="points per step")
    group.add_argument("--gpus", type=int, default=8, help="GPUs per gpu_samples event")
    group.add_argument("--samples", type=int, default=720, help="gpu_samples events per run (5 s apart)")
    args = parser.parse_args()
    rates = Rates(**{field: getattr(args, field) for field in vars(defaults)})
    if args.measure:
        started = time.perf_counter()
        inputs = load_inputs(args.inputs) if args.inputs.exists() else {}
        inputs.update(measure(args.runs, args.steps, args.metrics, args.gpus, args.samples))
        inputs["measured_at"] = time.strftime("%Y-%m-%d")
        inputs["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, commit {_commit()}"
        args.inputs.parent.mkdir(parents=True, exist_ok=True)
        args.inputs.write_text(json.dumps(inputs, indent=1) + "\n")
        print(f"measured in {time.perf_counter() - started:.0f} s; wrote {args.inputs}\n")
    print_model(rates, load_inputs(args.inputs))
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
