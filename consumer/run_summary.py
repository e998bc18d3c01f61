"""The compact per-run summary (`run_summary`): one row per run that the run list, the filter, the
leaderboard, min/max and importance read instead of the raw points or the per-pair rollup.

A row holds what `runs`, `--where`, `best` and `compare` show: the run's attributes, its params
(text, number, a param logged as None as NULL), and per metric its final value and step, the finite
min and max with the earliest step reaching each, the best (min or max by
`runstream.monitoring.metric_direction`), the number of distinct steps, and GPU-hours. The table is
a ReplacingMergeTree on (project, run_id) versioned by `updated_at`: a rewrite replaces the row, and
readers read it with FINAL (measured at 100 runs: 3.5-4.3 ms against 5.5-27 ms for argMax by version).

The service that owns the schema writes it: after the sink inserted a batch, and before the consumer
commits, every run the batch touched is recomputed EXACTLY and rewritten (`refresh`): per (run,
metric) from the rollup `metric_summary_states` when each step arrived once and no value was
infinite (deliveries = points: the rollup is FINAL's answer), otherwise from `metric_points FINAL`
under the finite-value rule (a step redelivered or logged again, a ±Inf), so the latest value of
each step wins as in FINAL. A consumer killed between the insert and the refresh gets the batch
redelivered and recomputes; a refresh that sees a redelivery recomputes the pair from FINAL. The
same path serves `runstream ingest`. Migration 7 fills the table for the runs already stored.

A run appears once its `run_started` row is stored (as in `run_overview` before): points that arrive
first are summarised when the start arrives, since that batch touches the run too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from runstream.consumer.lifecycle_tables import RUN_LIFECYCLE_COLUMNS
from runstream.consumer.rollup_merges import MERGE, merged_columns
from runstream.consumer.table_spec import MaterializedView, Table, column_name, column_type
from runstream.monitoring.finite_values import finite_max_sql, finite_min_sql, step_of_max_sql, step_of_min_sql
from runstream.monitoring.gpu_hours import slot_held_ms_sql
from runstream.monitoring.metric_direction import LOWER_IS_BETTER_SQL

log = logging.getLogger(__name__)

#: The key type of every map of `run_summary`: param, metric and tag names repeat in every run's row,
#: so a dictionary per part stores and compares them once. At 100,000 runs the filter's read took 14-23% less
#: (35.2 -> 30.3 and 38.6 -> 29.8 ms in two back-to-back runs against String keys) and `params` 41% less space
#: uncompressed; at 100 runs no change beyond 0.3 ms.
MAP_KEY = "LowCardinality(String)"

RUN_SUMMARY = Table(
    "run_summary",
    (
        "project LowCardinality(String)",
        "run_id String",
        "run_name String",
        "user LowCardinality(String)",
        "host LowCardinality(String)",
        "started_at DateTime64(6, 'UTC')",
        "finished_at Nullable(DateTime64(6, 'UTC'))",
        "status LowCardinality(String)",
        "git_commit Nullable(String)",
        f"tags Map({MAP_KEY}, String)",
        # a param as logged, as text; NULL for a param logged as None (reads like one never logged)
        f"params Map({MAP_KEY}, Nullable(String))",
        # the params that are numbers (int, float, bool as 1/0)
        f"params_num Map({MAP_KEY}, Nullable(Float64))",
        # per metric: the value at the last step (NaN and ±Inf kept) and that step
        f"final Map({MAP_KEY}, Nullable(Float64))",
        f"last_step Map({MAP_KEY}, Nullable(Int64))",
        # per metric with a finite value: finite min/max and the earliest step reaching each
        f"min_value Map({MAP_KEY}, Nullable(Float64))",
        f"min_step Map({MAP_KEY}, Nullable(Int64))",
        f"max_value Map({MAP_KEY}, Nullable(Float64))",
        f"max_step Map({MAP_KEY}, Nullable(Int64))",
        # min for lower-is-better metrics, else max (runstream.monitoring.metric_direction)
        f"best Map({MAP_KEY}, Nullable(Float64))",
        f"best_step Map({MAP_KEY}, Nullable(Int64))",
        # distinct steps stored, as count() with FINAL
        f"points Map({MAP_KEY}, UInt64)",
        "gpu_hours Float64",
        "updated_at DateTime64(6, 'UTC')",
        # migration 8, the run lifecycle: the latest attempt, labels, the fork's parent, the curated note
        # and archive flag (the curated tags replace `tags`)
        *RUN_LIFECYCLE_COLUMNS,
        "note String DEFAULT ''",
        "archived Bool DEFAULT false",
    ),
    "ReplacingMergeTree",
    "(project, run_id)",
    version="updated_at",
)

#: The names a filter may use, per project (param keys by kind, metric names, tag keys), kept by an MV on
#: run_summary: the filter checks its fields against a table of tens of rows instead of reading every
#: run's maps (16-40 ms at 100,000 runs, measured). Keys only ever accumulate: a param whose kind
#: changed keeps its old kind here (a filter may then compare it both ways).
RUN_KEYS = Table(
    "run_keys",
    (
        "project LowCardinality(String)",
        "kind LowCardinality(String)",  # param_text, param_number, metric, tag
        "key String",
    ),
    "ReplacingMergeTree",
    "(project, kind, key)",
    # On a cluster each shard's MV writes its own runs' names to its local table; readers take DISTINCT.
    sharding="cityHash64(project, kind, key)",
)

RUN_KEYS_MV = MaterializedView(
    "run_keys_mv",
    "run_summary",
    "run_keys",
    """
    SELECT DISTINCT project, tupleElement(pair, 1) AS kind, tupleElement(pair, 2) AS key
    FROM {source}
    ARRAY JOIN arrayConcat(
        arrayMap(k -> ('param_text', k), arrayFilter(k -> NOT mapContains(params_num, k), mapKeys(params))),
        arrayMap(k -> ('param_number', k), mapKeys(params_num)),
        arrayMap(k -> ('metric', k), mapKeys(final)),
        arrayMap(k -> ('tag', k), mapKeys(tags))
    ) AS pair
    """,
)

# Every (run, metric) of the runs in {runs_in}, from the rollup; `from_final` marks the pairs whose
# rollup may differ from FINAL (a step delivered more than once) or from the finite rule (an infinite
# value: the rollup skips NaN only).
_ROLLUP_PAIRS = f"""
    SELECT
        run_id,
        metric,
        {MERGE["last_value"]} AS final_value,
{merged_columns(("last_step", "min_value", "max_value", "step_of_min", "step_of_max"))}\
        toUInt64({MERGE["points"]}) AS points,
        {MERGE["deliveries"]} > points OR ifNull(isInfinite(min_value), 0) OR ifNull(isInfinite(max_value), 0)
            AS from_final
    FROM {{db}}.metric_summary_states
    WHERE {{runs_in}}
    GROUP BY run_id, metric
