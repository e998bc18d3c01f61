"""What per-project retention costs (docs/capacity.md, "Retention"): the raw rows' `project` column on disk,
`runstream retention set` on a stored table, the run_summary refresh that keeps expired summaries, and the
sink's run -> project lookup.

    python bench/retention_cost.py [--runs 400] [--steps 1000]

Writes through the consumer's own `Batch` and `ClickHouseSink` into a fresh chDB folder; prints figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import pyarrow as pa

from runstream.consumer import ClickHouseSink
from runstream.consumer import run_summary as rs
from runstream.consumer.batch import Batch
from runstream.consumer.retention import set_retention

DAY_US = 86_400 * 1_000_000


def _started(run_id: str, project: str, t: int) -> dict[str, Any]:
    return {"run_id": run_id, "project": project, "run_name": run_id[-6:], "user": "u", "host": "h",
            "started_at": t}


def load(sink: ClickHouseSink, runs: int, steps: int, now: int) -> list[str]:
    """`runs` runs in 4 projects, 2 metrics x `steps` steps each; project p0's points are 40 days old, the
    others' 1 day; every other batch is delivered twice (those pairs are summarised from FINAL)."""
    ids = [f"0190a0a0-0000-7000-8000-{number:012d}" for number in range(runs)]
    client, db = sink.client, sink.database
    client.insert(f"{db}.runs", [[run_id, f"p{number % 4}", run_id[-6:], "u", "h", now - 41 * DAY_US]
                                 for number, run_id in enumerate(ids)],
                  column_names=["run_id", "project", "run_name", "user", "host", "started_at"])
    for first in range(0, runs, 20):
        batch = Batch()
        for number in range(first, min(first + 20, runs)):
            t0 = now - (40 if number % 4 == 0 else 1) * DAY_US
            names = ["acc", "loss"]
            batch.add("metric_steps", {
                "event_id": f"e{number}", "run_id": ids[number], "timestamp_us": t0, "metric_names": names,
                "metric_index": [i % 2 for i in range(2 * steps)], "steps": [i // 2 for i in range(2 * steps)],
                "values": [(i % 997) / 997 for i in range(2 * steps)],
                "times_us": [t0 + (i // 2) * 1_000_000 for i in range(2 * steps)]}, now_us=now)
        sink.write(batch)
        if first % 40 == 0:
            sink.write(batch)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="retention-bench-")
    sink = ClickHouseSink(f"chdb://{folder}?database=bench")
    client, db = sink.client, sink.database
    now = time.time_ns() // 1000
    started = time.perf_counter()
    ids = load(sink, args.runs, args.steps, now)
    print(f"loaded {args.runs} runs x 2 x {args.steps} points in {time.perf_counter() - started:.1f} s "
          f"({sink.run_projects.lookups} run -> project lookups for {sink.summary_refreshes} writes)")
    client.command(f"OPTIMIZE TABLE {db}.metric_points FINAL")
    rows = client.query(f"SELECT count() FROM {db}.metric_points").result_rows[0][0]  # noqa: S608
    columns = dict(client.query(
        "SELECT name, data_compressed_bytes FROM system.columns WHERE database = {db:String} "
        "AND table = 'metric_points'", parameters={"db": db}).result_rows)
    total, project = sum(columns.values()), columns["project"]
    print(f"metric_points: {rows:,} rows, {total / rows:.3f} B/row compressed; project column "
          f"{project:,} B = {project / rows:.4f} B/row ({100 * project / total:.2f} %)")

    sample = ids[1::4][:100]  # runs of p1 (never expire)
    expired = ids[0::4][:100]  # runs of p0 (expire below)

    def timed(sql: str, run_ids: list[str]) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            client.command(sql.replace("{db}", db).replace("{runs_in}", "run_id IN {ids:Array(String)}"),
                           parameters={"ids": run_ids})
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000

    without = rs.REFRESH_SQL.replace(rs._LIFECYCLE_PAIRS, rs._PAIRS)  # the refresh before retention
    assert without != rs.REFRESH_SQL
    print(f"refresh of 100 runs: {timed(without, sample):.1f} ms before, {timed(rs.REFRESH_SQL, sample):.1f} ms "
          "with expired summaries kept (median of 5)")

    t = time.perf_counter()
    set_retention(client, db, "p0", 30)
    elapsed = time.perf_counter() - t
    left = client.query(f"SELECT count() FROM {db}.metric_points").result_rows[0][0]  # noqa: S608
    print(f"retention set p0 30 days: {elapsed:.2f} s for {rows:,} stored rows ({rows / elapsed / 1e6:.1f} M rows/s); "
          f"{rows - left:,} rows of p0 deleted, {left:,} left")
    print(f"refresh of 100 expired runs: {timed(rs.REFRESH_SQL, expired):.1f} ms (median of 5)")

    data = Batch()
    data.add("metric_steps", {"event_id": "x", "run_id": ids[1], "timestamp_us": now, "metric_names": ["a"],
                              "metric_index": [0] * 10_000, "steps": list(range(10_000)), "values": [0.5] * 10_000,
                              "times_us": [now] * 10_000}, now_us=now)
    table = data.metric_points_table()
    t = time.perf_counter()
    for _ in range(100):
        out = sink.run_projects.with_project(table)
    assert isinstance(out, pa.Table)
    print(f"project column of a 10,000-point batch (cached run): {(time.perf_counter() - t) * 10:.3f} ms")
    sink.close()


if __name__ == "__main__":
    main()
