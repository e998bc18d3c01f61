"""The SQL views the analysis commands, the Python client and users' own SQL read (docs/sql.md).

These are `View` specs: `runstream migrate` (and the consumer, which owns the schema) creates them
with the other tables, and the cluster DDL renders them over the Distributed tables. Read
commands never run DDL: against a database that was never migrated they say to run
`runstream migrate` (`runstream.consumer.migrations.require_migrated`). The views only read the
fact tables, the `metric_summary` rollup and the `run_summary` table, so they hold no data.

- `run_metrics`: one row per (run, metric): final value (at the last step, NaN and ±Inf kept), min
  and max of the finite values (NULL when no value was finite) with the earliest step reaching each.
- `run_overview`: one row per run with params, final and best metrics and GPU-hours as Map
  columns (`params['lr']`, `final['acc']`), so a project with any params fits one fixed schema;
  a missing key reads as NULL, never as 0, and so does a param logged as None. It reads the
  compact per-run summary `run_summary` (runstream.consumer.run_summary), which the consumer
  rewrites, exactly, for every run a batch touches.
- `leaderboard(project, metric, mode)`: a parameterised view ranking a project's runs by the
  best finite value of a metric (mode 'min' or 'max'; since migration 9 mode '' ranks by the
  metric's declared goal, else the name rule: runstream.monitoring.metric_direction); ties go to
  the run that got there at an earlier step; runs without a finite value are left out.
  Since migration 9 `run_overview`'s best maps follow the declared goals too.
- `metric_curve(metric, runs, points)`: a parameterised view cutting each run's curve into at most
  `points` buckets of its step range (migration 9; runstream.analysis.curves `bucketed_curve_sql`):
  per bucket its last point (`step`, `value`: the columns the view always had), its `first_step`, the
  `min` and `max` of its finite values and its point, NaN, +Inf and -Inf counts. So a one-step spike
  up or down stays visible at any `points`, and non-finite points are counted, not dropped. Migrations
  5 and 6 released it with largestTriangleThreeBuckets, which kept one point per bucket.
"""

from __future__ import annotations

from runstream.analysis.curves import bucketed_curve_sql
from runstream.consumer.table_spec import View
from runstream.monitoring.finite_values import (
    finite_max_sql,
    finite_min_sql,
    finite_sql,
    step_of_max_sql,
    step_of_min_sql,
)
from runstream.monitoring.gpu_hours import gpu_seconds_by_run_sql
from runstream.monitoring.metric_direction import best_map_sql, goal_sql

# View selects name tables and views as {name} and carry ClickHouse query parameters as {{name:Type}}
# (runstream.consumer.migrations.create_view_sql fills in the names).

# Per (run, metric) from the rollup the consumer maintains: cheap at any number of points. min/max
# rank finite values only (runstream.monitoring.finite_values). The rollup skips NaN but keeps ±Inf,
# so the (rare) pairs that ever received an infinite value are recomputed from the raw points with
# FINAL, where the finite rule is exact. Every other pair never held an infinity, so its rollup
# min/max (exact for re-logged steps in metric_summary) are already the finite ones. The pairs are
# found from the states' plain min/max columns (no state merge), the same set in both branches.
_INFINITE_PAIRS = """
    SELECT run_id, metric FROM {metric_summary_states}
    GROUP BY run_id, metric
    HAVING NOT isFinite(min(min_value_state)) OR NOT isFinite(max(max_value_state))
"""

# The summary columns computed from the raw points with FINAL, under the finite rule: the exact
# definition, used by the view for pairs that saw an infinity and by the tests as the reference.
_FROM_POINTS = """
SELECT
    run_id,
    metric,
    argMax(value, step) AS final_value,
    max(step) AS last_step,
    {finite_min} AS min_value,
    {finite_max} AS max_value,
    if(min_value IS NULL, NULL, {step_of_min}) AS step_of_min,
    if(max_value IS NULL, NULL, {step_of_max}) AS step_of_max
FROM {points} FINAL
"""

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
WHERE (run_id, metric) NOT IN ({infinite_pairs})
UNION ALL
{from_points}
WHERE (run_id, metric) IN ({infinite_pairs})
GROUP BY run_id, metric
""".replace("{infinite_pairs}", _INFINITE_PAIRS).replace(
    "{from_points}", _FROM_POINTS.replace("{points}", "{metric_points}").strip()
)

# The same columns from the raw points with FINAL: what the rollup must agree with (the tests compare).
RUN_METRICS_FROM_POINTS_SQL = _FROM_POINTS.replace("{points}", "{db}.metric_points") + "GROUP BY run_id, metric\n"

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
    WHERE best_value IS NOT NULL AND {finite_best}
)
ORDER BY rank
"""

# Since migration 7 the run list and the leaderboard read the compact per-run summary that the
# consumer keeps exact (runstream.consumer.run_summary): one small row per run, no rollup merge.
_RUN_OVERVIEW_OF_SUMMARY = """
SELECT
    run_id, project, run_name, user, host, started_at, finished_at, status, git_commit, tags,
    params, params_num, final, best, best_step, last_step, gpu_hours
FROM {run_summary} FINAL
"""

