"""Versioned, idempotent DDL for runstream's tables and rollups; applied on consumer start and by `runstream migrate`.

The storage model (docs/storage.md has the measurements behind every choice):

- Facts live in ReplacingMergeTree tables keyed on what identifies a fact (a run, a param of a
  run, a metric of a run at a step, a GPU of a host at an instant), so an event delivered twice
  (at-least-once from Kafka, or a spool file ingested again) collapses to one row. Queries read
  with FINAL. A ReplacingMergeTree only collapses rows within one partition during merges, so the
  time-partitioned tables partition by the fact's own `time`, never by the time of arrival: a
  redelivered point lands in the partition of its twin.
- `metric_points` is sorted by (run_id, metric, step): both access paths, one metric across a
  set of runs and every curve of one run, read contiguous ranges; no projection (queries with
  FINAL cannot use one); run_id is LowCardinality there; codecs per column were measured.
- Raw GPU and host samples may expire (`sample_ttl_days`); their hourly rollup stays.
- Rollups that dashboards read constantly are AggregatingMergeTree tables fed by materialized
  views. An MV sees every delivery, including duplicates FINAL would hide, so the metric summary
  is built only from duplicate-insensitive states (min, max, argMin/argMax on total orders, a
  bitmap of steps): it stays exact when a batch is redelivered. A step logged again with another
  value (a resumed run) is a different matter: the MV saw the superseded value too, and only FINAL
  drops it. So the `metric_summary` view answers from the rollup the pairs whose steps each arrived
  once (deliveries = points, the common case) and summarises the others from `metric_points FINAL`:
  the latest value of each step wins in every column, as in FINAL. The GPU rollup keeps each GPU's
  first and last sample time per 150 s slot (`gpu_held_slots`), so its GPU-seconds follow the one
  definition of GPU-hours (`runstream.monitoring.gpu_hours`, gaps over 5 minutes not held) exactly,
  redelivered or not; its means weigh a redelivered sample twice.
- `run_summary` (migration 7, `runstream.consumer.run_summary`) is one row per run that the run
  list, the filter and the leaderboard read; the sink rewrites a run's row, exactly, after each
  batch that touches the run, so the exact (FINAL) path is paid once per write, not on every read.

`MIGRATIONS` renders these table specs for one server; `runstream.consumer.cluster` renders the
same specs as ON CLUSTER DDL with Replicated engines and Distributed tables. Changing the schema:
a new table gets a `Table` spec in `TABLES` (so that the cluster DDL has it too) and a new
migration version that creates it with `create_table_sql`; a new column goes into its table's spec
(fresh databases and the cluster DDL create it) and into a new migration version as
`ALTER TABLE ... ADD COLUMN IF NOT EXISTS` (existing databases get it; on fresh ones it is a no-op).
Released versions are otherwise never edited.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from typing import Any

from runstream.analysis.ranks import RANK_VIEWS
from runstream.analysis.views import (
    ANALYSIS_VIEWS,
    ANALYSIS_VIEWS_V6,
    LEADERBOARD,
    LEADERBOARD_V7,
    METRIC_CURVE,
    RUN_OVERVIEW,
    RUN_OVERVIEW_V7,
)
from runstream.consumer.lifecycle_tables import LIFECYCLE_TABLES, RUN_LIFECYCLE_COLUMNS
from runstream.consumer.metric_goals import METRIC_GOALS, METRIC_GOALS_MV
from runstream.consumer.metric_tables import METRIC_EVENT_TABLES
from runstream.consumer.monitoring_tables import COST_TABLES, COST_VIEWS, DRIFT_TABLES
from runstream.consumer.retention import RETENTION_RULES
from runstream.consumer.rollup_merges import merged_columns
from runstream.consumer.run_projects import PROJECT_COLUMN_SPEC
from runstream.consumer.run_summary import (
    BACKFILL_SQL,
    LIFECYCLE_BACKFILL_SQL,
    RUN_KEYS,
    RUN_KEYS_MV,
    RUN_SUMMARY,
)
from runstream.consumer.run_summary import LIFECYCLE_COLUMNS as RUN_SUMMARY_LIFECYCLE_COLUMNS
from runstream.consumer.run_summary import MAP_COLUMNS as RUN_SUMMARY_MAP_COLUMNS
from runstream.consumer.spool_progress import SPOOL_PROGRESS
from runstream.consumer.table_spec import MaterializedView, Table, View, column_name
from runstream.monitoring.gpu_hours import SAMPLE_MS_SQL, SLOT_OF_SAMPLE_SQL, slot_held_ms_sql
from runstream.monitoring.metric_direction import LOWER_IS_BETTER_SQL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


SAMPLE_TTL_COLUMN = "time"
_SAMPLE_SETTINGS = ("ttl_only_drop_parts = 1",)  # an expired month goes as whole parts, never rewritten

# Codecs chosen with bench/storage_layout.py (docs/storage.md has the table): steps are regular
# per (run, metric); times jitter by microseconds, so Delta then ZSTD beats DoubleDelta; values are
# noisy floats that Gorilla cannot shrink (it loses to plain LZ4) while Delta + ZSTD can (float32
# readings stored as Float64 end in zero bytes). GPU readings: Gorilla + ZSTD for the continuous
# ones, Delta + ZSTD for byte counters that move in steps, ZSTD for the rest.
STEP_CODEC = "CODEC(DoubleDelta, LZ4)"
TIME_CODEC = "CODEC(Delta, ZSTD(1))"
VALUE_CODEC = "CODEC(Delta, ZSTD(1))"
READING_CODEC = "CODEC(ZSTD(1))"
FLOAT_READING_CODEC = "CODEC(Gorilla, ZSTD(1))"
COUNTER_CODEC = "CODEC(Delta, ZSTD(1))"

RUNS = Table(
    "runs",
    (
        "run_id String",
        "project LowCardinality(String)",
        "run_name String",
        "user LowCardinality(String)",
        "host LowCardinality(String)",
        "started_at DateTime64(6, 'UTC')",
        "git_commit Nullable(String)",
        "git_branch Nullable(String)",
        "git_dirty Nullable(Bool)",
        "tags Map(String, String)",
        "framework_versions Map(String, String)",
        "command_line Array(String)",
        "cpu_model Nullable(String)",
        "cpu_count Nullable(UInt32)",
        "memory_bytes Nullable(UInt64)",
        "gpu_count UInt32",
        "data_versions Array(Tuple(name String, version Nullable(String), uri Nullable(String), "
        "digest Nullable(String)))",
        "event_id String",
        "git_diff_sha256 Nullable(String)",
        "rank Nullable(Int32)",
        "local_rank Nullable(Int32)",
        "world_size Nullable(Int32)",
        "scheduler Map(String, String)",
        "resumed Bool DEFAULT false",
        # migration 8: the run lifecycle (the latest attempt's start wins, like every other column)
        *RUN_LIFECYCLE_COLUMNS,
    ),
    "ReplacingMergeTree",
    "run_id",
    version="started_at",
)

#: Columns migration 8 adds to existing tables, by table (`ALTER TABLE ... ADD COLUMN IF NOT EXISTS`).
LIFECYCLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": tuple(column_name(definition) for definition in RUN_LIFECYCLE_COLUMNS),
    "metric_points": ("attempt", "project"),
    "gpu_samples": ("project",),  # the run's project, for per-project retention (consumer/retention.py)
    "host_samples": ("project",),
    "run_finishes": ("attempt",),
    "run_summary": RUN_SUMMARY_LIFECYCLE_COLUMNS,
}

RUN_PARAMS = Table(
    "run_params",
    (
        "run_id String",
        "key String",
        "value_type LowCardinality(String)",
        "value_number Nullable(Float64)",
        "value_string String",
        "updated_at DateTime64(6, 'UTC')",
    ),
    "ReplacingMergeTree",
    "(run_id, key)",
    version="updated_at",
)

RUN_DATA_VERSIONS = Table(
    "run_data_versions",
    (
        "run_id String",
        "name String",
        "version Nullable(String)",
        "uri Nullable(String)",
        "digest Nullable(String)",
        "logged_at DateTime64(6, 'UTC')",
    ),
    "ReplacingMergeTree",
    "(run_id, name)",
    version="logged_at",
)

METRIC_POINTS = Table(
    "metric_points",
    (
        "run_id LowCardinality(String)",  # smaller, faster to sort on insert and to filter (docs/storage.md)
        "metric LowCardinality(String)",
        f"step Int64 {STEP_CODEC}",
        f"value Float64 {VALUE_CODEC}",
        f"time DateTime64(6, 'UTC') {TIME_CODEC}",
        "attempt UInt32 DEFAULT 1 CODEC(ZSTD(1))",  # migration 8: which attempt of the run logged the point
        PROJECT_COLUMN_SPEC,  # migration 8: the run's project, filled by the sink (per-project retention)
    ),
    "ReplacingMergeTree",
    "(run_id, metric, step)",
    version="time",  # a step logged again (a resumed run) keeps its latest value
    partition_by="toYYYYMM(time)",
)

GPU_SAMPLES = Table(
    "gpu_samples",
    (
        "run_id String",
        "host LowCardinality(String)",
        "gpu_index UInt16",
        f"time DateTime64(6, 'UTC') {TIME_CODEC}",
        "gpu_uuid LowCardinality(String)",
        "gpu_model LowCardinality(String)",
        f"utilization_pct Nullable(Float32) {FLOAT_READING_CODEC}",
        f"memory_used_bytes Nullable(UInt64) {COUNTER_CODEC}",
        f"memory_total_bytes Nullable(UInt64) {READING_CODEC}",
        f"power_w Nullable(Float32) {FLOAT_READING_CODEC}",
        f"temperature_c Nullable(Float32) {READING_CODEC}",
        f"sm_clock_mhz Nullable(UInt32) {READING_CODEC}",
        f"memory_clock_mhz Nullable(UInt32) {READING_CODEC}",
        f"power_limit_w Nullable(Float32) {FLOAT_READING_CODEC}",
        f"throttle_reasons Nullable(UInt64) {READING_CODEC}",
        f"process_memory_bytes Nullable(UInt64) {COUNTER_CODEC}",
        PROJECT_COLUMN_SPEC,  # migration 8
    ),
    "ReplacingMergeTree",
    "(run_id, host, gpu_index, time)",
    partition_by="toYYYYMM(time)",
    expires=True,
    settings=_SAMPLE_SETTINGS,
)

HOST_SAMPLES = Table(
    "host_samples",
    (
        "run_id String",
        "host LowCardinality(String)",
        f"time DateTime64(6, 'UTC') {TIME_CODEC}",
        f"host_cpu_pct Nullable(Float32) {FLOAT_READING_CODEC}",
        f"host_memory_used_bytes Nullable(UInt64) {COUNTER_CODEC}",
        f"host_memory_total_bytes Nullable(UInt64) {READING_CODEC}",
        f"process_rss_bytes Nullable(UInt64) {COUNTER_CODEC}",
        PROJECT_COLUMN_SPEC,  # migration 8
    ),
    "ReplacingMergeTree",
    "(run_id, host, time)",
    partition_by="toYYYYMM(time)",
    expires=True,
    settings=_SAMPLE_SETTINGS,
)

RUN_FINISHES = Table(
    "run_finishes",
    (
        "run_id String",
        "finished_at DateTime64(6, 'UTC')",
        "status LowCardinality(String)",
        "exit_code Nullable(Int32)",
        "error Nullable(String)",
        "summary Map(String, Float64)",
        "attempt UInt32 DEFAULT 1",  # migration 8
    ),
    "ReplacingMergeTree",
    "run_id",
    version="finished_at",
)

# --- Rollups -----------------------------------------------------------------------------------
# Per (run, metric): every state below gives the same answer whether a point arrived once or
# several times. first/last order points by (step, time) as FINAL does (highest time wins within
# a step); min/max skip NaN (NULL when a metric is all NaN); the step of the min/max is the
# earliest step reaching it; `steps` is a bitmap of the steps seen, so its cardinality is the
# number of distinct points, as count() with FINAL. `deliveries` counts rows as delivered:
# deliveries - points is how many duplicates arrived.
#
# The argMin/argMax keys are packed into one 128-bit integer instead of a tuple, which makes the MV
# about 3x cheaper on insert (bench/storage_layout.py): (step, time) as step * 2^64 -/+ time_us
# (steps are >= 0, times < 2^63), and (value, step) as the value's order-preserving bits * 2^64
# + step (or + NOT step, so that ties go to the earliest step for the max too), NaN sorting last.
METRIC_SUMMARY_STATES = Table(
    "metric_summary_states",
    (
        "run_id String",
        "metric LowCardinality(String)",
        "first_value_state AggregateFunction(argMin, Float64, Int128)",
        "last_value_state AggregateFunction(argMax, Float64, Int128)",
        "min_value_state SimpleAggregateFunction(min, Nullable(Float64))",
        "max_value_state SimpleAggregateFunction(max, Nullable(Float64))",
        "step_of_min_state AggregateFunction(argMin, Int64, UInt128)",
        "step_of_max_state AggregateFunction(argMax, Int64, UInt128)",
        "first_step_state SimpleAggregateFunction(min, Int64)",
        "last_step_state SimpleAggregateFunction(max, Int64)",
        "steps_state AggregateFunction(groupBitmap, UInt64)",
        "deliveries_state SimpleAggregateFunction(sum, UInt64)",
        "last_time_state SimpleAggregateFunction(max, DateTime64(6, 'UTC'))",
    ),
    "AggregatingMergeTree",
    "(run_id, metric)",  # no time partition: a run's states must be able to merge into one row
    # Rows are heavy (~60 bytes of states) and queries pick scattered runs: small granules read less.
    settings=("index_granularity = 1024",),
)

# A Float64's bits as a UInt64 that sorts like the number (-0.0 and 0.0 alike); NaN is handled apart.
_ORDERED_BITS = (
    "if(value < 0, bitNot(reinterpretAsUInt64(value)), bitOr(reinterpretAsUInt64(value), 9223372036854775808))"
)

METRIC_SUMMARY_MV = MaterializedView(
    "metric_summary_mv",
    "metric_points",
    "metric_summary_states",
    """
    SELECT
        run_id,
        metric,
        argMinState(value, bitShiftLeft(toInt128(step), 64) - toUnixTimestamp64Micro(time)) AS first_value_state,
        argMaxState(value, bitShiftLeft(toInt128(step), 64) + toUnixTimestamp64Micro(time)) AS last_value_state,
        min(if(isNaN(value), NULL, value)) AS min_value_state,
        max(if(isNaN(value), NULL, value)) AS max_value_state,
        argMinState(step, bitOr(bitShiftLeft(toUInt128(if(isNaN(value), 18446744073709551615, {ordered})), 64),
                                toUInt128(step))) AS step_of_min_state,
        argMaxState(step, bitOr(bitShiftLeft(toUInt128(if(isNaN(value), 0, {ordered})), 64),
                                toUInt128(bitNot(toUInt64(step))))) AS step_of_max_state,
        min(step) AS first_step_state,
        max(step) AS last_step_state,
        groupBitmapState(toUInt64(step)) AS steps_state,
        toUInt64(count()) AS deliveries_state,
        max(time) AS last_time_state
    FROM {source}
    GROUP BY run_id, metric
    """.replace("{ordered}", _ORDERED_BITS),
)

# Migration 2's view, as released (it read the rollup alone, so a step logged again with another value
# could leave its superseded value in min/max): migration 6 replaces it with METRIC_SUMMARY below.
METRIC_SUMMARY_V2 = View(
    "metric_summary",
    """
    SELECT
        run_id,
        metric,
