"""Which metrics are better when lower: the one definition, in Python and as its SQL twin.

A metric's goal is, in this order:

1. the goal a run declared for it (`run.define_metric("val/score", goal="max")`, or
   `runstream.init(..., metrics={"val/score": {"goal": "max"}})`), stored in `metric_definitions`
   and folded per metric into the `metric_goals` rollup (runstream.consumer.metric_goals).
   Declarations are shared by every run of the database: the latest goal declared wins (by the
   timestamp of the `metric_definitions` event carrying it; a tie goes to the larger run id). Each
   event re-states all of its run's definitions, so a run that defines anything later declares its
   goals again. A definition without a goal declares no direction: it changes nothing;
2. for an undeclared metric, the name rule: a name containing one of `LOWER_IS_BETTER`
   (case-insensitive) is ranked by its minimum, any other by its maximum.

The leaderboard (`runstream best`, the `leaderboard` view, `Client.best`), `compare`'s best value,
importance's direction, the report and the dashboards' leaderboard panel all ask here; `--mode`
still overrides. The `metric_summary` rollup's `best_value` and `run_summary`'s `best` map stay by
the name rule (they are written when points arrive, and a declaration may come later or from
another run); the readers that rank pick the declared side from `min_value`/`max_value` instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

LOWER_IS_BETTER: tuple[str, ...] = ("loss", "error", "err", "perplexity", "mse", "mae", "rmse")

#: The goals a metric may declare.
GOALS: tuple[str, ...] = ("min", "max")


def lower_is_better(metric: str) -> bool:
    """True for loss-like names, so that "best" means the minimum (the rule for undeclared metrics)."""
    name = metric.lower()
    return any(part in name for part in LOWER_IS_BETTER)


def lower_is_better_sql(column: str = "metric") -> str:
    """The SQL twin of `lower_is_better` over a String column (the parts are fixed literals, never input)."""
    parts = ", ".join(f"'{part}'" for part in LOWER_IS_BETTER)
    return f"multiSearchAny(lower({column}), [{parts}])"


#: `lower_is_better_sql()` over the `metric` column, as the views use it.
LOWER_IS_BETTER_SQL = lower_is_better_sql()


def latest_goals_sql(table: str, where: str = "1") -> str:
    """(metric, latest_goal) rows of `table` (the `metric_goals` rollup) for the metrics matching `where`:
    the latest goal declared for each metric across runs (module docstring)."""
    return f"SELECT metric, argMaxMerge(goal) AS latest_goal FROM {table} WHERE {where} GROUP BY metric"  # noqa: S608


def declared_goals_map_sql(table: str) -> str:
    """A scalar subquery: Map(metric, goal) of every declared goal in `table` (empty when none)."""
    return (f"(SELECT CAST((groupArray(metric), groupArray(latest_goal)), 'Map(String, String)') "  # noqa: S608
            f"FROM ({latest_goals_sql(table)}))")


def goal_sql(table: str, column: str = "metric") -> str:
    """The SQL twin of `goal_of`: 'min' or 'max' for the metric named by `column`, the declared goal
    in `table` (the `metric_goals` rollup) first, the name rule second."""
    declared = f"{declared_goals_map_sql(table)}[{column}]"  # '' when undeclared
    return f"ifNull(nullIf({declared}, ''), if({lower_is_better_sql(column)}, 'min', 'max'))"


def declared_goals(client: Any, database: str, metrics: Iterable[str] | None = None) -> dict[str, str]:
    """metric -> 'min'/'max' for the metrics some run declared a goal for (only `metrics`, when given):
    the latest declaration across runs wins (module docstring). Undeclared metrics are absent; use
    `goal_of` for the answer with the name rule. One small read of the `metric_goals` rollup (a few
    rows per metric); the leaderboard, importance and the report call it only without `--mode`."""
    wanted = None if metrics is None else sorted(set(metrics))
    if wanted == []:
        return {}
    where = "1" if wanted is None else "has({metrics:Array(String)}, metric)"
    sql = latest_goals_sql(f"{database}.metric_goals", where)
    parameters: dict[str, Any] = {} if wanted is None else {"metrics": wanted}
    return {str(metric): str(goal) for metric, goal in client.query(sql, parameters=parameters).result_rows}


def goal_of(metric: str, declared: Mapping[str, str] | None = None) -> str:
    """'min' or 'max': the declared goal of `metric` (from `declared_goals`), else the name rule."""
    goal = (declared or {}).get(metric)
    if goal in GOALS:
        return str(goal)
    return "min" if lower_is_better(metric) else "max"


def best_map_sql(table: str, low: str = "min_value", high: str = "max_value") -> str:
    """run_summary's per-metric best as a Map over its `low` and `high` maps (min_value/max_value, or
    min_step/max_step for the step), each metric on its goal's side (`goal_sql` over `table`, the
    `metric_goals` rollup). Keyed like `low`: the metrics with a finite value. Undeclared metrics
    get the name rule's side, which is what run_summary's own `best` holds."""
    return f"mapApply((k, v) -> (k, if({goal_sql(table, 'k')} = 'min', v, {high}[k])), {low})"


def declared_best_sql(declared: Mapping[str, str], column: str = "best", low: str = "min_value",
                      high: str = "max_value") -> tuple[str, dict[str, list[str]]]:
    """run_summary's `column` map (best or best_step) with the `declared` goals (from `declared_goals`)
    applied, and the query parameters it binds: `column` itself, unchanged and free, when no declaration
    differs from the name rule (run_summary's maps follow the name rule); otherwise a Map over its
    `low`/`high` maps, each metric on its goal's side. The readers' twin of `best_map_sql` for a query
    that looked the goals up first: measured cheaper than the scalar subquery in a per-key lambda."""
    if all(goal_of(metric) == goal for metric, goal in declared.items()):
        return column, {}
    rule = lower_is_better_sql("k")
    return (f"mapApply((k, v) -> (k, if(has({{declared_min:Array(String)}}, k) OR "
            f"(NOT has({{declared_max:Array(String)}}, k) AND {rule}), v, {high}[k])), {low})",
            {"declared_min": sorted(m for m, g in declared.items() if g == "min"),
             "declared_max": sorted(m for m, g in declared.items() if g == "max")})
