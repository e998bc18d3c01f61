"""`runstream histograms` and `Client.histograms`: the histograms a run logged (`Run.log_histogram`).

One dict (or row) per stored histogram, read FINAL from `metric_histograms` (a redelivered copy, or a
step logged again by a resumed attempt, counted once): run_id, metric, step, rank, node, time,
attempt, edges (one more than counts, strictly increasing), counts (finite values per bin; the last
bin is closed) and nan_count, neg_inf_count, pos_inf_count (never binned). The CLI's csv and json
carry exactly these; its table shows a summary per histogram (bins, range, values, a sparkline of
the counts) since a row of 64 edges does not fit a terminal.

The report's histogram section and the Grafana heatmap read the same table
(`latest_histograms`; runstream.dashboards.build `HISTOGRAM_HEATMAP`).
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence
from typing import Any

HISTOGRAM_COLUMNS = ("run_id", "metric", "step", "rank", "node", "time", "attempt", "edges", "counts",
                     "nan_count", "neg_inf_count", "pos_inf_count")
SUMMARY_COLUMNS = ("metric", "step", "rank", "node", "bins", "low", "high", "values", "nan", "-inf", "+inf",
                   "counts")
_SPARKS = " ▁▂▃▄▅▆▇█"

_SQL = """
SELECT {columns}
FROM {db}.metric_histograms FINAL
WHERE run_id = {{run:String}}{filters}
ORDER BY metric, step, rank
"""  # noqa: S608 - the module's own text; values travel as parameters


def _utc(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _check_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    return value


def histograms(client: Any, database: str, run: str, metric: str | None = None, rank: int | None = None,
               step: int | None = None, project: str | None = None) -> list[dict[str, Any]]:
    """The run's histograms (RUN: an id or a unique name), by metric, step and rank; `metric`, `rank`
    and `step` keep only those. A metric, rank or step the run has no histogram of raises ValueError
    naming it and what there is, rather than answering with nothing."""
    from runstream.analysis.queries import resolve_runs

    rank, step = _check_int("rank", rank), _check_int("step", step)
    if metric is not None and (not isinstance(metric, str) or not metric):
        raise ValueError(f"metric: expected a metric name, got {metric!r}")
    run_id, _name = resolve_runs(client, database, [run], project)[0]
    filters = ""
    parameters: dict[str, Any] = {"run": run_id}
    for column, kind, value in (("metric", "String", metric), ("rank", "UInt32", rank), ("step", "Int64", step)):
        if value is not None:
            filters += f" AND {column} = {{{column}:{kind}}}"
            parameters[column] = value
    sql = _SQL.format(columns=", ".join(HISTOGRAM_COLUMNS), db=database, filters=filters)
    rows = client.query(sql, parameters=parameters).result_rows
    if not rows and filters:
        _explain_empty(client, database, run_id, metric, rank, step)
    found = []
    for row in rows:
        record = dict(zip(HISTOGRAM_COLUMNS, row, strict=True))
        record["time"] = _utc(record["time"])
        record["edges"], record["counts"] = list(record["edges"]), [int(c) for c in record["counts"]]
        found.append(record)
    return found


def _explain_empty(client: Any, database: str, run_id: str, metric: str | None, rank: int | None,
                   step: int | None) -> None:
    """Say which filter found nothing, and what the run has."""
    sql = (f"SELECT metric, groupUniqArray(rank), min(step), max(step), count() "  # noqa: S608
           f"FROM {database}.metric_histograms FINAL WHERE run_id = {{run:String}} GROUP BY metric ORDER BY metric")
    have = client.query(sql, parameters={"run": run_id}).result_rows
    if not have:
        raise ValueError(f"run {run_id}: no histograms logged (Run.log_histogram)")
    listed = "; ".join(f"{m}: ranks {sorted(r)}, steps {lo}..{hi} ({n})" for m, r, lo, hi, n in have)
    asked = ", ".join(f"{name} {value!r}" for name, value in (("metric", metric), ("rank", rank), ("step", step))
                      if value is not None)
    raise ValueError(f"run {run_id}: no histogram with {asked} (it has {listed})")


def sparkline(counts: Sequence[int]) -> str:
    """The counts as one line of block characters (a bin with any value is never blank)."""
    top = max(counts, default=0)
    if top <= 0:
        return " " * len(counts)
    return "".join(_SPARKS[0] if c <= 0 else _SPARKS[max(1, round(c / top * (len(_SPARKS) - 1)))] for c in counts)


def summary_row(record: dict[str, Any]) -> list[Any]:
    """A histogram in one table row: SUMMARY_COLUMNS."""
    edges, counts = record["edges"], record["counts"]
    return [record["metric"], record["step"], record["rank"], record["node"], len(counts), edges[0], edges[-1],
            sum(counts), record["nan_count"], record["neg_inf_count"], record["pos_inf_count"],
            sparkline(counts if len(counts) <= 64 else _rebinned(counts, 64))]


def _rebinned(counts: Sequence[int], width: int) -> list[int]:
    """Adjacent bins summed into `width` groups (for display only)."""
    size = -(-len(counts) // width)
    return [sum(counts[i:i + size]) for i in range(0, len(counts), size)]


_LATEST_SQL = """
SELECT run_id, metric, argMax(step, (step, rank = 0)) AS at_step, argMax(rank, (step, rank = 0)) AS at_rank,
       argMax(edges, (step, rank = 0)) AS edges, argMax(counts, (step, rank = 0)) AS counts,
       argMax(nan_count + neg_inf_count + pos_inf_count, (step, rank = 0)) AS non_finite, count() AS logged