# The same ranking as _LEADERBOARD over run_summary: best finite value, ties to the earlier step, then
# the earlier start; runs without a finite value of the metric are left out.
_LEADERBOARD_OF_SUMMARY = """
SELECT
    row_number() OVER (ORDER BY sort_key, best_step, started_at, run_id) AS rank,
    run_id, run_name, status, best_value AS value, best_step AS step, final_value, metric_last_step AS last_step
FROM (
    SELECT
        run_id, run_name, status, started_at,
        if({{mode:String}} = 'max', max_value[{{metric:String}}], min_value[{{metric:String}}]) AS best_value,
        if({{mode:String}} = 'max', max_step[{{metric:String}}], min_step[{{metric:String}}]) AS best_step,
        if({{mode:String}} = 'max', -best_value, best_value) AS sort_key,
        final[{{metric:String}}] AS final_value,
        last_step[{{metric:String}}] AS metric_last_step
    FROM {run_summary} FINAL
    WHERE project = {{project:String}} AND mapContains(final, {{metric:String}})
)
WHERE best_value IS NOT NULL AND {finite_best}
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


# Migration 9: the same ranking, where mode '' means the metric's declared goal (the latest declaration
# across runs: the metric_goals rollup), else the name rule: runstream.monitoring.metric_direction.
_LEADERBOARD_DECLARED = _LEADERBOARD_OF_SUMMARY.replace(
    "        if({{mode:String}} = 'max', max_value",
    "        if({{mode:String}} IN ('min', 'max'), {{mode:String}}, {declared_goal}) AS goal,\n"
    "        if(goal = 'max', max_value",
).replace("if({{mode:String}} = 'max'", "if(goal = 'max'").replace(
    "{declared_goal}", goal_sql("{metric_goals}", "{{metric:String}}"))

# Migration 9: run_overview's best and best_step maps by each metric's declared goal, else the name rule
# (run_summary's own maps, written as points arrive, keep the name rule).
_RUN_OVERVIEW_DECLARED = _RUN_OVERVIEW_OF_SUMMARY.replace(
    " best, best_step,",
    f" {best_map_sql('{metric_goals}')} AS best,\n"
    f"    {best_map_sql('{metric_goals}', 'min_step', 'max_step')} AS best_step,")


# Migration 9's metric_curve: the buckets of runstream.analysis.curves by step, with the columns the
# view always had (step, value: each bucket's last point) first.
_METRIC_CURVE_BUCKETS = """
SELECT run_id, toInt64(x) AS first_step, toInt64(last_x) AS step, last AS value, min, max, count,
       nan_count, pos_inf_count, neg_inf_count
FROM ({buckets}
)
""".replace("{buckets}", bucketed_curve_sql("{metric_points}", runs="run_id IN {{runs:Array(String)}}",
                                            metrics="metric = {{metric:String}}", buckets="{{points:UInt32}}",
                                            axis=None))


def _finite_rules(select: str) -> str:
    """Fill in the finite-value rule (runstream.monitoring.finite_values): the one definition of what ranks."""
    return (select.replace("{finite_min}", finite_min_sql()).replace("{finite_max}", finite_max_sql())
            .replace("{step_of_min}", step_of_min_sql()).replace("{step_of_max}", step_of_max_sql())
            .replace("{finite_best}", finite_sql("best_value")))


RUN_METRICS_FROM_POINTS_SQL = _finite_rules(RUN_METRICS_FROM_POINTS_SQL)


def _view(name: str, select: str) -> View:
    return View(name, _finite_rules(select).replace("{gpu_seconds_by_run}", gpu_seconds_by_run_sql("{gpu_samples}")))


RUN_METRICS = _view("run_metrics", _RUN_METRICS)
#: As migration 7 released them (over run_summary, best by the name rule); migration 9 replaces them.
RUN_OVERVIEW_V7 = _view("run_overview", _RUN_OVERVIEW_OF_SUMMARY)
LEADERBOARD_V7 = _view("leaderboard", _LEADERBOARD_OF_SUMMARY)
RUN_OVERVIEW = _view("run_overview", _RUN_OVERVIEW_DECLARED)
LEADERBOARD = _view("leaderboard", _LEADERBOARD_DECLARED)
METRIC_CURVE = _view("metric_curve", _METRIC_CURVE_BUCKETS)
#: The views as migrations 5 and 6 released them (run_overview and leaderboard computed from run_metrics
#: on every read, metric_curve by largestTriangleThreeBuckets); migration 7 replaces the first two with
#: the ones over `run_summary` above, migration 9 metric_curve with the buckets.
RUN_OVERVIEW_V6 = _view("run_overview", _RUN_OVERVIEW)
LEADERBOARD_V6 = _view("leaderboard", _LEADERBOARD)
METRIC_CURVE_V6 = _view("metric_curve", _METRIC_CURVE)
ANALYSIS_VIEWS_V6: tuple[View, ...] = (RUN_METRICS, RUN_OVERVIEW_V6, LEADERBOARD_V6, METRIC_CURVE_V6)
#: In dependency order; run_overview and leaderboard read the `run_summary` table (migration 7).
ANALYSIS_VIEWS: tuple[View, ...] = (RUN_METRICS, RUN_OVERVIEW, LEADERBOARD, METRIC_CURVE)
