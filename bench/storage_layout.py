"""Storage layout of metric points: sort keys, a projection, codecs and rollups, measured in the real engine.

Generates --points metric points (default 10,000,000: 1,000 runs x 1,000 steps x 10 metrics)
directly in ClickHouse (chDB, INSERT ... SELECT FROM numbers()), into runstream's own schema
(consumer/migrations.py, materialized views included) and into alternative layouts, then prints
markdown tables of:

1. per layout: insert and merge time, compressed bytes per point, and the median time (and
   granules read) of the two access paths users run:
   P1 "one metric across many runs": metric = 'train/loss' AND run_id IN (100 runs) -> per-run
      final value, lowest value and its step, with FINAL;
   P2 "all metrics of one run": run_id = X -> every curve, ordered, with FINAL (and without, to
      show what a projection could do if FINAL did not stand in its way);
   plus P1 answered from the metric_summary rollup instead of the raw points;
2. compressed bytes per point of each column under candidate codecs (same rows, same order);
3. the same for GPU sample columns (NVML-like readings every 5 s);
4. the size of the summary states, and what an exact uniqExact count would cost instead.

Values are shaped like training logs: most metrics are float32 tensors' .item() (Float64 with a
float32 mantissa), some are Python floats (learning rate schedule, throughput), one is an integer
(epoch); all metrics of a step share its time, which jitters by microseconds. Every layout gets
the same rows (copied from one staging table); timings are medians of --repeat runs taken round-
robin across layouts, so a busy neighbour slows all layouts alike. Figures depend on the machine:
compare runs made on the same one.

    .venv/bin/python bench/storage_layout.py --points 10000000
    .venv/bin/python bench/storage_layout.py --points 10000000 --runs 100000   # many runs per partition
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DB = "bench"
METRICS = (
    "train/loss", "train/acc", "train/lr", "train/grad_norm", "train/tokens_per_s",
    "val/loss", "val/acc", "gpu/mem_frac", "sys/step_time_ms", "epoch",
)
QUERY_METRIC = "train/loss"
QUERY_RUNS = 100
WIDE = "SETTINGS min_bytes_for_wide_part = 0"  # per-column sizes exist only for wide parts
GPUS_PER_RUN = 8

# One row per point: n -> run r, step s, metric m; u is deterministic noise in [-0.5, 0.5).
# run ids look like the SDK's UUIDv7 (a millisecond timestamp first, so they sort by start time);
# runs start over 1,000 hours (an hour apart with the default 1,000 runs: two monthly partitions)
# and log a step every 0.5 s with up to 20 ms of jitter.
GENERATE_POINTS = """
INSERT INTO {table}
SELECT
    concat(substring(ts, 1, 8), '-', substring(ts, 9, 4), '-7', substring(h, 1, 3), '-a', substring(h, 4, 3), '-',
           substring(h, 7, 12)) AS run_id,
    [{metric_list}][m + 1] AS metric,
    s AS step,
    multiIf(
        m = 0, toFloat64(toFloat32(2.5 * exp(-s / (200 + r % 300)) + 0.1 + 0.05 * u)),
        m = 1, toFloat64(toFloat32(0.95 - 0.85 * exp(-s / (200 + r % 300)) + 0.02 * u)),
        m = 2, 3e-4 * (1 + r % 5) * 0.5 * (1 + cos(pi() * s / {steps})),
        m = 3, toFloat64(toFloat32(1.0 + 3 * exp(-s / 100) + 0.3 * u)),
        m = 4, 131072.0 / (0.5 + 0.01 * u),
        m = 5, toFloat64(toFloat32(2.6 * exp(-s / (200 + r % 300)) + 0.12 + 0.03 * u)),
        m = 6, toFloat64(toFloat32(0.93 - 0.8 * exp(-s / (200 + r % 300)) + 0.01 * u)),
        m = 7, toFloat64(toFloat32(0.6 + 0.001 * intDiv(s, 50))),
        m = 8, 500.0 + 10 * u,
        toFloat64(intDiv(s, 100))) AS value,
    fromUnixTimestamp64Micro(toInt64(1717200000000000 + r * {spacing_us} + s * 500000 + cityHash64(r, s) % 20000),
                             'UTC') AS time
