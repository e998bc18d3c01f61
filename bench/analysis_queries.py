"""Benchmark of the analysis questions on a synthetic project generated directly inside ClickHouse.

    .venv/bin/python bench/analysis_queries.py                       # 1,000 runs x 100,000 steps x 2 metrics
    .venv/bin/python bench/analysis_queries.py --points 10000000     # a quick run: fewer steps per run

The project is written with INSERT ... SELECT FROM numbers() into the real tables (so the consumer's
materialized views run as they do in production), in slices of runs to bound memory. Each question is
timed as the CLI answers it (the same Python functions, including their validation queries), after
one warm-up, and the median of --repeat runs is printed as a markdown table.

Not measured yet: the same questions through MLflow's API over a local SQL store, for a ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runstream.analysis import queries
from runstream.analysis.importance import importance
from runstream.analysis.views import ensure_views
from runstream.consumer import ClickHouseSink

PROJECT = "bench"
METRICS = ("acc", "loss", "lr_sched", "grad_norm")
WHERE = "params.lr < 0.01 and metrics.acc > 0.9"

# Params derived from the run number r, in SQL, so points and params agree without a round trip.
_LR = "pow(10, -5 + 3 * ((r * 7919) % 1000) / 1000)"
_BATCH = "[32, 64, 128, 256][(r % 4) + 1]"
_OPTIMIZER = "['adamw', 'sgd', 'lion'][(r % 3) + 1]"
_DROPOUT = "((r * 104729) % 50) / 100"
# quality peaks at lr = 1e-3 and falls with batch size; acc rises to it, loss falls, plus noise
_QUALITY = f"exp(-pow(log10({_LR}) + 3, 2)) * (1 - 0.05 * log2({_BATCH} / 32))"
_VALUES = {
    "acc": f"0.1 + 0.85 * {_QUALITY} * (1 - exp(-5 * (step + 1) / {{steps}})) + (randCanonical() - 0.5) / 100",
    "loss": f"2.5 * exp(-5 * {_QUALITY} * (step + 1) / {{steps}}) + 0.1 + (randCanonical() - 0.5) / 50",
    "lr_sched": f"{_LR} * (1 - step / {{steps}})",
    "grad_norm": "1 + randCanonical()",
}


def generate(client: Any, db: str, runs: int, steps: int, metrics: int, slice_runs: int) -> None:
    started = time.monotonic()
    run_id = "concat('run-', leftPad(toString(r), 6, '0'))"
    client.command(
        f"INSERT INTO {db}.runs (run_id, project, run_name, user, host, started_at, event_id, gpu_count) "  # noqa: S608
        f"SELECT {run_id}, '{PROJECT}', concat('trial-', toString(r)), 'bench', 'node-' || toString(r % 16), "
        f"toDateTime64('2025-01-01 00:00:00', 6, 'UTC') + toIntervalSecond(r * 60), generateUUIDv4(), 8 "
        f"FROM (SELECT number AS r FROM numbers({runs}))")
    params = [("lr", "float", _LR, f"toString({_LR})"), ("batch_size", "int", _BATCH, f"toString({_BATCH})"),
              ("optimizer", "string", "NULL", _OPTIMIZER), ("dropout", "float", _DROPOUT, f"toString({_DROPOUT})")]
    for key, kind, number, text in params:
        client.command(
            f"INSERT INTO {db}.run_params (run_id, key, value_type, value_number, value_string, updated_at) "  # noqa: S608
            f"SELECT {run_id}, '{key}', '{kind}', {number}, {text}, toDateTime64('2025-01-01 00:00:00', 6, 'UTC') "
            f"FROM (SELECT number AS r FROM numbers({runs}))")
    client.command(
        f"INSERT INTO {db}.run_finishes (run_id, finished_at, status) "  # noqa: S608
        f"SELECT {run_id}, toDateTime64('2025-01-02 00:00:00', 6, 'UTC'), if(r % 10 = 9, 'failed', 'ok') "
        f"FROM (SELECT number AS r FROM numbers({runs})) WHERE r % 20 != 7")  # 5% never finished
    done = 0
    for first in range(0, runs, slice_runs):
        count = min(slice_runs, runs - first)
        for metric in METRICS[:metrics]:
            value = _VALUES[metric].format(steps=steps)
            client.command(
                f"INSERT INTO {db}.metric_points (run_id, metric, step, value, time) "  # noqa: S608
                f"SELECT {run_id}, '{metric}', step, {value}, "
                f"toDateTime64('2025-01-01 00:00:00', 6, 'UTC') + toIntervalMillisecond(step * 100) "
                f"FROM (SELECT {first} + intDiv(number, {steps}) AS r, toInt64(number % {steps}) AS step "
                f"FROM numbers({count * steps}))",
                settings={"max_insert_threads": 2, "max_threads": 2})
            done += count * steps
        rate = done / (time.monotonic() - started)
        print(f"\r  generated {done:,} points ({rate / 1e6:.1f} M/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    client.command(f"OPTIMIZE TABLE {db}.metric_summary_states FINAL")


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    result = fn()  # warm-up (and the result, for the sanity column)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clickhouse", default=f"chdb://{Path(tempfile.gettempdir()) / 'runstream-bench-analysis'}"
                        "?database=bench_analysis")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--metrics", type=int, default=2, choices=range(1, len(METRICS) + 1))
    parser.add_argument("--points", type=int, default=None,
                        help="total points instead of --steps (steps = points / runs / metrics)")
    parser.add_argument("--slice-runs", type=int, default=50, help="runs per INSERT (bounds memory)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--reuse", action="store_true", help="keep an already generated project")
    args = parser.parse_args()
    steps = args.points // (args.runs * args.metrics) if args.points else args.steps

    sink = ClickHouseSink(args.clickhouse)
    client, db = sink.client, sink.database
    have = client.query(f"SELECT count() FROM {db}.metric_points").result_rows[0][0]  # noqa: S608
    want = args.runs * steps * args.metrics
    if not (args.reuse and have == want):
        for table in ("runs", "run_params", "run_finishes", "metric_points", "metric_summary_states"):
            client.command(f"TRUNCATE TABLE {db}.{table}")
        print(f"generating {args.runs:,} runs x {steps:,} steps x {args.metrics} metrics = {want:,} points ...",
              file=sys.stderr)
        start = time.monotonic()
        generate(client, db, args.runs, steps, args.metrics, args.slice_runs)
        print(f"  generated in {time.monotonic() - start:.0f}s", file=sys.stderr)
    ensure_views(client, db)
    points = client.query(f"SELECT count() FROM {db}.metric_points").result_rows[0][0]  # noqa: S608
    size = client.query("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = {db:String} AND active",
                        parameters={"db": db}).result_rows[0][0]
    overlay = [f"run-{i:06d}" for i in range(0, args.runs, max(1, args.runs // 10))][:10]

    questions: list[tuple[str, Callable[[], Any], Callable[[Any], str]]] = [
        ("leaderboard (best acc, top 10)", lambda: queries.leaderboard(client, db, PROJECT, "acc", "max", 10),
         lambda t: f"#1 {t.rows[0][2]} acc={t.rows[0][4]:.4f}"),
        ("10-run curve overlay, 1,000 points each",
         lambda: queries.metric_history(client, db, overlay, ["acc"], points=1000),
         lambda t: f"{len(t.rows)} points"),
        (f"filter `{WHERE}`, sorted, limit 20",
         lambda: queries.runs(client, db, project=PROJECT, where=WHERE, sort="-metrics.acc", limit=20),
         lambda t: f"{len(t.rows)} runs"),
        ("importance of params for acc", lambda: importance(client, db, PROJECT, "acc"),
         lambda t: f"top: {t.rows[0][0]} {t.rows[0][4]:+.2f}"),
    ]
    results = []
    for label, fn, check in questions:
        median_ms, result = timed(fn, args.repeat)
        results.append((label, median_ms, check(result)))
        print(f"  {label}: {median_ms:.1f} ms", file=sys.stderr)

    print(f"\nrunstream analysis queries: {points:,} points, {args.runs:,} runs, {steps:,} steps x {args.metrics} "
          f"metrics ({size / 2**30:.2f} GiB on disk), chDB {client.query('SELECT version()').result_rows[0][0]}, "
          f"median of {args.repeat}\n")
    print("| question | runstream median (ms) | result |")
    print("|---|---:|---|")
    for label, median_ms, shown in results:
        print(f"| {label} | {median_ms:.1f} | {shown} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
