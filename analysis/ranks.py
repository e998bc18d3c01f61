"""Every rank of a distributed run: per-step spread across ranks, each rank's skew, and the straggler of each
run; `runstream ranks`, `runstream stragglers`, `Client.rank_spread` and `Client.stragglers`.

A run logged with `init(log_all_ranks=True)` (or RUNSTREAM_LOG_ALL_RANKS=1) stores rank 0's points as the
run's curve (`metric_points`, node = the run's host) and every other rank's in `rank_metric_points`, each
with its rank and node. The views here (created by migration 9) join the two, with FINAL:

- `rank_spread(run, metric)`: per step, how many ranks have a finite value (`ranks`), their min, median
  (exact, numpy's linear interpolation) and max, and the rank (and node) holding the max. NaN and ±Inf
  are left out of every column and of `ranks` (runstream.monitoring.finite_values); a step where no rank
  has a finite value keeps its row with NULLs and 0.
- `rank_skew(metric, project)`: per (run, rank), the rank's median over its steps, the median of the
  run's ranks' medians, and their ratio (runstream.monitoring.rank_skew, the one definition).
- `stragglers(metric, project)`: per run, the rank with the highest median (the slowest, for a step time;
  default metric `step_time`, seconds), its node and its ratio to the run's median.

`project` '' means every project. The straggler alert (`RunstreamRankStraggler`) reads the same ratio over
a trailing window from `runstream monitor`'s gauge `runstream_rank_step_time_ratio`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from runstream.consumer.table_spec import View
from runstream.monitoring.finite_values import finite_or_null_sql
from runstream.monitoring.rank_skew import (
    STEP_TIME_METRIC,
    rank_points_sql,
    rank_skew_sql,
    stragglers_sql,
)

if TYPE_CHECKING:  # the CLI's parser imports this module: the queries come when a command runs
    from runstream.analysis.queries import Table

SPREAD_COLUMNS = ["step", "ranks", "min", "median", "max", "max_rank", "max_node"]
SKEW_COLUMNS = ["run_id", "run_name", "project", "rank", "node", "median", "run_median", "ratio", "ranks", "steps"]

_V = finite_or_null_sql("value")
_RANK_SPREAD_SQL = f"""
SELECT step, count(v) AS ranks, min(v) AS min, quantileExactInclusive(0.5)(v) AS median, max(v) AS max,
       if(count(v) = 0, NULL, argMaxIf(rank, (v, -toInt64(rank)), isNotNull(v))) AS max_rank,
       if(count(v) = 0, NULL, argMaxIf(node, (v, -toInt64(rank)), isNotNull(v))) AS max_node