FROM (
    SELECT number AS n, intDiv(n, {steps} * {metrics}) AS r, intDiv(n, {metrics}) % {steps} AS s,
           n % {metrics} AS m, (cityHash64(n) % 100000) / 100000.0 - 0.5 AS u,
           lower(leftPad(hex(toUInt64(1717200000000 + intDiv(r * {spacing_us}, 1000))), 12, '0')) AS ts,
           lower(concat(hex(cityHash64(r)), hex(cityHash64(r, 7)))) AS h
    FROM numbers({points})
)
"""

# NVML-like readings, every 5 s with jitter: utilisation and temperature are whole numbers, power
# has milliwatt resolution, memory moves in MiB; all as the Nullable types of gpu_samples.
GENERATE_GPU_SAMPLES = """
SELECT
    toString(r) AS run_id,
    toUInt16(g) AS gpu_index,
    fromUnixTimestamp64Micro(toInt64(1717200000000000 + r * 3600000000 + i * 5000000 + cityHash64(r, g, i) % 3000),
                             'UTC') AS time,
    toNullable(toFloat32(least(100, greatest(0, round(85 + 20 * u))))) AS utilization_pct,
    toNullable(toFloat32(round(420 + 150 * u, 3))) AS power_w,
    toNullable(toFloat32(round(65 + 8 * u))) AS temperature_c,
    toNullable(toUInt64((60000 + intDiv(i, 40) * 16 + (g * 3)) * 1048576)) AS memory_used_bytes
