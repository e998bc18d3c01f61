"""The declared goal of each metric, kept small for every ranking to read (`metric_goals`, migration 9).

`metric_definitions` holds a row per run and declared metric, and every event re-states all of a
run's definitions, so at 100,000 runs with three declared metrics each the latest goal across runs
took 137-164 ms to compute from it (argMax over 300,000 rows, with or without FINAL; chDB, measured):
too much for the run list and the leaderboard, which ask on every read. An MV folds each inserted
block into `argMaxState(goal, (defined_at, run_id))` per metric, so the readers merge a handful of
rows (runstream.monitoring.metric_direction.declared_goals).

Only rows with a goal (min or max) are folded: a definition without a goal declares no direction.
The latest goal declared for a metric by any run wins; a run that re-defines a metric without its
goal does not take back the goal it declared before. The rollup keeps no run: a deleted run's
declaration stays (declare the goal again to change it).
"""

from __future__ import annotations

from runstream.consumer.table_spec import MaterializedView, Table

METRIC_GOALS = Table(
    "metric_goals",
    (
        "metric String",
        # argMax(goal, (defined_at, run_id)): the latest declaration, ties to the larger run id
        "goal AggregateFunction(argMax, String, Tuple(DateTime64(6, 'UTC'), String))",
    ),
    "AggregatingMergeTree",
    "metric",
    # On a cluster each shard's MV folds its own runs' declarations; readers merge the states.
    sharding="cityHash64(metric)",
)

METRIC_GOALS_MV = MaterializedView(
    "metric_goals_mv",
    "metric_definitions",
    "metric_goals",
    """
    SELECT metric, argMaxState(declared, (defined_at, run_id)) AS goal
    FROM (SELECT metric, toString(goal) AS declared, defined_at, run_id FROM {source} WHERE goal IN ('min', 'max'))
    GROUP BY metric
    """,
)