FROM (
    SELECT step, rank, if(rank = 0, (SELECT toString(any(host)) FROM {{runs}} FINAL
                                      WHERE run_id = {{{{run:String}}}}), node) AS node, {_V} AS v
    FROM (
    {rank_points_sql("run_id = {{run:String}}", by_project=False)}
    )
)
GROUP BY step
ORDER BY step
"""  # noqa: S608 - the module's own text; values travel as parameters

#: The views of migration 9 (parameterised: `SELECT * FROM rank_spread(run='...', metric='step_time')`).
RANK_SPREAD = View("rank_spread", _RANK_SPREAD_SQL)
RANK_SKEW = View("rank_skew", rank_skew_sql())
STRAGGLERS = View("stragglers", stragglers_sql())
RANK_VIEWS: tuple[View, ...] = (RANK_SPREAD, RANK_SKEW, STRAGGLERS)


def _statement(template: str, database: str) -> str:
    """A view's select as a statement over `database` (the views' own text; values travel as parameters)."""
    return template.format(metric_points=f"{database}.metric_points",
                           rank_metric_points=f"{database}.rank_metric_points", runs=f"{database}.runs")


def _metric(metric: Any) -> str:
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric: expected a metric name, got {metric!r}")
    return metric


def _explain_no_ranks(client: Any, database: str, run_id: str, metric: str) -> None:
    """Raise the error saying why a run has no per-rank points of `metric`, naming what its ranks logged."""
    logged = [str(m) for (m,) in client.query(
        f"SELECT DISTINCT metric FROM {database}.rank_metric_points WHERE run_id = {{run:String}} "  # noqa: S608
        "ORDER BY metric", parameters={"run": run_id}).result_rows]
    if not logged:
        raise ValueError(f"run {run_id}: no rank other than 0 logged to it; log every rank with "
                         "runstream.init(..., log_all_ranks=True) or RUNSTREAM_LOG_ALL_RANKS=1")
    raise ValueError(f"metric {metric!r}: no rank other than 0 of run {run_id} logged it "
                     f"(they logged: {', '.join(logged)})")


def rank_spread(client: Any, database: str, run: str, metric: str = STEP_TIME_METRIC,
                project: str | None = None) -> Table:
    """Per step of RUN (an id or a unique name): step, ranks, min, median, max, max_rank, max_node across
    its ranks' finite values of `metric` (module docstring). Raises ValueError naming the run or metric
    when no rank other than 0 logged it."""
    from runstream.analysis.queries import Table, resolve_runs

    metric = _metric(metric)
    run_id, _name = resolve_runs(client, database, [run], project)[0]
    rows = client.query(_statement(_RANK_SPREAD_SQL, database),
                        parameters={"run": run_id, "metric": metric}).result_rows
    if not rows:
        _explain_no_ranks(client, database, run_id, metric)
    return Table(list(SPREAD_COLUMNS), [[int(step), int(ranks), *map(_number, (low, mid, high)),
                                         None if top is None else int(top), top_node]
                                        for step, ranks, low, mid, high, top, top_node in rows])


def rank_summary(client: Any, database: str, run: str, metric: str = STEP_TIME_METRIC,
                 project: str | None = None) -> Table:
    """Per rank of RUN: the `rank_skew` row (median of its finite values of `metric`, the run's median, ratio)."""
    from runstream.analysis.queries import Table, resolve_runs

    metric = _metric(metric)
    run_id, _name = resolve_runs(client, database, [run], project)[0]
    sql = _statement(rank_skew_sql("run_id = {{run:String}}"), database)
    rows = client.query(sql, parameters={"run": run_id, "metric": metric, "project": ""}).result_rows
    if not rows:
        _explain_no_ranks(client, database, run_id, metric)
    return Table(list(SKEW_COLUMNS), [_skew_row(row) for row in rows])


def stragglers(client: Any, database: str, project: str | None = None, metric: str = STEP_TIME_METRIC) -> Table:
    """Per run logged from every rank (of `project`, default all): its slowest rank, node, median, the run's
    median and their ratio, the most skewed run first."""
    from runstream.analysis.queries import Table

    metric = _metric(metric)
    rows = client.query(_statement(stragglers_sql(), database),
                        parameters={"metric": metric, "project": project or ""}).result_rows
    table = Table(list(SKEW_COLUMNS), [_skew_row(row) for row in rows])
    ratio = SKEW_COLUMNS.index("ratio")
    table.rows.sort(key=lambda row: (row[ratio] is None, -(row[ratio] or 0.0), row[0]))
    return table


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _skew_row(row: Any) -> list[Any]:
    run_id, name, project, rank, node, median, run_median, ratio, ranks, steps = row
    return [str(run_id), str(name), str(project), int(rank), str(node), _number(median), _number(run_median),
            _number(ratio), int(ranks), int(steps)]


def add_parsers(commands: Any) -> None:
    """`runstream ranks` and `runstream stragglers`, registered from runstream.analysis.cli `add_parsers`."""
    from runstream.analysis.cli import _common

    ranks = commands.add_parser(
        "ranks", help="a distributed run's per-step spread across ranks (log_all_ranks), or each rank's median",
        description="Per step of RUN: how many ranks have a finite value of the metric, their min, median and "
        "max, and the rank and node with the max. --by-rank: one row per rank with its median over all steps, "
        "the run's median (of the ranks' medians) and the ratio of the two. Needs a run logged with "
        "runstream.init(..., log_all_ranks=True); rank 0's node is the run's host.")
    ranks.add_argument("run", metavar="RUN", help="run id or (unique) run name")
    ranks.add_argument("--metric", default=STEP_TIME_METRIC, metavar="M", help="the metric (default %(default)s)")
    ranks.add_argument("--by-rank", action="store_true", help="one row per rank: median, run median, ratio")
    ranks.add_argument("--project", default=None, help="the project of RUN's name")
    _common(ranks)

    slow = commands.add_parser(
        "stragglers", help="the slowest rank and node of each run logged from every rank",
        description="Per run logged with log_all_ranks: the rank with the highest median of the metric (default "
        f"{STEP_TIME_METRIC}: seconds per step, so highest is slowest), its node, its median, the median of the "
        "run's ranks and their ratio; the most skewed run first. NaN and ±Inf values are left out.")
    slow.add_argument("--project", default=None, help="only runs of this project (default: all)")
    slow.add_argument("--metric", default=STEP_TIME_METRIC, metavar="M", help="the metric (default %(default)s)")
    _common(slow)


def cmd_ranks(args: argparse.Namespace) -> int:
    from runstream.analysis.cli import _open, _print
    from runstream.progress import Stages

    with Stages("runstream ranks", show=args.progress) as progress:
        client, db = _open(args, progress)
        progress.step("querying")
        query = rank_summary if args.by_rank else rank_spread
        table = query(client, db, args.run, args.metric, project=args.project)
    _print(table.columns, table.rows, args.format)
    return 0


def cmd_stragglers(args: argparse.Namespace) -> int:
    from runstream.analysis.cli import _open, _print
    from runstream.progress import Stages

    with Stages("runstream stragglers", show=args.progress) as progress:
        client, db = _open(args, progress)
        progress.step("querying")
        table = stragglers(client, db, args.project, args.metric)
    _print(table.columns, table.rows, args.format)
    return 0


#: Handlers by command name (runstream.analysis.cli wraps them in its ClickHouse error handling).
COMMANDS = {"ranks": cmd_ranks, "stragglers": cmd_stragglers}