"""  # noqa: S608 - the module's own text

def _final_pairs(final: str, last_step: str, low: str, high: str, step_of_low: str, step_of_high: str, points: str,
                 indent: str) -> str:
    """The pairs the rollup may get wrong (`from_final`), summarised from `metric_points FINAL` under the
    finite-value rule, with the given column names: one text for migration 7's refresh and migration 8's."""
    lines = (
        "SELECT", "    run_id,", "    metric,",
        f"    argMax(value, step) AS {final},",
        f"    max(step) AS {last_step},",
        f"    {finite_min_sql()} AS {low},",
        f"    {finite_max_sql()} AS {high},",
        f"    if({low} IS NULL, NULL, {step_of_min_sql()}) AS {step_of_low},",
        f"    if({high} IS NULL, NULL, {step_of_max_sql()}) AS {step_of_high},",
        f"    count() AS {points}",
        "FROM {db}.metric_points FINAL",
        f"WHERE {{runs_in}} AND (run_id, metric) IN (SELECT run_id, metric FROM ({_ROLLUP_PAIRS}) WHERE from_final)",  # noqa: S608
        "GROUP BY run_id, metric",
    )
    return "\n".join(indent + line for line in lines)


_PAIRS = f"""
    SELECT run_id, metric, final_value, last_step, min_value, max_value, step_of_min, step_of_max, points
    FROM ({_ROLLUP_PAIRS}) WHERE NOT from_final
    UNION ALL
{_final_pairs("final_value", "last_step", "min_value", "max_value", "step_of_min", "step_of_max", "points", "    ")}
"""  # noqa: S608 - the module's own text

#: Migration 8's pairs: as _PAIRS, except that a pair _PAIRS recomputes from FINAL whose raw points
#: expired (per-project retention, `runstream.consumer.retention`: FINAL holds fewer distinct steps than
#: the rollup saw) keeps what the run's stored summary has for it (else the rollup's values): a later
#: refresh of an old run (a tag, a note) never replaces its summary by a summary of what is left.
_LIFECYCLE_PAIRS = f"""
    SELECT run_id, metric, p_final AS final_value, p_last_step AS last_step, p_min AS min_value, p_max AS max_value,
           p_step_of_min AS step_of_min, p_step_of_max AS step_of_max, p_points AS points
    FROM (
        SELECT
            r.run_id AS run_id,
            r.metric AS metric,
            multiIf(NOT r.from_final, 0, x.x_points >= r.points, 1, s.stored = 1, 2, 0) AS source,
            -- source 2 merges the stored summary with the points still stored (steps logged since it was
            -- written): the later last step's value, the lower min / higher max (ties: the earlier step),
            -- and the rollup's distinct steps and last step (exact whatever expired)
            x.x_points > 0 AND x.x_last_step >= assumeNotNull(s.s_last_step) AS x_has_last,
            multiIf(source = 1 OR (source = 2 AND x_has_last), x.x_final,
                    source = 2, assumeNotNull(s.s_final), r.final_value) AS p_final,
            multiIf(source = 1, x.x_last_step, r.last_step) AS p_last_step,
            multiIf(x.x_min IS NULL, 0, s.s_min IS NULL, 1, x.x_min < s.s_min, 1, x.x_min > s.s_min, 0, 2) AS min_side,
            multiIf(x.x_max IS NULL, 0, s.s_max IS NULL, 1, x.x_max > s.s_max, 1, x.x_max < s.s_max, 0, 2) AS max_side,
            multiIf(source = 1, x.x_min, source = 2, if(min_side = 0, s.s_min, x.x_min), r.min_value) AS p_min,
            multiIf(source = 1, x.x_max, source = 2, if(max_side = 0, s.s_max, x.x_max), r.max_value) AS p_max,
            multiIf(source = 1, x.x_step_of_min,
                    source = 2, multiIf(min_side = 0, s.s_step_of_min, min_side = 1, x.x_step_of_min,
                                        least(x.x_step_of_min, s.s_step_of_min)),
                    r.step_of_min) AS p_step_of_min,
            multiIf(source = 1, x.x_step_of_max,
                    source = 2, multiIf(max_side = 0, s.s_step_of_max, max_side = 1, x.x_step_of_max,
                                        least(x.x_step_of_max, s.s_step_of_max)),
                    r.step_of_max) AS p_step_of_max,
            multiIf(source = 1, x.x_points, r.points) AS p_points
        FROM ({_ROLLUP_PAIRS}) AS r
        LEFT JOIN (
{_final_pairs("x_final", "x_last_step", "x_min", "x_max", "x_step_of_min", "x_step_of_max", "x_points", "            ")}
        ) AS x ON x.run_id = r.run_id AND x.metric = r.metric
        LEFT JOIN (
            SELECT
                run_id,
                metric,
                toUInt8(1) AS stored,
                final[metric] AS s_final,
                last_step[metric] AS s_last_step,
                min_value[metric] AS s_min,
                max_value[metric] AS s_max,
                min_step[metric] AS s_step_of_min,
                max_step[metric] AS s_step_of_max,
                points[metric] AS s_points
            FROM {{db}}.run_summary FINAL
            ARRAY JOIN mapKeys(final) AS metric
            WHERE {{runs_in}} AND project IN (SELECT project FROM {{db}}.runs WHERE {{runs_in}})
        ) AS s ON s.run_id = r.run_id AND s.metric = r.metric
    )
