"""`runstream curve` and `Client.curve`: a run's curve, every attempt's values of it, or a group's aggregate.

- `curve RUN`: the run's effective curve, (metric, step, value, source_run_id): its own points as every
  view shows them (a step logged again by a later attempt has the later value) and, for a fork, the
  parent's up to the fork step (runstream.analysis.lineage `run_curve`).
- `curve RUN --attempts`: every attempt's value of every step: the values every view shows
  (`metric_points` FINAL, with the attempt that logged each) and the values later attempts replaced
  (`metric_points_superseded`, copied aside by the consumer: runstream.consumer.superseded), one row per
  (metric, step, attempt), with `shown_attempt`, the attempt whose value every view shows for that step.
  So a crashed attempt's steps past its checkpoint stay visible next to the values that replaced them.
- `curve --group G`: per (metric, step) the mean, min, max and count across the group's runs
  (runstream.analysis.group_curves `group_curve`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI's parser imports this module: the queries come when a command runs
    from runstream.analysis.queries import Table

CURVE_COLUMNS = ["metric", "step", "value", "source_run_id"]
ATTEMPT_COLUMNS = ["metric", "step", "attempt", "value", "shown_attempt"]
GROUP_COLUMNS = ["metric", "step", "mean", "min", "max", "count"]

# Every (metric, step, attempt) of the run once: a row both kept and copied aside (an earlier attempt's
# step that no later attempt logged again) is the same value; the kept row wins if they differ.
_ATTEMPTS_SQL = """
SELECT p.metric, p.step, p.attempt, p.value, k.attempt AS shown_attempt
FROM (
    SELECT metric, step, attempt, argMax(value, kept) AS value
    FROM (
        SELECT metric, step, attempt, value, 1 AS kept
        FROM {db}.metric_points FINAL WHERE run_id = {{run:String}}{metric_filter}
        UNION ALL
        SELECT metric, step, attempt, value, 0 AS kept
        FROM {db}.metric_points_superseded FINAL WHERE run_id = {{run:String}}{metric_filter}
    )
    GROUP BY metric, step, attempt
) AS p
LEFT JOIN (
    SELECT metric, step, attempt FROM {db}.metric_points FINAL WHERE run_id = {{run:String}}{metric_filter}
) AS k ON k.metric = p.metric AND k.step = p.step
ORDER BY p.metric, p.step, p.attempt
"""  # noqa: S608 - the module's own text; values travel as parameters


def _metric_list(metrics: Sequence[str] | None) -> list[str] | None:
    if metrics is None:
        return None
    if isinstance(metrics, str):
        raise ValueError(f"metrics: expected a list of metric names, got the string {metrics!r}")
    names = list(metrics)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"metrics: expected metric names, got {name!r}")
    return names or None


def attempt_rows(client: Any, database: str, run_id: str, metrics: Sequence[str] | None = None) -> list[list[Any]]:
    """(metric, step, attempt, value, shown_attempt) of every attempt of the run (see the module)."""
    names = _metric_list(metrics)
    sql = _ATTEMPTS_SQL.format(db=database, metric_filter=" AND metric IN {metrics:Array(String)}" if names else "")
    parameters: dict[str, Any] = {"run": run_id}
    if names:
        parameters["metrics"] = names
    return [list(row) for row in client.query(sql, parameters=parameters).result_rows]


def curve(client: Any, database: str, run: str | None = None, *, metrics: Sequence[str] | None = None,
          attempts: bool = False, group: str | None = None, project: str | None = None) -> Table:
    """A run's curve (RUN: an id or a unique name), every attempt's values (`attempts`), or a group's
    aggregate (`group`); exactly one of `run` and `group`. Raises ValueError naming what is wrong."""
    from runstream.analysis.queries import Table, resolve_runs

    names = _metric_list(metrics)
    if group is not None:
        if run is not None:
            raise ValueError(f"curve: give a run or a group, not both (run {run!r}, group {group!r})")
        if attempts:
            raise ValueError(f"curve: --attempts shows one run's attempts, not a group's (group {group!r})")
        from runstream.analysis.group_curves import group_curve

        return Table(list(GROUP_COLUMNS), [list(row) for row in group_curve(client, database, group, names, project)])
    if run is None:
        raise ValueError("curve: name a run (its id or unique name) or a group (--group)")
    run_id, _name = resolve_runs(client, database, [run], project)[0]
    if attempts:
        rows = attempt_rows(client, database, run_id, names)
        if names and not rows:
            raise ValueError(f"metrics: run {run_id} logged none of {', '.join(map(repr, names))}")
        return Table(list(ATTEMPT_COLUMNS), rows)
    from runstream.analysis.lineage import run_curve

    return Table(list(CURVE_COLUMNS), [list(row) for row in run_curve(client, database, run_id, names)])


def add_parsers(commands: Any) -> None:
    """`runstream curve`, registered from runstream.analysis.cli `add_parsers`."""
    from runstream.analysis.cli import _common

    parser = commands.add_parser(
        "curve", help="a run's curve, every attempt's values of it (--attempts), or a group's (--group)",
        description="RUN's curve: metric, step, value and the run the value comes from (a fork's curve is its "
        "parent's up to the fork step). --attempts: one row per step and attempt, with shown_attempt, the "
        "attempt whose value every view shows (a resumed run's later attempt wins; the crashed attempt's "
        "values stay here). --group G: mean, min, max and count per step across the group's runs.")
    parser.add_argument("run", nargs="?", default=None, metavar="RUN", help="run id or (unique) run name")
    parser.add_argument("--metric", action="append", default=None, metavar="M",
                        help="only this metric (repeatable; default: all)")
    parser.add_argument("--attempts", action="store_true", help="every attempt's value of every step")
    parser.add_argument("--group", default=None, metavar="G", help="the aggregate curve of this group of runs")
    parser.add_argument("--project", default=None, help="the project of RUN's name or of the group")
    _common(parser)


def cmd_curve(args: argparse.Namespace) -> int:
    from runstream.analysis.cli import _open, _print
    from runstream.progress import Stages

    with Stages("runstream curve", show=args.progress) as progress:
        client, db = _open(args, progress)
        progress.step("querying")
        table = curve(client, db, args.run, metrics=args.metric, attempts=args.attempts, group=args.group,
                      project=args.project)
    _print(table.columns, table.rows, args.format)
    return 0


#: Handlers by command name (runstream.analysis.cli wraps them in its ClickHouse error handling).
COMMANDS = {"curve": cmd_curve}