FROM {db}.metric_histograms FINAL
WHERE run_id IN {{runs:Array(String)}}
GROUP BY run_id, metric
ORDER BY metric, run_id
"""  # noqa: S608 - the module's own text; values travel as parameters


def latest_histograms(client: Any, database: str, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Per (run, metric): its latest histogram (highest step, rank 0's where several ranks logged it),
    and how many the run logged of the metric: what the report draws."""
    if not run_ids:
        return []
    rows = client.query(_LATEST_SQL.format(db=database), parameters={"runs": list(run_ids)}).result_rows
    keys = ("run_id", "metric", "step", "rank", "edges", "counts", "non_finite", "logged")
    return [{**dict(zip(keys, row, strict=True)), "edges": list(row[4]), "counts": [int(c) for c in row[5]]}
            for row in rows]


#: The heatmap's y buckets: every histogram drawn is re-binned onto this many equal buckets.
HEATMAP_BUCKETS = 24


def heatmap_sql(database: str, *, where: str, time_bucket: str = "time", buckets: int = HEATMAP_BUCKETS) -> str:
    """(time, bucket, count) of the histograms `where` selects, for a heatmap over time (the Grafana
    panel's SQL, with `where` and `time_bucket` made of the dashboard's variables and macros).

    Histograms of one metric need not share edges (bins="auto" picks new ones each step), so each bin
    is counted into one of `buckets` equal buckets spanning every selected histogram's range, by the
    bin's centre; `bucket` is the bucket's upper bound as text (Grafana's "time series buckets"
    layout: one series per bucket, ordered by its bound). Counts are finite values only, and every
    one is in some bucket: a time's counts add up to the values its histograms hold.
    """
    return f"""
WITH (SELECT (min(edges[1]), max(edges[length(edges)])) FROM {database}.metric_histograms FINAL
      WHERE {where}) AS span,
     if(span.2 > span.1, span.2 - span.1, 1.0) AS width
SELECT {time_bucket} AS time, printf('%.5g', span.1 + (cell.1 + 1) * width / {buckets}) AS bucket,
       sum(cell.2) AS count
FROM {database}.metric_histograms FINAL
ARRAY JOIN arrayMap(i -> (least({buckets - 1}, toUInt32(greatest(0, floor(((edges[i] + edges[i + 1]) / 2 - span.1)
                                / width * {buckets})))), counts[i]), arrayEnumerate(counts)) AS cell
WHERE {where}
GROUP BY time, bucket
ORDER BY time, toFloat64(bucket)"""  # noqa: S608 - the module's own text, the caller's checked conditions


def add_parsers(commands: Any) -> None:
    """`runstream histograms`, registered from runstream.analysis.cli `add_parsers`."""
    from runstream.analysis.cli import _common

    parser = commands.add_parser(
        "histograms", help="the histograms a run logged (Run.log_histogram), by metric, step and rank",
        description="One row per histogram of RUN: its metric, step, rank and node; csv and json give the edges, "
        "the counts (finite values per bin, the last bin closed) and the NaN, -Inf and +Inf counts; the table "
        "shows bins, range, number of values and the counts as a sparkline.")
    parser.add_argument("run", metavar="RUN", help="run id or (unique) run name")
    parser.add_argument("--metric", default=None, metavar="M", help="only this metric")
    parser.add_argument("--rank", type=int, default=None, metavar="R", help="only this rank (log_all_ranks)")
    parser.add_argument("--step", type=int, default=None, metavar="S", help="only this step")
    parser.add_argument("--project", default=None, help="the project of RUN's name")
    _common(parser)


def cmd_histograms(args: argparse.Namespace) -> int:
    from runstream.analysis.cli import _open, _print
    from runstream.progress import Stages

    with Stages("runstream histograms", show=args.progress) as progress:
        client, db = _open(args, progress)
        progress.step("querying")
        found = histograms(client, db, args.run, metric=args.metric, rank=args.rank, step=args.step,
                           project=args.project)
    if args.format == "table":
        _print(list(SUMMARY_COLUMNS), [summary_row(record) for record in found], args.format)
    else:
        _print(list(HISTOGRAM_COLUMNS), [[record[c] for c in HISTOGRAM_COLUMNS] for record in found], args.format)
    return 0


#: Handlers by command name (runstream.analysis.cli wraps them in its ClickHouse error handling).
COMMANDS = {"histograms": cmd_histograms}
