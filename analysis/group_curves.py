"""Group-aggregated curves: per (metric, step), the mean, min, max and count of a group's runs, in SQL.

A group (`runstream.init(group="seeds-lr3e-4")`) is usually the same configuration run several
times (seeds, folds, replicas of a sweep point); what one wants to see is its mean curve and the
band the runs spread over. This module owns that one computation: `group_curve()` answers it for
the CLI (`runstream curve --group G`), the `Client` and the report, and `group_curve_sql()` is the
same SQL that the Runs dashboard's group panel runs with Grafana's variables in place of the bound
parameters, so every surface shows the same numbers.

Each run contributes its own stored value at each step, read from `metric_points FINAL` (so a step
logged again by a resumed run counts once, with its latest value; a fork contributes its own points,
not its parent's). Non-finite values follow the project's rule (runstream.monitoring.finite_values):
a NaN or ±Inf is left out of the step's mean, min and max, and of its count, exactly as rankings
leave it out; one diverged seed does not turn the group's mean into NaN, and `count` says how many
runs the step's numbers are over. A step where no run has a finite value still has its row, with
mean, min and max None and count 0: the runs did log it. A run that never logged a step simply is
not counted there (runs of different lengths give counts that fall off at the end).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from runstream.monitoring.finite_values import finite_or_null_sql

#: One row of `group_curve`: metric, step, mean, min, max, count (mean/min/max None when count is 0).
GroupPoint = tuple[str, int, float, float, float, int]

_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_GROUP_LENGTH = 128  # what the SDK accepts for a label (runstream.producer.run)


def group_curve_sql(db: str, *, group_condition: str, project_condition: str, metric_condition: str) -> str:
    """The aggregate's SQL over database `db`: the group, project and metric selection as SQL text.

    The conditions are over `run_group` and `project` (of `runs`) and `metric` (of `metric_points`):
    `run_group = {group:String}` when bound, `run_group IN (${group:singlequote})` in Grafana. Only
    module text and checked identifiers come in here: user values travel as bound parameters (`group_curve`)."""
    value = finite_or_null_sql("value")
    return (
        f"SELECT metric, step, avg(v) AS mean, min(v) AS min, max(v) AS max, count(v) AS count\n"  # noqa: S608
        f"FROM (\n"
        f"    SELECT metric, step, {value} AS v\n"
        f"    FROM {db}.metric_points FINAL\n"
        f"    WHERE run_id IN (SELECT run_id FROM {db}.runs FINAL\n"
        f"                     WHERE {group_condition} AND {project_condition})\n"
        f"      AND {metric_condition}\n"
        f")\n"
        f"GROUP BY metric, step\n"
        f"ORDER BY metric, step"
    )


_BOUND_SQL = {
    "group_condition": "run_group = {group:String}",
    "project_condition": "({project:String} = '' OR project = {project:String})",
    "metric_condition": "(empty({metrics:Array(String)}) OR has({metrics:Array(String)}, metric))",
}


def _check_label(group: Any) -> str:
    if not isinstance(group, str) or not group.strip():
        raise ValueError(f"group: expected a group name (init(group=...)), got {group!r}")
    if len(group) > MAX_GROUP_LENGTH:
        raise ValueError(f"group: at most {MAX_GROUP_LENGTH} characters, got {len(group)} ({group[:40]!r}...)")
    return group


def _check_metrics(metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        return []
    if isinstance(metrics, str):
        return [metrics]
    names = list(metrics)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"metrics: expected metric names, got {name!r}")
    return names


def _explain_empty(client: Any, db: str, group: str, metrics: list[str], project: str | None) -> None:
    """Raise the error that says why a group has no curve: no such group (naming the closest ones), or
    none of its runs logged the metrics asked for (naming the ones they did log)."""
    where = "({project:String} = '' OR project = {project:String})"
    parameters = {"project": project or "", "group": group}
    groups = [str(g) for (g,) in client.query(
        f"SELECT DISTINCT run_group FROM {db}.runs FINAL WHERE run_group != '' AND {where} ORDER BY run_group",  # noqa: S608
        parameters=parameters).result_rows]
    scope = f" in project {project!r}" if project else ""
    if group not in groups:
        close = difflib.get_close_matches(group, groups, n=5, cutoff=0.5)
        known = ", ".join(close or groups[:10]) or "none"
        raise ValueError(f"group {group!r}: no run{scope} has this group (groups: {known})")
    logged = [str(m) for (m,) in client.query(
        f"SELECT DISTINCT metric FROM {db}.metric_points WHERE run_id IN "  # noqa: S608
        f"(SELECT run_id FROM {db}.runs FINAL WHERE run_group = {{group:String}} AND {where}) ORDER BY metric",
        parameters=parameters).result_rows]
    if not metrics:
        raise ValueError(f"group {group!r}: its runs{scope} logged no metric yet")
    missing = [m for m in metrics if m not in logged]
    raise ValueError(f"metric {missing[0] if missing else metrics[0]!r}: no run of group {group!r}{scope} logged it "
                     f"(they logged: {', '.join(logged) or 'nothing'})")


def group_curve(client: Any, database: str, group: str, metrics: Sequence[str] | None = None,
                project: str | None = None) -> list[GroupPoint]:
    """(metric, step, mean, min, max, count) across the runs of `group` (in `project` when given), ordered
    by metric and step; `metrics` limits the metrics (default: all the group's runs logged).

    Finite values only: NaN and ±Inf are left out of mean/min/max and count (see the module docstring);
    a step with no finite value has None for mean/min/max and count 0. An unknown group, or metrics the
    group never logged, raise ValueError naming the value and what exists."""
    group = _check_label(group)
    names = _check_metrics(metrics)
    if not _DATABASE_NAME.match(database):  # pasted into the statement: a name, never anything else
        raise ValueError(f"database: expected a database name, got {database!r}")
    db = database
    sql = group_curve_sql(db, **_BOUND_SQL)
    rows = client.query(sql, parameters={"group": group, "project": project or "", "metrics": names}).result_rows
    if not rows:
        _explain_empty(client, db, group, names, project)
    return [(str(metric), int(step), _number(mean), _number(low), _number(high), int(count))
            for metric, step, mean, low, high, count in rows]


def _number(value: Any) -> Any:
    return None if value is None else float(value)


#: The report draws at most this many groups (the most recently started first); more are counted, not drawn.
REPORT_GROUPS = 12


def _thin(rows: list[GroupPoint], points: int) -> list[GroupPoint]:
    """At most `points` of a curve's rows, evenly spaced, first and last kept: the aggregate is exact (SQL);
    only what is drawn is thinned."""
    if len(rows) <= points:
        return rows
    last = len(rows) - 1
    picked = sorted({round(i * last / (points - 1)) for i in range(points)})
    return [rows[i] for i in picked]


def project_groups(client: Any, database: str, project: str, *, points: int = 500,
                   limit: int = REPORT_GROUPS) -> dict[str, Any]:
    """The report's group section: for each group of `project` (the `limit` most recently started), its run
    count and its aggregate curve per metric, thinned to `points` rows each. `more`: groups not drawn."""
    if not _DATABASE_NAME.match(database):
        raise ValueError(f"database: expected a database name, got {database!r}")
    found = client.query(
        f"SELECT run_group, count() AS runs, max(started_at) AS latest FROM {database}.runs FINAL "  # noqa: S608
        "WHERE project = {project:String} AND run_group != '' GROUP BY run_group ORDER BY latest DESC, run_group",
        parameters={"project": project}).result_rows
    groups = []
    for group, runs, _latest in found[:limit]:
        curves: dict[str, list[GroupPoint]] = {}
        for row in group_curve(client, database, str(group), project=project):
            curves.setdefault(row[0], []).append(row)
        groups.append({"group": str(group), "runs": int(runs),
                       "curves": {metric: [list(row[1:]) for row in _thin(rows, points)]
                                  for metric, rows in curves.items()}})
    return {"groups": groups, "more": max(0, len(found) - limit)}