FROM (
    SELECT number AS n, intDiv(n, {gpus} * {samples}) AS r, intDiv(n, {samples}) % {gpus} AS g, n % {samples} AS i,
           (cityHash64(n, 3) % 100000) / 100000.0 - 0.5 AS u
    FROM numbers({rows})
)
"""

POINT_CODECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "step": ("Int64", ("LZ4", "ZSTD(1)", "Delta, LZ4", "Delta, ZSTD(1)", "DoubleDelta", "DoubleDelta, LZ4",
                       "T64, LZ4")),
    "time": ("DateTime64(6, 'UTC')", ("LZ4", "ZSTD(1)", "Delta, LZ4", "Delta, ZSTD(1)", "Delta, ZSTD(3)",
                                      "DoubleDelta", "DoubleDelta, ZSTD(1)")),
    "value": ("Float64", ("LZ4", "ZSTD(1)", "ZSTD(3)", "Gorilla", "Gorilla, ZSTD(1)", "FPC", "FPC, ZSTD(1)",
                          "Delta, ZSTD(1)")),
}
GPU_CODECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "time": ("DateTime64(6, 'UTC')", ("LZ4", "ZSTD(1)", "Delta, ZSTD(1)", "DoubleDelta", "DoubleDelta, ZSTD(1)")),
    "utilization_pct": ("Nullable(Float32)", ("LZ4", "ZSTD(1)", "Gorilla", "Gorilla, ZSTD(1)")),
    "power_w": ("Nullable(Float32)", ("LZ4", "ZSTD(1)", "Gorilla", "Gorilla, ZSTD(1)")),
    "temperature_c": ("Nullable(Float32)", ("LZ4", "ZSTD(1)", "Gorilla", "Gorilla, ZSTD(1)")),
    "memory_used_bytes": ("Nullable(UInt64)", ("LZ4", "ZSTD(1)", "Delta, ZSTD(1)", "T64, ZSTD(1)")),
}


@dataclass
class Layout:
    name: str
    table: str
    ddl: str
    queries: bool = True
    insert_s: float = 0.0
    merge_s: float = 0.0
    bytes_per_point: float = 0.0
    column_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    timings: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    granules: dict[str, str] = dataclasses.field(default_factory=dict)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=10_000_000, help="metric points (default %(default)s)")
    parser.add_argument("--runs", type=int, default=1000, help="runs they belong to (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=9, help="timed runs of each query (default %(default)s)")
    parser.add_argument("--codec-points", type=int, default=2_000_000,
                        help="points used for the codec table (default %(default)s)")
    parser.add_argument("--gpu-samples", type=int, default=1_600_000,
                        help="GPU samples used for the GPU codec table (default %(default)s)")
    parser.add_argument("--batch-points", type=int, default=1_000_000,
                        help="points per insert in the insert-cost table, as one consumer batch (default %(default)s)")
    parser.add_argument("--insert-repeat", type=int, default=5,
                        help="timed inserts per table in the insert-cost table (default %(default)s)")
    parser.add_argument("--path", type=Path, default=None,
                        help="chDB folder (default: a new temporary folder, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the chDB folder")
    args = parser.parse_args()
    steps = args.points // (args.runs * len(METRICS))
    if steps < 10:
        parser.error(f"--points {args.points}: fewer than 10 steps per run with --runs {args.runs}")
    if args.runs < QUERY_RUNS:
        parser.error(f"--runs {args.runs}: need at least {QUERY_RUNS} runs for the P1 query")
    points = steps * args.runs * len(METRICS)

    from runstream.consumer.dsn import connect
    from runstream.consumer.migrations import METRIC_POINTS, create_table_sql, migrate

    path = args.path or Path(tempfile.mkdtemp(prefix="runstream-bench-"))
    started = time.perf_counter()
    try:
        client, _ = connect(f"chdb://{path.resolve()}?database={DB}")
        print_header(client, points, args.runs, steps)
        client.command(f"DROP DATABASE IF EXISTS {DB}")
        client.command(f"CREATE DATABASE {DB}")
        migrate(client, DB)

        def variant(name: str, **changes: Any) -> str:
            table = dataclasses.replace(METRIC_POINTS, name=name, **changes)
            return create_table_sql(table, f"{DB}.{name}")

        string_columns = tuple("run_id String" if c.startswith("run_id ") else c for c in METRIC_POINTS.columns)
        projection = "PROJECTION by_run (SELECT * ORDER BY run_id, metric, step)"
        layouts = [
            Layout("**chosen**: ORDER BY (run_id, metric, step), run_id LowCardinality, 2 MVs attached",
                   "metric_points", ""),
            Layout("same, no MVs (insert cost of the MVs)", "mp_no_mv", variant("mp_no_mv"), queries=False),
            Layout("ORDER BY (metric, run_id, step)", "mp_metric_first",
                   variant("mp_metric_first", order_by="(metric, run_id, step)")),
            Layout("ORDER BY (metric, run_id, step) + PROJECTION (run_id, metric, step)", "mp_projection",
                   variant("mp_projection", order_by="(metric, run_id, step)",
                           columns=(*METRIC_POINTS.columns, projection),
                           settings=("deduplicate_merge_projection_mode = 'rebuild'",))),
            Layout("ORDER BY (run_id, metric, step), run_id String", "mp_string",
                   variant("mp_string", columns=string_columns)),
        ]

        client.command(f"CREATE TABLE {DB}.staging (run_id String, metric LowCardinality(String), step Int64, "
                       "value Float64, time DateTime64(6, 'UTC')) ENGINE = MergeTree ORDER BY tuple()")
        t0 = time.perf_counter()
        client.command(GENERATE_POINTS.format(
            table=f"{DB}.staging", metric_list=", ".join(f"'{m}'" for m in METRICS), steps=steps,
            metrics=len(METRICS), points=points, spacing_us=3600 * 10**9 // args.runs))
        print(f"generated {points:,} points in {time.perf_counter() - t0:.1f} s\n")
        client.command(f"OPTIMIZE TABLE {DB}.staging FINAL")  # no merges of the source behind the timed inserts

        for layout in layouts:
            if layout.ddl:
                client.command(layout.ddl)
            # Per-column sizes exist only for wide parts; big parts of a real table are wide anyway.
            client.command(f"ALTER TABLE {DB}.{layout.table} MODIFY SETTING min_bytes_for_wide_part = 0")
            t0 = time.perf_counter()
            client.command(f"INSERT INTO {DB}.{layout.table} SELECT * FROM {DB}.staging")  # noqa: S608
            layout.insert_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            client.command(f"OPTIMIZE TABLE {DB}.{layout.table} FINAL")
            layout.merge_s = time.perf_counter() - t0
            layout.bytes_per_point = table_bytes(client, layout.table) / points
            layout.column_bytes = dict(client.query(
                "SELECT name, data_compressed_bytes FROM system.columns WHERE database = {db:String} "
                "AND table = {t:String}", parameters={"db": DB, "t": layout.table}).result_rows)
            print(f"loaded {layout.table}: insert {layout.insert_s:.1f} s, merge {layout.merge_s:.1f} s", flush=True)
        client.command(f"OPTIMIZE TABLE {DB}.metric_summary_states FINAL")

        run_ids = [row[0] for row in client.query(
            f"SELECT DISTINCT run_id FROM {DB}.metric_points ORDER BY run_id").result_rows]  # noqa: S608
        some = run_ids[:: len(run_ids) // QUERY_RUNS][:QUERY_RUNS]
        one = run_ids[len(run_ids) // 2]
        in_list = "(" + ", ".join(f"'{run_id}'" for run_id in some) + ")"
        p1 = ("SELECT run_id, argMax(value, step) AS final, min(value) AS lowest, argMin(step, value) AS at "
              "FROM {table} FINAL WHERE metric = '{metric}' AND run_id IN {runs} GROUP BY run_id")
        p2 = "SELECT metric, step, value FROM {table} {final} WHERE run_id = '{run}' {order}"
        queries: dict[str, Callable[[str], str]] = {
            "P1": lambda t: p1.format(table=f"{DB}.{t}", metric=QUERY_METRIC, runs=in_list),
            "P2": lambda t: p2.format(table=f"{DB}.{t}", final="FINAL", run=one, order="ORDER BY metric, step"),
            # What a projection could serve: no FINAL, and no ORDER BY that the main key reads in order.
            "P2 raw": lambda t: p2.format(table=f"{DB}.{t}", final="", run=one, order=""),
        }
        rollup = "SELECT run_id, last_value, min_value, step_of_min FROM {table} WHERE metric = '{metric}' AND {ids}"
        summary_sql = rollup.format(table=f"{DB}.metric_summary", metric=QUERY_METRIC, ids=f"run_id IN {in_list}")
        timed = [layout for layout in layouts if layout.queries]
        for layout in timed:
            for key, sql in queries.items():
                layout.granules[key] = granules(client, sql(layout.table))
                client.raw_query(sql(layout.table), fmt="Native")  # warm-up
                layout.timings[key] = []
        client.raw_query(summary_sql, fmt="Native")
        summary_times: list[float] = []
        for _ in range(args.repeat):
            for layout in timed:
                for key, sql in queries.items():
                    layout.timings[key].append(timed_query(client, sql(layout.table)))
            summary_times.append(timed_query(client, summary_sql))

        print_layouts(layouts, points, summary_times, granules(client, summary_sql))
        print_projection_verdict(client, queries["P2"]("mp_projection"), queries["P2 raw"]("mp_projection"))
        check_summary(client, queries["P1"]("metric_points"), summary_sql)
        print_codecs(client, "metric_points", POINT_CODECS, min(args.codec_points, points),
                     f"SELECT run_id, metric, step, time, value FROM {DB}.metric_points "  # noqa: S608
                     "ORDER BY run_id, metric, step LIMIT {rows}", "(run_id, metric, step)")
        gpu_rows = args.gpu_samples - args.gpu_samples % (GPUS_PER_RUN * 2000) or GPUS_PER_RUN * 2000
        print_codecs(client, "gpu_samples", GPU_CODECS, gpu_rows,
                     GENERATE_GPU_SAMPLES.format(gpus=GPUS_PER_RUN, samples=2000, rows=gpu_rows),
                     "(run_id, gpu_index, time)")
        print_summary_states(client, points)
        print_insert_cost(client, min(args.batch_points, points), args.insert_repeat)
        check_summary(client, queries["P1"]("metric_points"), summary_sql,
                      note=f" after {args.insert_repeat} redeliveries of {min(args.batch_points, points):,} points")
    finally:
        if not args.keep and args.path is None:
            shutil.rmtree(path, ignore_errors=True)
    print(f"\n{time.perf_counter() - started:.0f} s in all" + (f"; chDB folder kept: {path}" if args.keep else ""))
    return 0


def print_header(client: Any, points: int, runs: int, steps: int) -> None:
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    version = client.query("SELECT version()").result_rows[0][0]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"# storage layout: {points:,} metric points ({runs:,} runs x {steps:,} steps x {len(METRICS)} metrics)\n")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load}; "
          f"ClickHouse {version} (chDB); commit {commit}\n")


def table_bytes(client: Any, table: str) -> int:
    parts = client.query(
        "SELECT sum(data_compressed_bytes) FROM system.parts WHERE database = {db:String} AND table = {t:String} "
        "AND active", parameters={"db": DB, "t": table}).result_rows[0][0]
    projections = client.query(
        "SELECT sum(data_compressed_bytes) FROM system.projection_parts WHERE database = {db:String} "
        "AND table = {t:String} AND active", parameters={"db": DB, "t": table}).result_rows[0][0]
    return int(parts or 0) + int(projections or 0)


def timed_query(client: Any, sql: str) -> float:
    t0 = time.perf_counter()
    client.raw_query(sql, fmt="Native")
    return (time.perf_counter() - t0) * 1000


def granules(client: Any, sql: str) -> str:
    """Granules the primary key selects (read / total), summed over the tables the query reads."""
    plan = "\n".join(row[0] for row in client.query(f"EXPLAIN indexes = 1 {sql}").result_rows)
    read = total = 0
    for section in re.split(r"\n\s*(?=ReadFromMergeTree|ReadFromStorage)", plan):
        found = re.findall(r"PrimaryKey.*?Granules: (\d+)/(\d+)", section, flags=re.S)
        if found:
            read += int(found[-1][0])
            total += int(found[-1][1])
    return f"{read:,}/{total:,}" if total else "n/a"


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "—"


def print_layouts(layouts: list[Layout], points: int, summary_times: list[float], summary_granules: str) -> None:
    print(f"\n## Access paths (median of {len(summary_times)} runs, ms; granules read/total by the primary key)\n")
    print("P1: metric = 'train/loss' AND run_id IN (100 runs) -> final, lowest, step of lowest per run (FINAL)  ")
    print("P2: run_id = X -> all 10 curves, ordered (FINAL)  ")
    print("P2 raw: run_id = X without FINAL and without ORDER BY, the only form a projection can serve "
          "(duplicates not collapsed)  ")
    print("insert s: one INSERT ... SELECT of every point (a single, noisy sample; the insert-cost table below "
          "repeats consumer-sized inserts)\n")
    print("| layout | insert s | OPTIMIZE FINAL s | bytes/point | P1 ms | P1 granules | P2 ms | P2 granules "
          "| P2 raw ms | P2 raw granules |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for layout in layouts:
        t = layout.timings
        g = layout.granules
        print(f"| {layout.name} | {layout.insert_s:.1f} | {layout.merge_s:.1f} | {layout.bytes_per_point:.2f} "
              f"| {median(t.get('P1', []))} | {g.get('P1', '—')} | {median(t.get('P2', []))} | {g.get('P2', '—')} "
              f"| {median(t.get('P2 raw', []))} | {g.get('P2 raw', '—')} |")
    print(f"| P1 from the `metric_summary` rollup (MV) instead | | | | {median(summary_times)} | {summary_granules} "
          "| | | | |")
    columns = ("run_id", "metric", "step", "time", "value")
    print("\n## Compressed bytes per point by column (the projection's own bytes apart)\n")
    print(f"| layout | {' | '.join(columns)} | projection | total |")
    print(f"|---|{'---:|' * (len(columns) + 2)}")
    for layout in layouts:
        if not layout.queries:
            continue
        cells = [layout.column_bytes.get(c, 0) / points for c in columns]
        projection = layout.bytes_per_point - sum(layout.column_bytes.values()) / points
        print(f"| {layout.name} | {' | '.join(f'{v:.3f}' for v in cells)} | {max(projection, 0):.3f} "
              f"| {layout.bytes_per_point:.2f} |")


def print_projection_verdict(client: Any, final_sql: str, raw_sql: str) -> None:
    """Ask the engine itself whether the projection can serve P2 (force_optimize_projection fails if not)."""
    for label, sql in (("P2 (FINAL)", final_sql), ("P2 raw", raw_sql)):
        try:
            client.query(f"{sql} SETTINGS force_optimize_projection = 1")
            verdict = "used"
        except Exception as error:  # noqa: BLE001 - the engine's reason is the finding
            found = re.search(r"(projection \S+ is rejected because [^.(]*)", str(error))
            verdict = f"not used: {found.group(1) if found else str(error)[:200]}"
        print(f"\nprojection by_run for {label}: {verdict}", end="")
    print()


def print_insert_cost(client: Any, batch: int, repeat: int) -> None:
    """Insert one consumer-sized batch again and again, alternating tables: what the MVs and run_id's type cost.

    Into metric_points these are redeliveries, which the summary check after this must survive.
    """
    targets = {"metric_points": "chosen, with the 2 MVs", "mp_no_mv": "chosen, no MVs",
               "mp_string": "run_id String, no MVs"}
    times: dict[str, list[float]] = {table: [] for table in targets}
    for _ in range(repeat):
        for table in targets:
            t0 = time.perf_counter()
            client.command(f"INSERT INTO {DB}.{table} SELECT * FROM {DB}.staging LIMIT {batch}")  # noqa: S608
            times[table].append(time.perf_counter() - t0)
    print(f"\n## Insert cost: median of {repeat} inserts of {batch:,} points (one consumer batch), alternating\n")
    print("| table | median s | µs/point | points/s |")
    print("|---|---:|---:|---:|")
    for table, label in targets.items():
        seconds = statistics.median(times[table])
        print(f"| {label} | {seconds:.2f} | {seconds * 1e6 / batch:.2f} | {batch / seconds:,.0f} |")


def check_summary(client: Any, final_sql: str, summary_sql: str, note: str = "") -> None:
    """The rollup must answer P1 exactly as FINAL over the raw points does."""
    raw = {row[0]: row[1:] for row in client.query(final_sql).result_rows}
    rollup = {row[0]: row[1:] for row in client.query(summary_sql).result_rows}
    same = raw.keys() == rollup.keys() and all(raw[k] == rollup[k] for k in raw)
    print(f"\nmetric_summary agrees with FINAL over metric_points for those {len(raw)} runs{note}: "
          f"{'yes' if same else 'NO'}")
    if not same:
        raise SystemExit("the metric_summary rollup disagrees with the raw points")


def declared_codecs(table: str) -> dict[str, str]:
    """column -> the codec consumer/migrations.py gives it (what runstream ships)."""
    from runstream.consumer.migrations import TABLES

    spec = next(t for t in TABLES if t.name == table)
    found = (re.match(r"(\w+) .*CODEC\((.*)\)$", column) for column in spec.columns)
    return {m.group(1): m.group(2) for m in found if m}


def print_codecs(client: Any, label: str, codecs: dict[str, tuple[str, tuple[str, ...]]], rows: int,
                 source_sql: str, order_by: str) -> None:
    """One table holding each column once per candidate codec, filled with the same rows in the same order."""
    chosen = declared_codecs(label)
    key_columns = [c.strip() for c in order_by.strip("()").split(",")]
    columns: list[str] = []
    select: list[str] = []
    names: dict[str, tuple[str, str]] = {}
    for column, (kind, candidates) in codecs.items():
        for i, codec in enumerate(candidates):
            name = f"{column}__{i}"
            names[name] = (column, codec)
            columns.append(f"{name} {kind} CODEC({codec})")
            select.append(f"{column} AS {name}")
    key_types = {"run_id": "String", "metric": "LowCardinality(String)", "step": "Int64", "gpu_index": "UInt16",
                 "time": "DateTime64(6, 'UTC')"}
    table = f"{DB}.codecs_{label}"
    client.command(f"DROP TABLE IF EXISTS {table}")
    client.command(
        f"CREATE TABLE {table} ({', '.join(f'k_{k} {key_types[k]}' for k in key_columns)}, {', '.join(columns)}) "
        f"ENGINE = MergeTree ORDER BY ({', '.join(f'k_{k}' for k in key_columns)}) {WIDE}")
    source = source_sql.format(rows=rows)
    client.command(
        f"INSERT INTO {table} SELECT {', '.join(f'{k} AS k_{k}' for k in key_columns)}, {', '.join(select)} "  # noqa: S608
        f"FROM ({source})")
    client.command(f"OPTIMIZE TABLE {table} FINAL")
    sizes = dict(client.query(
        "SELECT name, data_compressed_bytes FROM system.columns WHERE database = {db:String} AND table = {t:String}",
        parameters={"db": DB, "t": table.split(".")[1]}).result_rows)
    print(f"\n## Codecs: {label}, {rows:,} rows sorted by {order_by} (compressed bytes per row)\n")
    print("| column | codec | bytes/row | vs LZ4 | |")
    print("|---|---|---:|---:|---|")
    for column in codecs:
        mine = {codec: sizes[name] / rows for name, (col, codec) in names.items() if col == column}
        best = min(mine.values())
        for codec, size in mine.items():
            marks = [m for m, yes in (("smallest", size == best), ("**shipped**", codec == chosen.get(column))) if yes]
            print(f"| {column} | {codec} | {size:.3f} | {size / mine['LZ4']:.2f} | {', '.join(marks)} |")
    client.command(f"DROP TABLE {table}")


def print_summary_states(client: Any, points: int) -> None:
    """What the rollup costs, and what counting distinct points with uniqExact would cost instead of a bitmap."""
    client.command(f"CREATE TABLE {DB}.summary_copy AS {DB}.metric_summary_states "
                   f"ENGINE = AggregatingMergeTree ORDER BY (run_id, metric) {WIDE}")
    client.command(f"INSERT INTO {DB}.summary_copy SELECT * FROM {DB}.metric_summary_states")  # noqa: S608
    client.command(f"OPTIMIZE TABLE {DB}.summary_copy FINAL")
    rows = client.query(f"SELECT count() FROM {DB}.summary_copy").result_rows[0][0]  # noqa: S608
    sizes = client.query(
        "SELECT name, data_compressed_bytes, data_uncompressed_bytes FROM system.columns "
        "WHERE database = {db:String} AND table = 'summary_copy'", parameters={"db": DB}).result_rows
    client.command(f"CREATE TABLE {DB}.uniq_states (run_id String, metric LowCardinality(String), "
                   "steps AggregateFunction(uniqExact, Int64)) ENGINE = AggregatingMergeTree ORDER BY (run_id, metric) "
                   + WIDE)
    client.command(f"INSERT INTO {DB}.uniq_states SELECT run_id, metric, uniqExactState(step) "  # noqa: S608
                   f"FROM {DB}.metric_points GROUP BY run_id, metric")
    client.command(f"OPTIMIZE TABLE {DB}.uniq_states FINAL")
    uniq = client.query("SELECT data_compressed_bytes, data_uncompressed_bytes FROM system.columns "
                        "WHERE database = {db:String} AND table = 'uniq_states' AND name = 'steps'",
                        parameters={"db": DB}).result_rows[0]
    total = sum(row[1] for row in sizes)
    print(f"\n## metric_summary_states: {rows:,} rows (one per run and metric) for {points:,} points, "
          f"{total / 1e6:.2f} MB compressed ({total / points:.3f} bytes per point)\n")
    print("| state column | compressed bytes/row | uncompressed bytes/row |")
    print("|---|---:|---:|")
    for name, compressed, uncompressed in sizes:
        print(f"| {name} | {compressed / rows:.1f} | {uncompressed / rows:.1f} |")
    print(f"| *uniqExact(step) instead of the bitmap* | {uniq[0] / rows:.1f} | {uniq[1] / rows:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