""" + merged_columns() + """        {lower_is_better} AS lower_is_better,
        if(lower_is_better, min_value, max_value) AS best_value,
        if(lower_is_better, step_of_min, step_of_max) AS best_step
    FROM {metric_summary_states}
    GROUP BY run_id, metric
    """,
)

# The rollup's columns, merged per (run, metric): exact for every pair whose steps each arrived once.
_ROLLUP = """
    SELECT
        run_id,
        metric,
""" + merged_columns().removesuffix(",\n") + """
    FROM {metric_summary_states}
    GROUP BY run_id, metric
"""

#: Pairs with a step delivered more than once (redelivered, or logged again): only these can hold a
#: superseded value. deliveries = points means every step arrived once, so the rollup is FINAL's answer
#: for the pair. A template over {metric_summary_states} (tests and the bench read it).
#:
#: Why not tell a redelivery (an exact copy, harmless) from a re-log here: the rollup would need, per
#: step, something of the value. A bitmap of cityHash64(step, value) was measured at 22 B a point
#: (the whole point costs 4.6 B in metric_points) and its cardinality at 0.4 s per million points,
#: more than reading the points with FINAL. A check of the rollup's first/last/min/max points against
#: FINAL (point lookups) was measured too: its set of keys spans every suspect pair of the database,
#: which the query's own filters never narrow, so it cost more than recomputing the pairs the query
#: reads (docs/storage.md).
SUSPECT_PAIRS = """
    SELECT run_id, metric FROM {metric_summary_states}
    GROUP BY run_id, metric
    HAVING sum(deliveries_state) > groupBitmapMerge(steps_state)
