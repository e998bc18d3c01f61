"""Table specs of the run lifecycle: attempts, superseded points, heartbeats and curation (migration 8).

- `run_attempts`: one row per (run, attempt), from each attempt's `run_started`: when and where each
  process of a resumed run started. `runs` keeps the latest attempt only (ReplacingMergeTree).
- `metric_points_superseded`: the points of an earlier attempt that a later attempt logged again
  (the crashed attempt's steps past its checkpoint). `metric_points` keeps one row per (run, metric,
  step) — the latest logged wins, so every view shows the later attempt — and a merge would drop the
  earlier value; the sink copies those rows here before it inserts a later attempt's points, so
  `runstream curve RUN --attempts` can still show them. Keyed with the attempt: nothing collapses
  across attempts, a redelivered copy collapses with its twin.
- `run_heartbeats`: the last heartbeat of each run (ReplacingMergeTree on run_id by time): is the
  process alive, and has its step advanced.
- `run_curation`: the curated state of each run (tags, note, archived, deleted), the last message of
  the compacted curation topic; `run_deletions` keeps an audit row per delete.
"""

from __future__ import annotations

from runstream.consumer.table_spec import Table

#: What a run_started says of the run's lifecycle, as columns of `runs` and of `run_summary` (migration 8):
#: the latest attempt, the labels, the fork's parent and step.
RUN_LIFECYCLE_COLUMNS: tuple[str, ...] = (
    "attempt UInt32 DEFAULT 1",
    "run_group String DEFAULT ''",
    "job_type LowCardinality(String) DEFAULT ''",
    "sweep String DEFAULT ''",
    "fork_from Nullable(String)",
    "fork_step Nullable(Int64)",
)

RUN_ATTEMPTS = Table(
    "run_attempts",
    (
        "run_id String",
        "attempt UInt32",
        "started_at DateTime64(6, 'UTC')",
        "host LowCardinality(String)",
        "scheduler Map(String, String)",
        "event_id String",
    ),
    "ReplacingMergeTree",
    "(run_id, attempt)",
    version="started_at",
)

METRIC_POINTS_SUPERSEDED = Table(
    "metric_points_superseded",
    (
        "run_id LowCardinality(String)",
        "metric LowCardinality(String)",
        "attempt UInt32",
        "step Int64",
        "value Float64",
        "time DateTime64(6, 'UTC')",
    ),
    "ReplacingMergeTree",
    "(run_id, metric, attempt, step)",
    version="time",
)

RUN_HEARTBEATS = Table(
    "run_heartbeats",
    (
        "run_id String",
        "attempt UInt32",
        "time DateTime64(6, 'UTC')",
        "interval_s Float64",
        "last_step Nullable(Int64)",
        "last_step_at Nullable(DateTime64(6, 'UTC'))",
        "steps_per_s Nullable(Float64)",
    ),
    "ReplacingMergeTree",
    "run_id",
    version="time",
)

RUN_CURATION = Table(
    "run_curation",
    (
        "run_id String",
        "updated_at DateTime64(6, 'UTC')",
        "action LowCardinality(String)",
        "actor LowCardinality(String)",
        "tags Map(String, String)",
        "note String",
        "archived Bool",
        "deleted Bool",
        "event_id String",
    ),
    "ReplacingMergeTree",
    "run_id",
    version="updated_at",
)

RUN_DELETIONS = Table(
    "run_deletions",
    (
        "run_id String",
        "deleted_at DateTime64(6, 'UTC')",
        "actor LowCardinality(String)",
        "event_id String",
        "rows_deleted Map(String, UInt64)",
    ),
    "ReplacingMergeTree",
    "(run_id, event_id)",
    version="deleted_at",
)

#: Tables the consumer's batches write from events (their columns drive the batch, as for the facts).
LIFECYCLE_EVENT_TABLES: tuple[Table, ...] = (RUN_ATTEMPTS, RUN_HEARTBEATS, RUN_CURATION)
#: Every table of migration 8.
LIFECYCLE_TABLES: tuple[Table, ...] = LIFECYCLE_EVENT_TABLES + (METRIC_POINTS_SUPERSEDED, RUN_DELETIONS)
