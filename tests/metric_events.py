"""Metric points written the way the consumer writes them, for tests that check summaries against
what was logged: one metric_steps event per run, all in one sink write (one INSERT per table)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from runstream.consumer import ClickHouseSink
from runstream.consumer.batch import Batch

#: (run_id, metric, step, value, time_us)
Point = tuple[str, str, int, float, int]


def metric_steps_event(run_id: str, points: list[Point], event_id: str) -> dict[str, Any]:
    """One metric_steps event as the decoder hands it to the sink."""
    names = sorted({p[1] for p in points})
    return {
        "event_id": event_id, "run_id": run_id, "timestamp_us": points[0][4], "metric_names": names,
        "metric_index": [names.index(p[1]) for p in points], "steps": [p[2] for p in points],
        "values": [p[3] for p in points], "times_us": [p[4] for p in points],
    }


def write_points(sink: ClickHouseSink, points: list[Point], now_us: int) -> None:
    """One consumer write: an event per run, in the order given; `now_us` is the consumer's clock."""
    batch = Batch()
    by_run: dict[str, list[Point]] = defaultdict(list)
    for point in points:
        by_run[point[0]].append(point)
    for number, (run_id, run_points) in enumerate(by_run.items()):
        batch.add("metric_steps", metric_steps_event(run_id, run_points, f"e{number}"), now_us=now_us)
    sink.write(batch)
