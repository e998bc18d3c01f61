"""Table specs of the richer metrics: every rank's points, histograms, declared metrics (migration 9).

- `rank_metric_points`: the points of ranks other than 0 of a distributed run logged with
  `log_all_ranks`, from `rank_metric_steps` events. Rank 0's points stay in `metric_points`, the
  run's own curve, so the run's summary, leaderboard and filters read exactly what they read before;
  the per-rank views join the two (`metric_points` as rank 0). Keyed with the rank: nothing collapses
  across ranks, a redelivered copy collapses with its twin. Raw like `metric_points`: it carries the
  run's project, and a project's retention rule expires it too.
- `metric_histograms`: one histogram per (run, metric, step, rank), binned in the SDK; NaN and
  +/-Inf counted apart.
- `metric_definitions`: what a run declares of each metric (goal min/max, summaries, the axis to
  plot against); the latest declaration of a (run, metric) wins.
"""

from __future__ import annotations

from runstream.consumer.run_projects import PROJECT_COLUMN_SPEC
from runstream.consumer.table_spec import Table

RANK_METRIC_POINTS = Table(
    "rank_metric_points",
    (
        "run_id LowCardinality(String)",
        "metric LowCardinality(String)",
        "step Int64 CODEC(DoubleDelta, LZ4)",
        "rank UInt32",
        "node LowCardinality(String)",
        "value Float64 CODEC(Delta, ZSTD(1))",
        "time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1))",
        "attempt UInt32 DEFAULT 1 CODEC(ZSTD(1))",
        PROJECT_COLUMN_SPEC,  # the run's project, filled by the sink (per-project retention)
    ),
    "ReplacingMergeTree",
    "(run_id, metric, step, rank)",
    version="time",
    partition_by="toYYYYMM(time)",
)

METRIC_HISTOGRAMS = Table(
    "metric_histograms",
    (
        "run_id LowCardinality(String)",
        "metric LowCardinality(String)",
        "step Int64",
        "rank UInt32",
        "node LowCardinality(String)",
        "time DateTime64(6, 'UTC')",
        "edges Array(Float64)",
        "counts Array(UInt64)",
        "nan_count UInt64",
        "neg_inf_count UInt64",
        "pos_inf_count UInt64",
        "attempt UInt32 DEFAULT 1",
        PROJECT_COLUMN_SPEC,  # the run's project, filled by the sink (per-project retention)
    ),
    "ReplacingMergeTree",
    "(run_id, metric, step, rank)",
    version="time",
    partition_by="toYYYYMM(time)",
)

METRIC_DEFINITIONS = Table(
    "metric_definitions",
    (
        "run_id String",
        "metric String",
        "goal LowCardinality(String)",  # 'min', 'max', or '' when not declared
        "summary Array(String)",
        "step_metric String",  # '' when the metric is plotted against the step
        "defined_at DateTime64(6, 'UTC')",
    ),
    "ReplacingMergeTree",
    "(run_id, metric)",
    version="defined_at",
)

#: Every table of migration 9; the consumer's batches write all of them from events.
METRIC_EVENT_TABLES: tuple[Table, ...] = (RANK_METRIC_POINTS, METRIC_HISTOGRAMS, METRIC_DEFINITIONS)
