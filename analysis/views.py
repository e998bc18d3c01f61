"""The SQL views the analysis commands, the Python client and users' own SQL read (docs/sql.md).

These are `View` specs: `runstream migrate` (and the consumer, which owns the schema) creates them
with the other tables, and the cluster DDL renders them over the Distributed tables. Read
commands never run DDL: against a database that was never migrated they say to run
`runstream migrate` (`runstream.consumer.migrations.require_migrated`). The views only read the
fact tables and the `metric_summary` rollup, so they hold no data.

- `run_metrics`: one row per (run, metric): final value (at the last step, NaN kept), min and
  max (NaN skipped; NULL when every value is NaN) with the earliest step reaching each.
- `run_overview`: one row per run with params, final and best metrics and GPU-hours as Map
  columns (`params['lr']`, `final['acc']`), so a project with any params fits one fixed schema;
  a missing key reads as NULL, never as 0.
- `leaderboard(project, metric, mode)`: a parameterised view ranking a project's runs by the
  best value of a metric (mode 'min' or 'max'); ties go to the run that got there at an earlier step.
- `metric_curve(metric, runs, points)`: a parameterised view downsampling each run's curve to at
  most `points` points with ClickHouse's largestTriangleThreeBuckets (which keeps the peaks a
  plot needs, unlike a stride); NaN and ±Inf points are left out of the curve.
"""

from __future__ import annotations

from runstream.consumer.table_spec import View
from runstream.monitoring.gpu_hours import gpu_seconds_by_run_sql

# View selects name tables and views as {name} and carry ClickHouse query parameters as {{name:Type}}
# (runstream.consumer.migrations.create_view_sql fills in the names).

# Per (run, metric) from the rollup the consumer maintains: cheap at any number of points.
_RUN_METRICS = """
SELECT
    run_id,
    metric,
    last_value AS final_value,
    last_step,
    min_value,
    max_value,
    step_of_min,
    step_of_max
FROM {metric_summary}
"""

# The same columns from the raw points with FINAL: what the rollup must agree with (the tests compare).
RUN_METRICS_FROM_POINTS_SQL = """
SELECT
    run_id,
    metric,
    argMax(value, step) AS final_value,
    max(step) AS last_step,
    min(if(isNaN(value), NULL, value)) AS min_value,
    max(if(isNaN(value), NULL, value)) AS max_value,
    if(min_value IS NULL, NULL, argMin(step, (isNaN(value), value, step))) AS step_of_min,
    if(max_value IS NULL, NULL, argMax(step, (NOT isNaN(value), value, -step))) AS step_of_max
FROM {db}.metric_points FINAL
GROUP BY run_id, metric
"""

_RUN_OVERVIEW = """
SELECT
    r.run_id AS run_id,
    r.project AS project,
    r.run_name AS run_name,
    r.user AS user,
    r.host AS host,
    r.started_at AS started_at,
    if(f.finished = 1, f.finished_at, NULL) AS finished_at,
    if(f.finished = 1, toString(f.status), 'running') AS status,
    r.git_commit AS git_commit,
    r.tags AS tags,
    CAST(p.string_map, 'Map(String, Nullable(String))') AS params,
    CAST(p.number_map, 'Map(String, Nullable(Float64))') AS params_num,
    CAST(m.final_map, 'Map(String, Nullable(Float64))') AS final,
    CAST(m.best_map, 'Map(String, Nullable(Float64))') AS best,
    CAST(m.best_step_map, 'Map(String, Nullable(Int64))') AS best_step,
    CAST(m.last_step_map, 'Map(String, Nullable(Int64))') AS last_step,
    g.gpu_hours AS gpu_hours
FROM (SELECT * FROM {runs} FINAL) AS r
LEFT JOIN (
    SELECT run_id, finished_at, status, toUInt8(1) AS finished FROM {run_finishes} FINAL
) AS f ON f.run_id = r.run_id
LEFT JOIN (
    SELECT
        run_id,
        mapFromArrays(groupArray(key), groupArray(value_string)) AS string_map,
        mapFromArrays(groupArrayIf(key, value_number IS NOT NULL),
                      groupArrayIf(assumeNotNull(value_number), value_number IS NOT NULL)) AS number_map
    FROM {run_params} FINAL
    GROUP BY run_id
) AS p ON p.run_id = r.run_id
LEFT JOIN (
    SELECT
        run_id,
        mapFromArrays(groupArray(metric), groupArray(final_value)) AS final_map,
        mapFromArrays(groupArrayIf(metric, best_value IS NOT NULL),
                      groupArrayIf(assumeNotNull(best_value), best_value IS NOT NULL)) AS best_map,
        mapFromArrays(groupArrayIf(metric, best_value IS NOT NULL),
                      groupArrayIf(assumeNotNull(best_step_value), best_value IS NOT NULL)) AS best_step_map,
        mapFromArrays(groupArray(metric), groupArray(last_step)) AS last_step_map
    FROM (
        SELECT run_id, metric, final_value, last_step,
               if({lower_is_better}, min_value, max_value) AS best_value,
               if({lower_is_better}, step_of_min, step_of_max) AS best_step_value
        FROM {run_metrics}
    )
    GROUP BY run_id
) AS m ON m.run_id = r.run_id
LEFT JOIN (
    SELECT run_id, gpu_seconds / 3600 AS gpu_hours FROM ({gpu_seconds_by_run})
) AS g ON g.run_id = r.run_id
"""