"""

METRIC_SUMMARY = View(
    "metric_summary",
    """
    SELECT
        r.run_id AS run_id,
        r.metric AS metric,
        if(x.recomputed = 1, x.first_value, r.first_value) AS first_value,
        if(x.recomputed = 1, x.last_value, r.last_value) AS last_value,
        if(x.recomputed = 1, x.min_value, r.min_value) AS min_value,
        if(x.recomputed = 1, x.max_value, r.max_value) AS max_value,
        if(x.recomputed = 1, x.step_of_min, r.step_of_min) AS step_of_min,
        if(x.recomputed = 1, x.step_of_max, r.step_of_max) AS step_of_max,
        r.first_step AS first_step,
        r.last_step AS last_step,
        r.points AS points,
        r.deliveries AS deliveries,
        r.last_time AS last_time,
        {lower_is_better} AS lower_is_better,
        if(lower_is_better, min_value, max_value) AS best_value,
        if(lower_is_better, step_of_min, step_of_max) AS best_step
    FROM ({rollup}) AS r
    LEFT JOIN (
        SELECT
            run_id,
            metric,
            toUInt8(1) AS recomputed,
            argMin(value, step) AS first_value,
            argMax(value, step) AS last_value,
            min(if(isNaN(value), NULL, value)) AS min_value,
            max(if(isNaN(value), NULL, value)) AS max_value,
            if(min_value IS NULL, NULL, argMin(step, (isNaN(value), value, step))) AS step_of_min,
            if(max_value IS NULL, NULL, argMax(step, (NOT isNaN(value), value, -step))) AS step_of_max
        FROM {metric_points} FINAL
        WHERE (run_id, metric) IN ({suspect})
        GROUP BY run_id, metric
    ) AS x ON x.run_id = r.run_id AND x.metric = r.metric
    """.replace("{rollup}", _ROLLUP).replace("{suspect}", SUSPECT_PAIRS),
)

# Per (run, host, GPU, hour). first/last sample are exact under redelivery; the means (utilisation,
# power, hence energy = mean power x held time) weigh a redelivered sample twice, and `samples`
# counts deliveries. GPU-seconds come from `gpu_held_slots` below.
GPU_USAGE_HOURLY_STATES = Table(
    "gpu_usage_hourly_states",
    (
        "run_id String",
        "host LowCardinality(String)",
        "gpu_index UInt16",
        "hour DateTime('UTC')",
        "gpu_model SimpleAggregateFunction(anyLast, LowCardinality(String))",
        "first_sample SimpleAggregateFunction(min, DateTime64(6, 'UTC'))",
        "last_sample SimpleAggregateFunction(max, DateTime64(6, 'UTC'))",
        "samples SimpleAggregateFunction(sum, UInt64)",
        "utilization_state AggregateFunction(avg, Nullable(Float32))",
        "power_state AggregateFunction(avg, Nullable(Float32))",
        "max_memory_used_bytes SimpleAggregateFunction(max, Nullable(UInt64))",
        "max_temperature_c SimpleAggregateFunction(max, Nullable(Float32))",
    ),
    "AggregatingMergeTree",
    "(run_id, host, gpu_index, hour)",
    partition_by="toYYYYMM(hour)",
)

GPU_USAGE_HOURLY_MV = MaterializedView(
    "gpu_usage_hourly_mv",
    "gpu_samples",
    "gpu_usage_hourly_states",
    """
    SELECT
        run_id,
        host,
        gpu_index,
        toStartOfHour(toDateTime(time, 'UTC')) AS hour,
        anyLast(gpu_model) AS gpu_model,
        min(time) AS first_sample,
        max(time) AS last_sample,
        toUInt64(count()) AS samples,
        avgState(utilization_pct) AS utilization_state,
        avgState(power_w) AS power_state,
        max(memory_used_bytes) AS max_memory_used_bytes,
        max(temperature_c) AS max_temperature_c
    FROM {source}
    GROUP BY run_id, host, gpu_index, hour
    """,
)

# Per (run, host, GPU, 150 s slot): the first and last sample time in ms. An MV sees one insert block at
# a time and cannot look up a sample's predecessor; these two numbers per slot are what the one
# definition of GPU-hours needs, exactly (runstream.monitoring.gpu_hours.SLOT_MS says why), and min/max
# are exact under redelivery. 24 small rows a GPU-hour; slots nest in hours.
GPU_HELD_SLOTS = Table(
    "gpu_held_slots",
    (
        "run_id String",
        "host LowCardinality(String)",
        "gpu_index UInt16",
        "slot DateTime('UTC')",
        f"first_ms SimpleAggregateFunction(min, Int64) {TIME_CODEC}",
        f"last_ms SimpleAggregateFunction(max, Int64) {TIME_CODEC}",
    ),
    "AggregatingMergeTree",
    "(run_id, host, gpu_index, slot)",
    partition_by="toYYYYMM(slot)",
)

GPU_HELD_SLOTS_MV = MaterializedView(
    "gpu_held_slots_mv",
    "gpu_samples",
    "gpu_held_slots",
    """
    SELECT run_id, host, gpu_index, {slot} AS slot, min({sample_ms}) AS first_ms, max({sample_ms}) AS last_ms
    FROM {source}
    GROUP BY run_id, host, gpu_index, slot
    """.replace("{slot}", SLOT_OF_SAMPLE_SQL).replace("{sample_ms}", SAMPLE_MS_SQL),
)

# Per (run, host, GPU, hour): the hour's merged states next to `held_s`, its GPU-seconds by the one
# definition (each slot counts from the previous slot's last sample, which may lie in the hour before,
# so the hours add up to the run). An hour rolled up before the slots were kept (migration 5) whose raw
# samples had expired by then has no slots: it counts last - first sample.
_GPU_HOURS_OF_ROLLUP = """
    SELECT
        u.run_id AS run_id, u.host AS host, u.gpu_index AS gpu_index, u.hour AS hour,
        u.utilization AS utilization, u.power AS power, u.peak_memory AS peak_memory, u.deliveries AS deliveries,
        if(h.has_slots = 1, h.held_ms, dateDiff('millisecond', u.first_sample, u.last_sample)) / 1000 AS held_s
    FROM (
        SELECT
            run_id, host, gpu_index, hour,
            min(first_sample) AS first_sample,
            max(last_sample) AS last_sample,
            avgMergeState(utilization_state) AS utilization,
            avgMergeState(power_state) AS power,
            max(max_memory_used_bytes) AS peak_memory,
            sum(samples) AS deliveries
        FROM {gpu_usage_hourly_states}
        GROUP BY run_id, host, gpu_index, hour
    ) AS u
    LEFT JOIN (
        SELECT run_id, host, gpu_index, toStartOfHour(slot) AS hour, sum(held) AS held_ms, toUInt8(1) AS has_slots
        FROM (
            SELECT run_id, host, gpu_index, slot, {held_slot} AS held
            FROM (
                SELECT run_id, host, gpu_index, slot, min(first_ms) AS first_ms, max(last_ms) AS last_ms
                FROM {gpu_held_slots}
                GROUP BY run_id, host, gpu_index, slot
            )
            WINDOW w AS (PARTITION BY run_id, host, gpu_index ORDER BY slot ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
        )
        GROUP BY run_id, host, gpu_index, hour
    ) AS h ON h.run_id = u.run_id AND h.host = u.host AND h.gpu_index = u.gpu_index AND h.hour = u.hour
""".replace("{held_slot}", slot_held_ms_sql("w"))

GPU_USAGE_HOURLY = View(
    "gpu_usage_hourly",
    """
    SELECT
        run_id,
        hour,
        count() AS gpus,
        sum(held_s) AS gpu_seconds,
        avgMerge(utilization) AS avg_utilization_pct,
        sum(finalizeAggregation(power) * held_s) / 3600 AS energy_wh,
        sum(deliveries) AS samples
    FROM ({gpu_hours_of_rollup})
    GROUP BY run_id, hour
    """.replace("{gpu_hours_of_rollup}", _GPU_HOURS_OF_ROLLUP),
)

GPU_USAGE_BY_RUN = View(
    "gpu_usage_by_run",
    """
    SELECT
        run_id,
        count() AS gpus,
        sum(held_s) / 3600 AS gpu_hours,
        avgMerge(utilization) AS avg_utilization_pct,
        sum(mean_power_w * held_s) / 3600 AS energy_wh,
        max(peak_memory) AS peak_memory_used_bytes,
        sum(deliveries) AS samples
    FROM (
        SELECT
            run_id, host, gpu_index,
            sum(held_s) AS held_s,
            avgMergeState(utilization) AS utilization,
            avgMerge(power) AS mean_power_w,
            max(peak_memory) AS peak_memory,
            sum(deliveries) AS deliveries
        FROM ({gpu_hours_of_rollup})
        GROUP BY run_id, host, gpu_index
    )
    GROUP BY run_id
    """.replace("{gpu_hours_of_rollup}", _GPU_HOURS_OF_ROLLUP),
)

FACT_TABLES: tuple[Table, ...] = (
    RUNS, RUN_PARAMS, RUN_DATA_VERSIONS, METRIC_POINTS, GPU_SAMPLES, HOST_SAMPLES, RUN_FINISHES,
)
ROLLUP_TABLES: tuple[Table, ...] = (METRIC_SUMMARY_STATES, GPU_USAGE_HOURLY_STATES)
ROLLUP_MVS: tuple[MaterializedView, ...] = (METRIC_SUMMARY_MV, GPU_USAGE_HOURLY_MV)
#: Migration 5's: GPU-hours with the gap cap.
GPU_HELD_TABLES: tuple[Table, ...] = (GPU_HELD_SLOTS,)
GPU_HELD_MVS: tuple[MaterializedView, ...] = (GPU_HELD_SLOTS_MV,)
#: Every MV of every migration (the cluster DDL reads this).
MATERIALIZED_VIEWS: tuple[MaterializedView, ...] = ROLLUP_MVS + GPU_HELD_MVS + (RUN_KEYS_MV, METRIC_GOALS_MV)
RUN_VIEWS: tuple[View, ...] = (METRIC_SUMMARY, GPU_USAGE_HOURLY, GPU_USAGE_BY_RUN)
#: Every table of every migration: the cluster DDL and the consumer's column checks read this.
TABLES: tuple[Table, ...] = (FACT_TABLES + ROLLUP_TABLES + DRIFT_TABLES + COST_TABLES + GPU_HELD_TABLES
                             + (RUN_SUMMARY, RUN_KEYS) + LIFECYCLE_TABLES + (RETENTION_RULES,)
                             + METRIC_EVENT_TABLES + (METRIC_GOALS, SPOOL_PROGRESS))
VIEWS: tuple[View, ...] = RUN_VIEWS + COST_VIEWS + ANALYSIS_VIEWS + RANK_VIEWS


def ttl_clause(days: int | None) -> str:
    """The TTL of raw samples, or '' when samples are kept forever (the default)."""
    if not days:
        return ""
    return f"TTL toDateTime({SAMPLE_TTL_COLUMN}) + INTERVAL {int(days)} DAY"


def engine_clause(table: Table, *, replicated_path: str | None = None, replica_name: str = "{replica}") -> str:
    """ENGINE ... ORDER BY ... for one server, or with the Replicated engine when a ZooKeeper path is given."""
    args: list[str] = []
    family = table.engine
    if replicated_path is not None:
        family = f"Replicated{family}"
        args += [f"'{replicated_path}'", f"'{replica_name}'"]
    if table.version:
        args.append(table.version)
    parts = [f"ENGINE = {family}" + (f"({', '.join(args)})" if args else "")]
    if table.partition_by:
        parts.append(f"PARTITION BY {table.partition_by}")
    parts.append(f"ORDER BY {table.order_by}")
    return "\n".join(parts)


def create_table_sql(
    table: Table, qualified_name: str, *, on_cluster: str = "", replicated_path: str | None = None,
    replica_name: str = "{replica}", sample_ttl_days: int | None = None,
) -> str:
    columns = ",\n    ".join(table.columns)
    lines = [f"CREATE TABLE IF NOT EXISTS {qualified_name}{on_cluster} (\n    {columns}\n)",
             engine_clause(table, replicated_path=replicated_path, replica_name=replica_name)]
    if table.expires and sample_ttl_days:
        lines.append(ttl_clause(sample_ttl_days))
    if table.settings:
        lines.append("SETTINGS " + ", ".join(table.settings))
    return "\n".join(lines)


def create_materialized_view_sql(mv: MaterializedView, database: str, *, on_cluster: str = "",
                                 source: str | None = None, target: str | None = None) -> str:
    select = _dedent(mv.select).format(source=f"{database}.{source or mv.source}")
    return (f"CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{mv.name}{on_cluster}\n"
            f"TO {database}.{target or mv.target}\nAS {select}")


def create_view_sql(view: View, database: str, *, on_cluster: str = "") -> str:
    names = {spec.name: f"{database}.{spec.name}" for spec in TABLES + VIEWS}
    select = _dedent(view.select).format(lower_is_better=LOWER_IS_BETTER_SQL, **names)
    return f"CREATE VIEW IF NOT EXISTS {database}.{view.name}{on_cluster}\nAS {select}"


def _dedent(sql: str) -> str:
    return textwrap.dedent(sql).strip()


# Statements are templates over {db}, filled in by migrate(). Nothing was deployed before this
# layout, so versions 1-2 are the clean set; later changes append versions, never edit these.
_DB = "{db}"

# The slots of the samples already stored (the MV sees only new ones): min/max, so a sample that
# the MV also saw is not counted twice. Samples that had expired leave their hours without slots.
_GPU_HELD_SLOTS_BACKFILL = f"""
INSERT INTO {_DB}.gpu_held_slots (run_id, host, gpu_index, slot, first_ms, last_ms)
SELECT run_id, host, gpu_index, {SLOT_OF_SAMPLE_SQL} AS slot, min({SAMPLE_MS_SQL}), max({SAMPLE_MS_SQL})
FROM {_DB}.gpu_samples FINAL
GROUP BY run_id, host, gpu_index, slot
"""  # noqa: S608 - the module's own text


def _add_column_sql(table_name: str, column: str) -> str:
    """ALTER TABLE ... ADD COLUMN IF NOT EXISTS with the column's definition from its table's spec."""
    table = next(t for t in (*FACT_TABLES, RUN_SUMMARY) if t.name == table_name)
    definition = table.columns[table.column_names.index(column)]
    return f"ALTER TABLE {_DB}.{table_name} ADD COLUMN IF NOT EXISTS {definition}"


def _retype_columns_sql(table: Table, names: tuple[str, ...]) -> str:
    """One ALTER TABLE ... MODIFY COLUMN per listed column, each to its type in the table's spec (one mutation,
    waited for: the columns are rewritten part by part, and readers convert the parts not yet rewritten)."""
    definitions = {column_name(definition): definition for definition in table.columns}
    changes = ", ".join(f"MODIFY COLUMN {definitions[name]}" for name in names)
    return f"ALTER TABLE {_DB}.{table.name} {changes} SETTINGS mutations_sync = 1"


def _replace_view_sql(view: View) -> str:
    """CREATE OR REPLACE VIEW: the view's current definition, whether or not an older one exists."""
    return create_view_sql(view, _DB).replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW", 1)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "fact tables: runs, params, data versions, metric points, GPU and host samples, finishes",
        tuple(create_table_sql(table, f"{_DB}.{table.name}") for table in FACT_TABLES),
    ),
    Migration(
        2,
        "rollups: metric_summary and gpu_usage (AggregatingMergeTree fed by materialized views)",
        tuple(create_table_sql(table, f"{_DB}.{table.name}") for table in ROLLUP_TABLES)
        + tuple(create_materialized_view_sql(mv, _DB) for mv in ROLLUP_MVS)
        # (the GPU usage views read gpu_held_slots, so migration 5 creates them)
        + (create_view_sql(METRIC_SUMMARY_V2, _DB),),
    ),
    Migration(
        3,
        "drift monitoring: references, baselines, prediction samples and features",
        tuple(create_table_sql(table, f"{_DB}.{table.name}") for table in DRIFT_TABLES),
    ),
    Migration(
        4,
        "GPU cost: price table and budgets, current_* views",
        tuple(create_table_sql(table, f"{_DB}.{table.name}") for table in COST_TABLES)
        + tuple(create_view_sql(view, _DB) for view in COST_VIEWS),
    ),
    Migration(
        5,
        "one definition of GPU-hours (gpu_held_slots) and the analysis views",
        tuple(create_table_sql(table, f"{_DB}.{table.name}") for table in GPU_HELD_TABLES)
        + tuple(create_materialized_view_sql(mv, _DB) for mv in GPU_HELD_MVS)
        + (_GPU_HELD_SLOTS_BACKFILL,)
        # Views read before this version (and the analysis views `ensure_views` used to create on read)
        # are replaced: dependants first.
        + tuple(f"DROP VIEW IF EXISTS {_DB}.{view.name}"
                for view in (*reversed(ANALYSIS_VIEWS_V6), GPU_USAGE_BY_RUN, GPU_USAGE_HOURLY))
        + tuple(create_view_sql(view, _DB) for view in (GPU_USAGE_HOURLY, GPU_USAGE_BY_RUN, *ANALYSIS_VIEWS_V6)),
    ),
    Migration(
        6,
        "exact metric_summary when a step is logged again (repeated steps summarised from FINAL); views replaced",
        # Views hold no data: replaced in place, so that a reader never finds one missing. The analysis
        # views are replaced too, so that an existing database gets their current definitions.
        tuple(_replace_view_sql(view) for view in (METRIC_SUMMARY, *ANALYSIS_VIEWS_V6)),
    ),
    Migration(
        7,
        "run_summary: the compact per-run summary the run list, the filter and the leaderboard read",
        # Created (with the names filters may use, fed by an MV), filled from the runs already stored,
        # then the two views that read it replace their per-read computation (in place: a reader never
        # finds one missing).
        (create_table_sql(RUN_SUMMARY, f"{_DB}.{RUN_SUMMARY.name}"),
         create_table_sql(RUN_KEYS, f"{_DB}.{RUN_KEYS.name}"),
         create_materialized_view_sql(RUN_KEYS_MV, _DB), BACKFILL_SQL)
        + tuple(_replace_view_sql(view) for view in (RUN_OVERVIEW_V7, LEADERBOARD_V7)),
    ),
    Migration(
        8,
        "run lifecycle: attempts, superseded points, heartbeats, curation; attempt, group, sweep and fork columns",
        tuple(_add_column_sql(table, column) for table, columns in LIFECYCLE_COLUMNS.items() for column in columns)
        + tuple(create_table_sql(table, f"{_DB}.{table.name}") for table in LIFECYCLE_TABLES)
        + (create_table_sql(RETENTION_RULES, f"{_DB}.{RETENTION_RULES.name}"),)
        + (LIFECYCLE_BACKFILL_SQL,),
    ),
    Migration(
        9,
        "richer metrics: every rank's points, histograms, declared metric goals and axes",
        tuple(create_table_sql(table, f"{_DB}.{table.name}") for table in METRIC_EVENT_TABLES)
        # declared goals, folded per metric (runstream.consumer.metric_goals), rank the leaderboard view
        # (mode '') and run_overview's best maps
        + (create_table_sql(METRIC_GOALS, f"{_DB}.{METRIC_GOALS.name}"),
           create_materialized_view_sql(METRIC_GOALS_MV, _DB))
        + tuple(_replace_view_sql(view) for view in (RUN_OVERVIEW, LEADERBOARD))
        # every rank's spread, skew and stragglers (runstream.analysis.ranks)
        + tuple(create_view_sql(view, _DB) for view in RANK_VIEWS)
        # curves keep spikes: min, max and last per bucket, NaN/±Inf counted (runstream.analysis.curves)
        + (_replace_view_sql(METRIC_CURVE),),
    ),
    Migration(
        10,
        "spool_progress: how far each spool file is loaded (runstream ingest and runstream server share it)",
        (create_table_sql(SPOOL_PROGRESS, f"{_DB}.{SPOOL_PROGRESS.name}"),),
    ),
    Migration(
        11,
        "metric_curve: the same buckets, each curve's x range from its points as arrays instead of a window",
        # runstream.analysis.curves: the same rows, measured faster; in place, so no reader finds it missing
        (_replace_view_sql(METRIC_CURVE),),
    ),
    Migration(
        12,
        "run_summary: map keys as LowCardinality(String) (the filter and the leaderboard read them faster)",
        (_retype_columns_sql(RUN_SUMMARY, RUN_SUMMARY_MAP_COLUMNS),),
    ),
)

