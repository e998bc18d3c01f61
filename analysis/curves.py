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
- `curve RUN [RUN...] --points N [--x AXIS]`: each (run, metric) curve cut into at most N buckets of
  its x range, with min, max and last per bucket and the NaN/+Inf/-Inf points counted
  (`bucketed_curve_sql`, the one SQL behind `Client.metric_history`, the report, the `metric_curve`
  view and the Runs dashboard's curve panels). A one-step spike up or down is the min or max of its
  bucket at any N, so no chart loses it (largestTriangleThreeBuckets, used before, kept one point per
  bucket and lost one of two spikes three steps apart). The x-axis is the step, the wall time, the
  seconds since the run's first point, or any metric logged at the same steps (`run.log(...,
  axes={"tokens": n})`), e.g. to compare runs with different batch sizes by tokens seen.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from runstream.schemas.catalogue import BUILTIN_AXES

if TYPE_CHECKING:  # the CLI's parser imports this module: the queries come when a command runs
    from runstream.analysis.queries import Table

CURVE_COLUMNS = ["metric", "step", "value", "source_run_id"]
#: One row per bucket of a (run, metric) curve (`bucketed_curve_sql`): x = the bucket's first x,
#: last_x = its last x; min/max over its finite values (NULL when none is finite); last = the value at
#: last_x (NaN/±Inf as logged); count of points, and of NaN, +Inf and -Inf points among them.
BUCKET_COLUMNS = ["x", "last_x", "min", "max", "last", "count", "nan_count", "pos_inf_count", "neg_inf_count"]

# Each point of the curves with its x. `{axis}` is an SQL expression of the axis name: step, time
# (seconds since the epoch), relative (seconds since the run's first point, any metric) or a metric
# name: that metric's value at the same (run, step). A point without a finite x (the axis metric not
# logged at that step, or NaN/±Inf there) cannot be placed and is left out; the plotted values are kept
# whatever they are. Both joins read nothing unless their axis is chosen.
_POINTS_WITH_X = """
    SELECT p.run_id AS run_id, p.metric AS metric, p.step AS ps, p.value AS pv,
           multiIf({axis} = 'step', toFloat64(p.step),
                   {axis} = 'time', toUnixTimestamp64Micro(p.time) / 1e6,
                   {axis} = 'relative', (toUnixTimestamp64Micro(p.time) - f.first_us) / 1e6,
                   a.found = 1, a.value, nan) AS px
    FROM (SELECT run_id, metric, step, value, time FROM {points} FINAL WHERE {runs} AND {metrics}) AS p
    LEFT JOIN (
        SELECT run_id, step, value, toUInt8(1) AS found FROM {points} FINAL
        WHERE {runs} AND metric = {axis} AND {axis} NOT IN ('step', 'time', 'relative')
    ) AS a ON a.run_id = p.run_id AND a.step = p.step
    LEFT JOIN (
        SELECT run_id, toUnixTimestamp64Micro(min(time)) AS first_us FROM {points} FINAL
        WHERE {runs} AND {axis} = 'relative' GROUP BY run_id
    ) AS f ON f.run_id = p.run_id
    WHERE isFinite(px)"""

# By step alone (the `metric_curve` view): no joins.
_POINTS_BY_STEP = """
    SELECT run_id, metric, step AS ps, value AS pv, toFloat64(step) AS px
    FROM {points} FINAL WHERE {runs} AND {metrics}"""

# Bucket b of a curve whose x runs from lo to hi holds the x with floor((x - lo) / (hi - lo) * N) = b
# (the last x belongs to bucket N - 1): fixed by the points alone, so the same question gets the same
# buckets. min/max rank finite values only (runstream.monitoring.finite_values); a bucket's last is the
# value at its greatest x (the greatest step among equal x), NaN/±Inf as logged: by step, x is the step, and
# argMax over it alone costs half of argMax over the (x, step) pair.
# Each curve's x range comes from grouping its points into arrays once (lo, hi), which are then unrolled
# with their bucket, and the buckets are grouped by the curve's row number (an integer) rather than by
# its (run_id, metric) strings. On 10 curves of 100,000 points (bench/analysis_queries.py, 2 x 10^8
# points) that took 84 ms where min/max OVER (PARTITION BY run_id, metric) and a grouping by the
# strings took 116 (medians of 11, back to back); the window alone cost more than reading the points.
_BUCKETS = """
SELECT any(run_id) AS run_id, any(metric) AS metric, bucket, min(px) AS x, max(px) AS last_x,
       {finite_min} AS min, {finite_max} AS max, argMax(pv, {last_key}) AS last, count() AS count,
       countIf(isNaN(pv)) AS nan_count, countIf(pv = inf) AS pos_inf_count, countIf(pv = -inf) AS neg_inf_count
FROM (
    SELECT run_id, metric, curve, ps, pv, px,
           if(hi > lo, least(toUInt64({buckets}) - 1, toUInt64(floor((px - lo) / (hi - lo) * {buckets}))), 0) AS bucket
    FROM (
        SELECT run_id, metric, groupArray(ps) AS curve_ps, groupArray(pv) AS curve_pv, groupArray(px) AS curve_px,
               min(px) AS lo, max(px) AS hi, rowNumberInAllBlocks() AS curve
        FROM ({points_with_x}
        )
        GROUP BY run_id, metric
    )
    ARRAY JOIN curve_ps AS ps, curve_pv AS pv, curve_px AS px
)
GROUP BY curve, bucket"""


def points_with_x_sql(points: str, *, runs: str, metrics: str, axis: str | None) -> str:
    """(run_id, metric, ps = step, pv = value, px = x) of the chosen points; `axis` None: by step, no joins."""
    template = _POINTS_BY_STEP if axis is None else _POINTS_WITH_X
    return (template.replace("{points}", points).replace("{runs}", runs).replace("{metrics}", metrics)
            .replace("{axis}", axis or ""))


def bucketed_curve_sql(points: str, *, runs: str, metrics: str, buckets: str, axis: str | None) -> str:
    """The downsampling that keeps spikes, as one SELECT (run_id, metric, bucket, *BUCKET_COLUMNS),
    unordered. The fragments are SQL: `points` the metric_points table, `runs`/`metrics` conditions on
    run_id/metric, `buckets` an expression of N >= 1, `axis` an expression of the axis name (a query
    parameter, a Grafana variable) or None for the step. Module text and parameters only, never user text."""
    from runstream.monitoring.finite_values import finite_max_sql, finite_min_sql

    return (_BUCKETS.replace("{finite_min}", finite_min_sql("pv")).replace("{finite_max}", finite_max_sql("pv"))
            .replace("{buckets}", buckets).replace("{last_key}", "ps" if axis is None else "(px, ps)")
            .replace("{points_with_x}", points_with_x_sql(points, runs=runs, metrics=metrics, axis=axis)))


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


def check_points(points: int | None) -> int | None:
    """`points` (buckets per curve): None for every point, else an integer >= 1."""
    if points is None:
        return None
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ValueError(f"points: expected a number of buckets per curve (an integer >= 1), got {points!r}")
    return points


def curve_axes(client: Any, database: str, run_ids: Sequence[str], metrics: Sequence[str],
               x: str | None) -> dict[str, list[tuple[str, str]]]:
    """Axis -> the (run, metric) curves drawn against it. `x` given: every curve, after checking that it
    is a built-in axis or a metric some of the runs logged. None: each curve's declared `step_metric`
    (run.define_metric; metric_definitions FINAL, the run's latest declaration), else the step."""
    pairs = [(run_id, metric) for run_id in run_ids for metric in metrics]
    if x is not None:
        if not isinstance(x, str) or not x:
            raise ValueError(f"x: expected step, time, relative or a logged metric's name, got {x!r}")
        if x not in BUILTIN_AXES:
            found = client.query(f"SELECT count() FROM {database}.metric_points "  # noqa: S608
                                 "WHERE run_id IN {runs:Array(String)} AND metric = {axis:String}",
                                 parameters={"runs": list(run_ids), "axis": x}).result_rows
            if not found or not found[0][0]:
                raise ValueError(f"x {x!r}: none of the runs logged a metric of that name (an x-axis is step, "
                                 "time, relative or a metric logged with run.log(..., axes={...}))")
        return {x: pairs}
    declared = client.query(
        f"SELECT run_id, metric, step_metric FROM {database}.metric_definitions FINAL "  # noqa: S608
        "WHERE run_id IN {runs:Array(String)} AND metric IN {metrics:Array(String)} AND step_metric != ''",
        parameters={"runs": list(run_ids), "metrics": list(metrics)}).result_rows
    chosen = {(run_id, metric): axis for run_id, metric, axis in declared}
    grouped: dict[str, list[tuple[str, str]]] = {}
    for pair in pairs:
        grouped.setdefault(chosen.get(pair, "step"), []).append(pair)
    return grouped


def history(client: Any, database: str, run_ids: Sequence[str], metrics: Sequence[str], *,
            points: int | None = None, x: str | None = None) -> Table:
    """Curves of runs against an axis (see the module), one query per axis in use.

    points: (run_id, metric, axis, *BUCKET_COLUMNS), one row per bucket. Without: every point, as
    (run_id, metric, step, value) when every curve is by step, else (run_id, metric, axis, step, x, value).
    For the time axis x and last_x are datetimes (UTC); relative and metric axes are numbers."""
    from runstream.analysis.queries import Table

    points = check_points(points)
    names = _metric_list(metrics) or []
    if not names:
        raise ValueError("metrics: name at least one metric")
    ids = list(run_ids)
    by_axis = curve_axes(client, database, ids, names, x)
    plain = points is None and set(by_axis) == {"step"}
    rows: list[list[Any]] = []
    for axis, pairs in by_axis.items():
        parameters: dict[str, Any] = {"runs": ids, "metrics": names, "axis": axis}
        metric_condition = "metric IN {metrics:Array(String)}"
        if len(pairs) < len(ids) * len(names):  # some curves of these runs and metrics go by another axis
            # metric names never hold control characters (producer check_key), so a tab joins the pair
            metric_condition += " AND concat(run_id, char(9), metric) IN {pairs:Array(String)}"
            parameters["pairs"] = [f"{run_id}\t{metric}" for run_id, metric in pairs]
        runs, axis_sql = "run_id IN {runs:Array(String)}", None if axis == "step" else "{axis:String}"
        source = f"{database}.metric_points"
        if points is not None:
            parameters["points"] = points
            select = f"run_id, metric, {', '.join(BUCKET_COLUMNS)}"
            inner = bucketed_curve_sql(source, runs=runs, metrics=metric_condition, buckets="{points:UInt32}",
                                       axis=axis_sql)
            order = "bucket"
        else:
            select = "run_id, metric, ps, pv" if plain else "run_id, metric, ps, px, pv"
            inner = points_with_x_sql(source, runs=runs, metrics=metric_condition, axis=axis_sql)
            order = "ps"
        # module text, the checked database name and parameters: no user text in the SQL
        sql = f"SELECT {select} FROM ({inner}\n) ORDER BY run_id, metric, {order}"  # noqa: S608
        found = client.query(sql, parameters=parameters).result_rows
        if plain:
            rows.extend(map(list, found))
        elif axis != "time":
            rows.extend([row[0], row[1], axis, *row[2:]] for row in found)
        elif points is not None:  # seconds since the epoch as datetimes, exact to the point's microsecond
            rows.extend([row[0], row[1], axis, _as_time(row[2]), _as_time(row[3]), *row[4:]] for row in found)
        else:
            rows.extend([row[0], row[1], axis, row[2], _as_time(row[3]), row[4]] for row in found)
    if len(by_axis) > 1:
        rows.sort(key=lambda row: (row[0], row[1]))  # stable: each curve's buckets or steps stay in order
    if points is not None:
        return Table(["run_id", "metric", "axis", *BUCKET_COLUMNS], rows)
    if plain:
        return Table(["run_id", "metric", "step", "value"], rows)
    return Table(["run_id", "metric", "axis", "step", "x", "value"], rows)


def _as_time(seconds: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=round(seconds * 1e6))


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


def curve(client: Any, database: str, run: str | Sequence[str] | None = None, *,
          metrics: Sequence[str] | None = None, attempts: bool = False, group: str | None = None,
          project: str | None = None, points: int | None = None, x: str | None = None) -> Table:
    """A run's curve (RUN: an id or a unique name), every attempt's values (`attempts`), or a group's
    aggregate (`group`); exactly one of `run` and `group`. With `points` or `x`: the runs' own points
    against x, bucketed with min/max/last when `points` (`history`). Raises ValueError naming what is wrong."""
    from runstream.analysis.queries import Table, resolve_runs

    names = _metric_list(metrics)
    refs = [] if run is None else [run] if isinstance(run, str) else list(run)
    if points is not None or x is not None:
        if group is not None or attempts:
            raise ValueError(f"curve: --points/--x draw runs' own points, not {'a group' if group else 'attempts'}"
                             f" (points {points!r}, x {x!r})")
        if not refs:
            raise ValueError("curve: name a run (its id or unique name) to draw against --x / in --points buckets")
        ids = [run_id for run_id, _name in resolve_runs(client, database, refs, project)]
        if names is None:
            names = [row[0] for row in client.query(
                f"SELECT DISTINCT metric FROM {database}.metric_points "  # noqa: S608
                "WHERE run_id IN {runs:Array(String)} ORDER BY metric", parameters={"runs": ids}).result_rows]
            if x is not None:
                names = [name for name in names if name != x] or names  # the axis against itself says nothing
        if not names:
            raise ValueError(f"curve: run {ids[0]} logged no metrics")
        return history(client, database, ids, names, points=points, x=x)
    if len(refs) > 1:
        raise ValueError(f"curve: one run at a time, or --points/--x for several (runs {refs!r})")
    run = refs[0] if refs else None
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
        "values stay here). --group G: mean, min, max and count per step across the group's runs. "
        "--points N / --x AXIS: the runs' own points against AXIS, in at most N buckets per curve with "
        "min, max and last (spikes kept, NaN/Inf counted).")
    parser.add_argument("run", nargs="*", default=None, metavar="RUN",
                        help="run id or (unique) run name (several with --points/--x)")
    parser.add_argument("--metric", action="append", default=None, metavar="M",
                        help="only this metric (repeatable; default: all)")
    parser.add_argument("--attempts", action="store_true", help="every attempt's value of every step")
    parser.add_argument("--group", default=None, metavar="G", help="the aggregate curve of this group of runs")
    parser.add_argument("--project", default=None, help="the project of RUN's name or of the group")
    parser.add_argument("--points", type=int, default=None, metavar="N",
                        help="cut each curve into at most N buckets of its x range: x, last_x, min, max, last and "
                        "the count of points, NaN, +Inf and -Inf per bucket (one-step spikes stay visible)")
    parser.add_argument("--x", default=None, metavar="AXIS",
                        help="x-axis: step, time, relative (seconds since the run's first point) or a logged metric "
                        "such as tokens or epoch (run.log(..., axes={...})); default: the metric's declared "
                        "step_metric, else step")
    _common(parser)


def cmd_curve(args: argparse.Namespace) -> int:
    from runstream.analysis.cli import _open, _print
    from runstream.progress import Stages

    with Stages("runstream curve", show=args.progress) as progress:
        client, db = _open(args, progress)
        progress.step("querying")
        table = curve(client, db, args.run or None, metrics=args.metric, attempts=args.attempts, group=args.group,
                      project=args.project, points=args.points, x=args.x)
    _print(table.columns, table.rows, args.format)
    return 0


#: Handlers by command name (runstream.analysis.cli wraps them in its ClickHouse error handling).
COMMANDS = {"curve": cmd_curve}