# mode is 'min' or 'max' (checked by the callers; any other value ranks as 'min').
_LEADERBOARD = """
SELECT
    row_number() OVER (ORDER BY sort_key, best_step, started_at, run_id) AS rank,
    run_id, run_name, status, best_value AS value, best_step AS step, final_value, last_step
FROM (
    SELECT
        o.run_id AS run_id, o.run_name AS run_name, o.status AS status, o.started_at AS started_at,
        if({{mode:String}} = 'max', m.max_value, m.min_value) AS best_value,
        if({{mode:String}} = 'max', m.step_of_max, m.step_of_min) AS best_step,
        if({{mode:String}} = 'max', -best_value, best_value) AS sort_key,
        m.final_value AS final_value, m.last_step AS last_step
    FROM (
        SELECT r.run_id AS run_id, r.run_name AS run_name, r.started_at AS started_at,
               if(f.finished = 1, toString(f.status), 'running') AS status
        FROM (SELECT run_id, run_name, started_at FROM {runs} FINAL WHERE project = {{project:String}}) AS r
        LEFT JOIN (
            SELECT run_id, status, toUInt8(1) AS finished FROM {run_finishes} FINAL
            WHERE run_id IN (SELECT run_id FROM {runs} WHERE project = {{project:String}})
        ) AS f ON f.run_id = r.run_id
    ) AS o
    INNER JOIN (
        SELECT * FROM {run_metrics}
        WHERE metric = {{metric:String}}
          AND run_id IN (SELECT run_id FROM {runs} WHERE project = {{project:String}})
    ) AS m ON m.run_id = o.run_id
    WHERE best_value IS NOT NULL
)
ORDER BY rank
"""

_METRIC_CURVE = """
SELECT run_id, toInt64(tupleElement(point, 1)) AS step, tupleElement(point, 2) AS value
FROM (
    SELECT run_id, largestTriangleThreeBuckets({{points:UInt64}})(step, value) AS curve
    FROM {metric_points} FINAL
    WHERE metric = {{metric:String}} AND run_id IN {{runs:Array(String)}} AND isFinite(value)
    GROUP BY run_id
)
ARRAY JOIN curve AS point
"""


def _view(name: str, select: str) -> View:
    return View(name, select.replace("{gpu_seconds_by_run}", gpu_seconds_by_run_sql("{gpu_samples}")))


RUN_METRICS = _view("run_metrics", _RUN_METRICS)
RUN_OVERVIEW = _view("run_overview", _RUN_OVERVIEW)
LEADERBOARD = _view("leaderboard", _LEADERBOARD)
METRIC_CURVE = _view("metric_curve", _METRIC_CURVE)
#: In dependency order: run_overview and leaderboard read run_metrics.
ANALYSIS_VIEWS: tuple[View, ...] = (RUN_METRICS, RUN_OVERVIEW, LEADERBOARD, METRIC_CURVE)