_LEDGER = """
CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree ORDER BY version
"""


def _in_database(statement: str, database: str) -> str:
    """Fill in the {db} of a statement template; a replace, not str.format, since views carry
    ClickHouse query parameters in braces ({mode:String})."""
    return statement.replace(_DB, database)


class NotMigrated(RuntimeError):
    """A read command met a database that lacks tables or views this runstream reads."""


def require_migrated(client: Any, database: str) -> None:
    """Raise NotMigrated, naming what is missing, unless `database` has every migration applied.

    Read commands (analysis, cost, drift, the monitor) call this instead of migrating: DDL runs only
    in `runstream migrate` and in the consumer, which owns the schema. Read-only: it only queries
    system.tables and the ledger.
    """
    tables = {str(name) for (name,) in client.query(
        "SELECT name FROM system.tables WHERE database = {db:String}", parameters={"db": database}).result_rows}
    if "metric_points" in tables and is_cluster_managed(client, database):
        return  # `runstream migrate --cluster` lays these out; it keeps no single-server ledger
    done: set[int] = set()
    if "schema_migrations" in tables:
        query = f"SELECT DISTINCT version FROM {database}.schema_migrations"  # noqa: S608
        done = {int(version) for (version,) in client.query(query).result_rows}
    missing = [m for m in MIGRATIONS if m.version not in done]
    if missing:
        what = "; ".join(f"{m.version} ({m.name})" for m in missing)
        raise NotMigrated(
            f"database {database!r} lacks migration(s) {what}: run `runstream migrate` with the same --clickhouse "
            "(the consumer also applies them when it starts)"
        )