"""  # noqa: S608 - the module's own text


# GPU-hours by the one definition (runstream.monitoring.gpu_hours) from the `gpu_held_slots` rollup: per
# GPU the held milliseconds of its slots (whole ms, so each GPU's seconds equal the raw samples' to the
# last bit), summed per run. The raw samples of a week-long 8-GPU run are ~500,000 rows; its slots are
# ~32,000, and the rollup outlives the samples' TTL.
_GPU_HOURS = f"""
    SELECT run_id, sum(gpu_seconds) / 3600 AS gpu_hours
    FROM (
        SELECT run_id, host, gpu_index, sum(held_ms) / 1000 AS gpu_seconds
        FROM (
            SELECT run_id, host, gpu_index, slot, {slot_held_ms_sql("w")} AS held_ms
            FROM (
                SELECT run_id, host, gpu_index, slot, min(first_ms) AS first_ms, max(last_ms) AS last_ms
                FROM {{db}}.gpu_held_slots
                WHERE {{runs_in}}
                GROUP BY run_id, host, gpu_index, slot
            )
            WINDOW w AS (PARTITION BY run_id, host, gpu_index ORDER BY slot ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
        )
        GROUP BY run_id, host, gpu_index
    )
    GROUP BY run_id
"""  # noqa: S608 - the module's own text


def _map(key: str, value: str, present: str | None = None) -> str:
    """A Map from the grouped rows; `present` leaves out the rows where it is false (a NULL value kept
    otherwise: groupArray skips NULLs, so keys and values travel as one tuple)."""
    if present is None:
        return f"mapFromArrays(groupArray({key}), groupArray({value}))"
    return f"mapFromArrays(groupArrayIf({key}, {present}), groupArrayIf(assumeNotNull({value}), {present}))"


#: Each map column's type, from the spec: the refresh casts the maps it computes to them.
_MAP_TYPES = {column_name(definition): column_type(definition) for definition in RUN_SUMMARY.columns
              if column_type(definition).startswith(f"Map({MAP_KEY},")}
#: The map columns (migration 12 gave their keys the MAP_KEY type).
MAP_COLUMNS = tuple(_MAP_TYPES)

#: The columns migration 7 created; migration 8 added the rest (`LIFECYCLE_COLUMNS`).
V7_COLUMNS = RUN_SUMMARY.column_names[:RUN_SUMMARY.column_names.index("updated_at") + 1]
LIFECYCLE_COLUMNS = RUN_SUMMARY.column_names[len(V7_COLUMNS):]

# What the lifecycle columns are computed from: the latest attempt's start (r) and the curated state (c).
_LIFECYCLE_SELECT = """,
    r.attempt, r.run_group, r.job_type, r.sweep, r.fork_from, r.fork_step,
    ifNull(c.note, ''), ifNull(c.archived, false)"""
_CURATION_JOIN = """
LEFT JOIN (
    SELECT run_id, tags, note, archived, toUInt8(1) AS curated FROM {db}.run_curation FINAL WHERE {runs_in}
) AS c ON c.run_id = r.run_id"""

# A resumed run is finished only when the latest attempt's start (runs FINAL: r) has a finish of that attempt or
# a later one: attempt 1 finished (killed by a preemption) and attempt 2 started after it reads `running`.
_LATEST_ATTEMPT_FINISHED = "f.finished = 1 AND f.attempt >= r.attempt"
_FINISHES_SELECT = "SELECT run_id, finished_at, status, toUInt8(1) AS finished FROM"

#: INSERT the recomputed summary of the runs matching {runs_in} (a condition on run_id) into {db}.
_REFRESH_TEMPLATE = f"""
INSERT INTO {{db}}.run_summary ({{columns}})
SELECT
    r.project, r.run_id, r.run_name, r.user, r.host, r.started_at,
    if({{finished}}, f.finished_at, NULL),
    if({{finished}}, toString(f.status), 'running'),
    r.git_commit, {{tags}},
    CAST(p.params, '{_MAP_TYPES["params"]}'),
    CAST(p.params_num, '{_MAP_TYPES["params_num"]}'),
    CAST(m.final_map, '{_MAP_TYPES["final"]}'),
    CAST(m.last_step_map, '{_MAP_TYPES["last_step"]}'),
    CAST(m.min_value_map, '{_MAP_TYPES["min_value"]}'),
    CAST(m.min_step_map, '{_MAP_TYPES["min_step"]}'),
    CAST(m.max_value_map, '{_MAP_TYPES["max_value"]}'),
    CAST(m.max_step_map, '{_MAP_TYPES["max_step"]}'),
    CAST(m.best_map, '{_MAP_TYPES["best"]}'),
    CAST(m.best_step_map, '{_MAP_TYPES["best_step"]}'),
    CAST(m.points_map, '{_MAP_TYPES["points"]}'),
    g.gpu_hours,
    now64(6){{lifecycle_select}}
FROM (SELECT * FROM {{db}}.runs FINAL WHERE {{runs_in}}) AS r
LEFT JOIN (
    SELECT run_id, finished_at, status, toUInt8(1) AS finished FROM {{db}}.run_finishes FINAL WHERE {{runs_in}}
) AS f ON f.run_id = r.run_id
LEFT JOIN (
    SELECT
        run_id,
        CAST(groupArray((key, if(value_type = 'null', NULL, value_string))), 'Map(String, Nullable(String))')
            AS params,
        {_map("key", "value_number", "value_number IS NOT NULL")} AS params_num
    FROM {{db}}.run_params FINAL
    WHERE {{runs_in}}
    GROUP BY run_id
) AS p ON p.run_id = r.run_id
LEFT JOIN (
    SELECT
        run_id,
        {_map("metric", "final_value")} AS final_map,
        {_map("metric", "last_step")} AS last_step_map,
        {_map("metric", "min_value", "min_value IS NOT NULL")} AS min_value_map,
        {_map("metric", "step_of_min", "min_value IS NOT NULL")} AS min_step_map,
        {_map("metric", "max_value", "max_value IS NOT NULL")} AS max_value_map,
        {_map("metric", "step_of_max", "max_value IS NOT NULL")} AS max_step_map,
        {_map("metric", "best_value", "best_value IS NOT NULL")} AS best_map,
        {_map("metric", "best_step_value", "best_value IS NOT NULL")} AS best_step_map,
        {_map("metric", "points")} AS points_map
    FROM (
        SELECT *, if({LOWER_IS_BETTER_SQL}, min_value, max_value) AS best_value,
               if({LOWER_IS_BETTER_SQL}, step_of_min, step_of_max) AS best_step_value
        FROM ({{pairs}})
    )
    GROUP BY run_id
) AS m ON m.run_id = r.run_id
LEFT JOIN ({_GPU_HOURS}) AS g ON g.run_id = r.run_id{{curation_join}}
"""  # noqa: S608 - the module's own text


def _refresh_template(*, lifecycle: bool) -> str:
    """The refresh as migration 7 released it (lifecycle=False: the tables it may meet have no lifecycle
    columns yet), or with migration 8's columns; both are one text, so a fix reaches both."""
    parts = {"{columns}": ", ".join(V7_COLUMNS), "{tags}": "r.tags", "{lifecycle_select}": "", "{curation_join}": "",
             "{finished}": "f.finished = 1", "{pairs}": _PAIRS}
    sql = _REFRESH_TEMPLATE
    if lifecycle:
        parts = {"{columns}": ", ".join(RUN_SUMMARY.column_names), "{tags}": "if(c.curated = 1, c.tags, r.tags)",
                 "{lifecycle_select}": _LIFECYCLE_SELECT, "{curation_join}": _CURATION_JOIN,
                 "{finished}": _LATEST_ATTEMPT_FINISHED, "{pairs}": _LIFECYCLE_PAIRS}
        sql = sql.replace(_FINISHES_SELECT, _FINISHES_SELECT.replace("status,", "status, attempt,"))
    for placeholder, text in parts.items():  # not str.format: the SQL keeps {db} and {runs_in} for later
        sql = sql.replace(placeholder, text)
    return sql


REFRESH_SQL = _refresh_template(lifecycle=True)

#: Migration 7's backfill: every run already stored ({db} filled in by `migrate`).
BACKFILL_SQL = _refresh_template(lifecycle=False).replace("{runs_in}", "1")
#: Migration 8's: every run again, with the lifecycle columns.
LIFECYCLE_BACKFILL_SQL = REFRESH_SQL.replace("{runs_in}", "1")

#: The tables whose rows change a run's summary; a batch with rows in any of them refreshes those runs.
SOURCE_TABLES = ("runs", "run_params", "metric_points", "gpu_samples", "run_finishes", "run_curation")

#: Runs refreshed per statement: bounds the IN list (a batch of a busy fleet touches a few hundred).
REFRESH_CHUNK = 5000


def refresh_sql(database: str) -> str:
    """The refresh statement for `database`, taking the run ids as the query parameter {ids:Array(String)}."""
    return REFRESH_SQL.replace("{db}", database).replace("{runs_in}", "run_id IN {ids:Array(String)}")


def refresh(client: Any, database: str, run_ids: Iterable[str]) -> float:
    """Recompute and rewrite the summary of `run_ids` (exact: see the module docstring); returns seconds."""
    ids = sorted(set(run_ids))
    started = time.perf_counter()
    sql = refresh_sql(database)
    for first in range(0, len(ids), REFRESH_CHUNK):
        client.command(sql, parameters={"ids": ids[first:first + REFRESH_CHUNK]})
    elapsed = time.perf_counter() - started
    if ids:
        log.debug("refreshed the summary of %d runs in %.1f ms", len(ids), elapsed * 1000)
    return elapsed


def refresh_all(client: Any, database: str) -> None:
    """Recompute every run's summary (after rows were written around the consumer: a bulk load, a bench)."""
    client.command(LIFECYCLE_BACKFILL_SQL.replace("{db}", database))
