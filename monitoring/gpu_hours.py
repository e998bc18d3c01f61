"""GPU-hours: the one definition that the comparison table, the analysis views, the GPU rollup and cost use.

A run holds a GPU from one of that GPU's samples to the next, unless the two are more than
`MAX_GAP_S` apart: then the GPU counts as not held in between (a run paused for a day, a host that
stopped reporting, must not count a day of GPU time). A GPU's held seconds are therefore the sum of
the gaps between its consecutive samples, each gap counted only when it is at most `MAX_GAP_S`;
without pauses that is simply its last sample minus its first.

Times are counted in whole milliseconds (`toUnixTimestamp64Milli`), in every reader alike, so that
all of them give the same number to the last digit.

The one rule, `held_ms_sql`, is applied in three shapes: per sample (the time since the GPU's
previous sample: cost, which splits time by utilisation and bucket), per GPU over a sorted array of
sample times (the comparison table, `run_overview`), and per 150 s slot from the first and last sample
of each (the GPU rollup, `slot_held_ms_sql`). `held_seconds` is the Python twin.
"""

# ruff: noqa: S608 - SQL fragments from this module's own text; table names and filters are the callers' own SQL

from __future__ import annotations

from collections.abc import Iterable

#: Longest gap between two samples of a GPU that still counts as held time.
MAX_GAP_S = 300
MAX_GAP_MS = MAX_GAP_S * 1000

#: A sample's time as GPU-hours count it: whole milliseconds since the epoch (Int64).
SAMPLE_MS_SQL = "toUnixTimestamp64Milli(time)"

#: The window in which a sample's predecessor is looked up: the same GPU of the same run.
SAMPLE_WINDOW_SQL = "PARTITION BY run_id, host, gpu_index ORDER BY time ROWS BETWEEN 1 PRECEDING AND CURRENT ROW"


def held_ms_sql(gap_ms: str) -> str:
    """The rule itself: a gap (ms) between consecutive samples counts only up to the cap."""
    return f"if({gap_ms} > {MAX_GAP_MS}, 0, {gap_ms})"


def sample_held_seconds_sql(window: str) -> str:
    """Seconds the current sample stands for (since its GPU's previous sample); 0 for the first one.

    `window` names a WINDOW clause defined as `SAMPLE_WINDOW_SQL`.
    """
    gap = f"({SAMPLE_MS_SQL} - lagInFrame({SAMPLE_MS_SQL}, 1, {SAMPLE_MS_SQL}) OVER {window})"
    return f"{held_ms_sql(gap)} / 1000"


def held_seconds_of_times_sql(times_ms: str) -> str:
    """Held seconds of one GPU given its sample times as an ascending Array(Int64) of milliseconds."""
    return f"arraySum(arrayMap(gap -> {held_ms_sql('gap')}, arrayDifference({times_ms}))) / 1000"


#: The GPU rollup cannot see a sample's predecessor (an MV sees one insert block at a time), so it keeps,
#: per GPU and SLOT_MS-wide slot of time, the first and last sample time (`gpu_held_slots`; min and
#: max, exact under redelivery). That is enough for the definition, exactly: consecutive samples in one
#: slot are less than SLOT_MS apart, within the cap, so a slot holds its last - first; from one
#: occupied slot to the next, the previous slot's last sample and this slot's first are consecutive
#: samples, and `held_ms_sql` decides whether that gap counts. Slots nest in hours (3600 / 150).
SLOT_MS = MAX_GAP_MS // 2
SLOT_OF_SAMPLE_SQL = f"toDateTime(intDiv({SAMPLE_MS_SQL}, {SLOT_MS}) * {SLOT_MS // 1000}, 'UTC')"


def slot_held_ms_sql(window: str) -> str:
    """Held ms of the current slot (columns first_ms, last_ms), counted from its GPU's previous occupied
    slot; `window` names a WINDOW clause partitioned by (run_id, host, gpu_index) and ordered by slot."""
    gap = f"(first_ms - lagInFrame(last_ms, 1, first_ms) OVER {window})"
    return f"(last_ms - first_ms + {held_ms_sql(gap)})"


def gpu_seconds_by_run_sql(samples: str, where: str = "") -> str:
    """run_id, gpu_seconds from the raw samples `samples` (read with FINAL), optionally filtered by `where`."""
    condition = f"WHERE {where}" if where else ""
    return f"""
SELECT run_id, sum({held_seconds_of_times_sql('times')}) AS gpu_seconds
FROM (
    SELECT run_id, host, gpu_index, arraySort(groupArray({SAMPLE_MS_SQL})) AS times
    FROM {samples} FINAL
    {condition}
    GROUP BY run_id, host, gpu_index
)
GROUP BY run_id
""".strip()


def held_seconds(times_ms: Iterable[int]) -> float:
    """The Python twin: held seconds of one GPU from its sample times in milliseconds (any order)."""
    ordered = sorted(set(times_ms))
    return sum(gap for gap in (b - a for a, b in zip(ordered, ordered[1:], strict=False)) if gap <= MAX_GAP_MS) / 1000