def applied_migrations(client: Any, database: str) -> dict[int, str]:
    """Version -> name of the migrations this database recorded."""
    client.command(_LEDGER.format(db=database))
    query = f"SELECT version, any(name) FROM {database}.schema_migrations GROUP BY version"  # noqa: S608
    return {int(version): str(name) for version, name in client.query(query).result_rows}


def applied_versions(client: Any, database: str) -> set[int]:
    return set(applied_migrations(client, database))


def is_cluster_managed(client: Any, database: str) -> bool:
    """True when `runstream migrate --cluster` laid this database out (metric_points is Distributed).

    Single-server migrations must then do nothing: creating an MV here over the Distributed table
    would count every point a second time next to the shards' own MVs.
    """
    rows = client.query(
        "SELECT engine FROM system.tables WHERE database = {db:String} AND name = 'metric_points'",
        parameters={"db": database},
    ).result_rows
    return bool(rows) and rows[0][0] == "Distributed"


def migrate(client: Any, database: str, *, sample_ttl_days: int | None = None) -> list[int]:
    """Apply the migrations this database lacks; return their versions (empty when up to date).

    `sample_ttl_days` sets how long raw GPU and host samples are kept (their hourly rollup stays);
    None leaves the current setting alone (the consumer calls this on every start), 0 removes it.
    """
    if is_cluster_managed(client, database):
        log.info("%s is laid out for a cluster; `runstream migrate --cluster` manages it", database)
        return []
    done = applied_migrations(client, database)
    known = {migration.version: migration.name for migration in MIGRATIONS}
    stale = {version: name for version, name in done.items() if known.get(version) not in (None, name)}
    if stale:
        version, name = min(stale.items())
        raise RuntimeError(
            f"database {database!r} was created by a pre-release layout (migration {version} {name!r} "
            f"is now {known[version]!r}); drop it (DROP DATABASE {database}) and run `runstream migrate` again"
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(_in_database(statement, database))
        client.insert(
            f"{database}.schema_migrations",
            [[migration.version], [migration.name]],
            column_names=["version", "name"],
            column_oriented=True,
        )
        log.info("applied migration %d (%s) to %s", migration.version, migration.name, database)
        applied.append(migration.version)
    if sample_ttl_days is not None:
        set_sample_ttl(client, database, sample_ttl_days)
    return applied


def ddl(database: str, *, sample_ttl_days: int | None = None) -> list[str]:
    """Every migration's statements for `database`, in order (what `runstream migrate --print` shows)."""
    statements = [_in_database(statement, database).strip() for migration in MIGRATIONS
                  for statement in migration.statements]
    if sample_ttl_days:
        statements += [f"ALTER TABLE {database}.{table.name} MODIFY {ttl_clause(sample_ttl_days)}"
                       for table in TABLES if table.expires]
    return statements


def set_sample_ttl(client: Any, database: str, days: int) -> None:
    """Keep raw GPU/host samples `days` days (0: forever). Whole monthly parts go once all their rows expired."""
    if days < 0:
        raise ValueError(f"sample_ttl_days: expected days >= 0 (0 keeps samples forever), got {days!r}")
    from runstream.consumer.retention import raw_ttl_clause, retention_rules

    rules = retention_rules(client, database)  # per-project rules (`runstream retention`) stay next to this one
    for table in TABLES:
        if not table.expires:
            continue
        name = f"{database}.{table.name}"
        if clause := raw_ttl_clause(table.name, rules, days):
            client.command(f"ALTER TABLE {name} MODIFY {clause}")
        elif has_ttl(client, database, table.name):
            client.command(f"ALTER TABLE {name} REMOVE TTL")
        log.info("raw samples in %s: %s", name, f"kept {days} days" if days else "kept forever")


def has_ttl(client: Any, database: str, table: str) -> bool:
    rows = client.query(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = {table:String}",
        parameters={"db": database, "table": table},
    ).result_rows
    return bool(rows) and " TTL " in rows[0][0]
