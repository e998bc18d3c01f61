"""The SQL views the analysis commands, the Python client and users' own SQL read (docs/sql.md).

Every view is `CREATE OR REPLACE`, so `ensure_views` is idempotent and a newer runstream simply
replaces an older definition. The views only read the fact tables (and the `metric_summary`
rollup when the database has it), so they hold no data and can be dropped at any time.

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

from typing import Any

from runstream.comparison import LOWER_IS_BETTER

# The SQL twin of runstream.comparison.lower_is_better(metric).
LOWER_IS_BETTER_SQL = "multiSearchAny(lower(metric), [{}])".format(", ".join(f"'{p}'" for p in LOWER_IS_BETTER))

# Per (run, metric) from the rollup the consumer maintains: cheap at any number of points.
_RUN_METRICS_FROM_ROLLUP = """
SELECT
    run_id,
    metric,
    last_value AS final_value,
    last_step,
    min_value,
    max_value,
    step_of_min,
    step_of_max
FROM {db}.metric_summary
"""

# The same columns from the raw points, for a database laid out without the rollup.
_RUN_METRICS_FROM_POINTS = """
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
FROM (SELECT * FROM {db}.runs FINAL) AS r
LEFT JOIN (
    SELECT run_id, finished_at, status, toUInt8(1) AS finished FROM {db}.run_finishes FINAL
) AS f ON f.run_id = r.run_id
LEFT JOIN (
    SELECT
        run_id,
        mapFromArrays(groupArray(key), groupArray(value_string)) AS string_map,
        mapFromArrays(groupArrayIf(key, value_number IS NOT NULL),
                      groupArrayIf(assumeNotNull(value_number), value_number IS NOT NULL)) AS number_map
    FROM {db}.run_params FINAL
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
        FROM {db}.run_metrics
    )
    GROUP BY run_id
) AS m ON m.run_id = r.run_id
LEFT JOIN (
    SELECT run_id, sum(seconds) / 3600 AS gpu_hours
    FROM (
        SELECT run_id, host, gpu_index, dateDiff('microsecond', min(time), max(time)) / 1e6 AS seconds
        FROM {db}.gpu_samples FINAL
        GROUP BY run_id, host, gpu_index
    )
    GROUP BY run_id
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
        if({mode:String} = 'max', m.max_value, m.min_value) AS best_value,
        if({mode:String} = 'max', m.step_of_max, m.step_of_min) AS best_step,
        if({mode:String} = 'max', -best_value, best_value) AS sort_key,
        m.final_value AS final_value, m.last_step AS last_step
    FROM (
        SELECT r.run_id AS run_id, r.run_name AS run_name, r.started_at AS started_at,
               if(f.finished = 1, toString(f.status), 'running') AS status
        FROM (SELECT run_id, run_name, started_at FROM {db}.runs FINAL WHERE project = {project:String}) AS r
        LEFT JOIN (
            SELECT run_id, status, toUInt8(1) AS finished FROM {db}.run_finishes FINAL
            WHERE run_id IN (SELECT run_id FROM {db}.runs WHERE project = {project:String})
        ) AS f ON f.run_id = r.run_id
    ) AS o
    INNER JOIN (
        SELECT * FROM {db}.run_metrics
        WHERE metric = {metric:String}
          AND run_id IN (SELECT run_id FROM {db}.runs WHERE project = {project:String})
    ) AS m ON m.run_id = o.run_id
    WHERE best_value IS NOT NULL
)
ORDER BY rank
"""

_METRIC_CURVE = """
SELECT run_id, toInt64(tupleElement(point, 1)) AS step, tupleElement(point, 2) AS value
FROM (
    SELECT run_id, largestTriangleThreeBuckets({points:UInt64})(step, value) AS curve
    FROM {db}.metric_points FINAL
    WHERE metric = {metric:String} AND run_id IN {runs:Array(String)} AND isFinite(value)
    GROUP BY run_id
)
ARRAY JOIN curve AS point
"""


def has_table(client: Any, database: str, name: str) -> bool:
    rows = client.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {name:String}",
        parameters={"db": database, "name": name},
    ).result_rows
    return bool(rows and rows[0][0])


def view_statements(database: str, *, use_rollup: bool = True) -> list[str]:
    """The CREATE OR REPLACE VIEW statements, in dependency order (what docs/sql.md describes)."""
    run_metrics = _RUN_METRICS_FROM_ROLLUP if use_rollup else _RUN_METRICS_FROM_POINTS
    views = (
        ("run_metrics", run_metrics),
        ("run_overview", _RUN_OVERVIEW),
        ("leaderboard", _LEADERBOARD),
        ("metric_curve", _METRIC_CURVE),
    )
    return [f"CREATE OR REPLACE VIEW {database}.{name} AS "
            + sql.replace("{db}", database).replace("{lower_is_better}", LOWER_IS_BETTER_SQL).strip()
            for name, sql in views]


def ensure_views(client: Any, database: str, *, use_rollup: bool | None = None) -> None:
    """Create or replace the analysis views; safe to call before every query.

    `use_rollup` None reads per-run metrics from the `metric_summary` rollup when the database has
    it (fast at hundreds of millions of points), else from `metric_points` with FINAL.
    """
    if not has_table(client, database, "runs"):
        raise ValueError(
            f"database {database!r} has no runstream tables yet: load runs with `runstream ingest SPOOL_DIR` "
            "or `runstream consume`, or create the tables with `runstream migrate`"
        )
    if use_rollup is None:
        use_rollup = has_table(client, database, "metric_summary")
    for statement in view_statements(database, use_rollup=use_rollup):
        client.command(statement)
