"""The run comparison the demo prints: params, final and best metrics, GPU-hours, one row per run.

Best is the min or max of the finite values by the metric's declared goal, else by its name (min for
loss-like names: runstream.monitoring.metric_direction); a metric that was only ever NaN or
±Inf has no best (empty), as everywhere runs are ranked (runstream.monitoring.finite_values).

The numbers come from SQL over the stored tables (FINAL, so redelivered events never count
twice); Python only pivots metrics into columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runstream.monitoring.finite_values import finite_max_sql, finite_min_sql
from runstream.monitoring.gpu_hours import gpu_seconds_by_run_sql
from runstream.monitoring.metric_direction import declared_goals, goal_of
from runstream.monitoring.run_status import honest_statuses

# The runs compared: those of a project, narrowed to given run ids when the list is not empty.
RUNS_FILTER = (
    "project = {project:String} AND (empty({run_ids:Array(String)}) OR has({run_ids:Array(String)}, run_id))"
)

RUNS_SQL = """
SELECT r.run_id, r.run_name
FROM (SELECT * FROM {db}.runs FINAL) AS r
WHERE {runs_filter}
ORDER BY r.run_id
"""

PARAMS_SQL = """
SELECT run_id, key, value_string
FROM {db}.run_params FINAL
WHERE run_id IN (SELECT run_id FROM {db}.runs FINAL WHERE {runs_filter})
ORDER BY run_id, key
"""

# Final values as logged (NaN and ±Inf kept); best from the finite values only, NULL when there are
# none (runstream.monitoring.finite_values: the rule every ranking follows).
METRICS_SQL = f"""
SELECT run_id, metric, argMax(value, step) AS final, {finite_max_sql()} AS highest, {finite_min_sql()} AS lowest,
       max(step) AS last_step, count() AS points
FROM {{db}}.metric_points FINAL
WHERE run_id IN (SELECT run_id FROM {{db}}.runs FINAL WHERE {{runs_filter}})
GROUP BY run_id, metric
"""  # noqa: S608 - the module's own text

# GPU-hours by the one definition (runstream.monitoring.gpu_hours: gaps over MAX_GAP_S not held).
_RUNS_GPU_SECONDS = gpu_seconds_by_run_sql(
    "{db}.gpu_samples", "run_id IN (SELECT run_id FROM {db}.runs FINAL WHERE {runs_filter})")
GPU_HOURS_SQL = f"SELECT run_id, gpu_seconds / 3600 AS gpu_hours FROM ({_RUNS_GPU_SECONDS})"  # noqa: S608


@dataclass
class Comparison:
    columns: list[str]
    rows: list[list[Any]]


def compare_project(client: Any, database: str, project: str, run_ids: list[str] | None = None) -> Comparison:
    """One row per run of `project` (only `run_ids` when given), in run-id order, i.e. start order."""
    params = {"project": project, "run_ids": list(run_ids or [])}

    def fetch(sql: str) -> list[Any]:
        # Only the (validated) database name is pasted in; values travel as bound parameters.
        text = sql.format(db=database, runs_filter=RUNS_FILTER)
        return list(client.query(text, parameters=params).result_rows)

    runs = fetch(RUNS_SQL)
    param_rows = fetch(PARAMS_SQL)
    metric_rows = fetch(METRICS_SQL)
    gpu_rows = fetch(GPU_HOURS_SQL)

    run_params: dict[str, list[str]] = {}
    for run_id, key, value in param_rows:
        run_params.setdefault(run_id, []).append(f"{key}={value}")
    metrics: dict[str, dict[str, tuple[float, float | None]]] = {}
    names: set[str] = set()
    declared = declared_goals(client, database, {row[1] for row in metric_rows})
    for run_id, metric, final, highest, lowest, _last, _points in metric_rows:
        best = lowest if goal_of(metric, declared) == "min" else highest
        metrics.setdefault(run_id, {})[metric] = (final, best)
        names.add(metric)
    gpu_hours = {run_id: hours for run_id, hours in gpu_rows}
    # the status every command shows: the latest attempt's end (the summary's), else running, stalled or lost
    summary = client.query(f"SELECT run_id, status FROM {database}.run_summary FINAL "  # noqa: S608
                           "WHERE has({ids:Array(String)}, run_id)",
                           parameters={"ids": [run_id for run_id, _ in runs]}).result_rows
    statuses = dict(summary)
    statuses.update(honest_statuses(client, database, [run_id for run_id, status in summary if status == "running"]))

    ordered = sorted(names)
    columns = ["run", "params"]
    for name in ordered:
        columns += [f"{name} final", f"{name} best"]
    columns += ["gpu_hours", "status"]
    rows = []
    for run_id, run_name in runs:
        row: list[Any] = [run_name, " ".join(run_params.get(run_id, []))]
        for name in ordered:
            final, best = metrics.get(run_id, {}).get(name, (None, None))
            row += [final, best]
        row += [gpu_hours.get(run_id, 0.0), statuses.get(run_id, "running")]
        rows.append(row)
    return Comparison(columns, rows)
