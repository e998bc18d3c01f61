"""The curve routes of the HTTP API: which metrics runs logged (/api/metrics) and their curves
(/api/curves), downsampled by the one SQL that keeps spikes (runstream.analysis.curves
`bucketed_curve_sql`: min, max and last per bucket, NaN/±Inf counted), on any x-axis, over any x range.

A zoom asks again for its x range (`x_min`, `x_max`): the range is cut into `buckets` again, so zooming
in shows ever finer detail down to every point. A curve whose range holds no more points than buckets
comes back at full resolution, one entry per point, whatever the spacing of its x values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from runstream.analysis import queries
from runstream.analysis.curves import BUCKET_COLUMNS, bucketed_curve_sql, curve_axes, points_with_x_sql
from runstream.monitoring.metric_direction import declared_goals, goal_of
from runstream.schemas.catalogue import BUILTIN_AXES
from runstream.server.api_tables import Format, FormatQuery, json_response, resolve, table_response
from runstream.server.state import Server

router = APIRouter()

#: The most buckets one curve may be cut into (`buckets`): beyond it, 422.
MAX_BUCKETS = 20_000
Runs = Annotated[list[str], Query(alias="run", min_length=1, description="run id or unique name (repeatable)")]
_UNESCAPED_OFFSET = re.compile(r"(:\d\d(?:\.\d+)?) (\d\d:\d\d)$")


@router.get("/api/metrics", summary="the metrics runs logged (or a project's), with their goals, and the x-axes")
def metrics(server: Server,
            runs: Annotated[list[str] | None, Query(alias="run", description="run id or unique name")] = None,
            project: str | None = None) -> Response:
    counts: dict[str, int | None] = {}
    if runs:
        ids = [run_id for run_id, _ in resolve(server.client, server.database, runs, project)]
        for (names,) in server.client.query(
                f"SELECT mapKeys(final) FROM {server.database}.run_summary FINAL "  # noqa: S608 - the checked name
                "WHERE has({ids:Array(String)}, run_id)", parameters={"ids": ids}).result_rows:
            for name in names:
                counts[name] = (counts.get(name) or 0) + 1
    else:
        counts = dict.fromkeys(sorted(queries.vocabulary(server.client, server.database, project).metrics))
    declared = declared_goals(server.client, server.database, list(counts))
    listed = [{"name": name, "runs": counts[name], "goal": goal_of(name, declared), "declared": name in declared}
              for name in sorted(counts)]
    return json_response({"metrics": listed, "axes": [*BUILTIN_AXES, *sorted(counts)]})


def _bound(field: str, text: str | None, axis: str) -> float | None:
    """An x bound as the axis' number: a time as seconds since the epoch or ISO-8601 text, others as numbers."""
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        if axis != "time":
            raise ValueError(f"{field}: expected a number on the {axis!r} axis, got {text!r}") from None
        try:  # a '+00:00' sent unescaped in a query string arrives as ' 00:00'
            when = datetime.fromisoformat(_UNESCAPED_OFFSET.sub(r"\1+\2", text.replace("Z", "+00:00")))
        except ValueError:
            raise ValueError(f"{field}: expected seconds since the epoch or an ISO-8601 time, got {text!r}") from None
        value = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value):
        raise ValueError(f"{field}: expected a finite number, got {text!r}")
    return value


def _range_condition(axis: str, points: str, runs: str, x_min: float | None, x_max: float | None) -> str:
    """A condition on the raw points (run_id, metric, step, value, time) keeping those whose x, as
    `points_with_x_sql` computes it, lies in [x_min, x_max]; bounds travel as {x_min}/{x_max} parameters."""
    if x_min is None and x_max is None:
        return ""
    if axis == "step":
        x = "toFloat64(step)"
    elif axis == "time":
        x = "toUnixTimestamp64Micro(time) / 1e6"
    elif axis == "relative":  # each run's first point, as points_with_x_sql's relative axis counts from it
        first = (f"(SELECT CAST((groupArray(run_id), groupArray(first_us)), 'Map(String, Int64)') FROM ("  # noqa: S608
                 f"SELECT run_id, toUnixTimestamp64Micro(min(time)) AS first_us FROM {points} FINAL "
                 f"WHERE {runs} GROUP BY run_id))")
        x = f"(toUnixTimestamp64Micro(time) - {first}[run_id]) / 1e6"
    else:  # a metric axis: the steps at which the axis metric's value is in range
        bounds = " AND ".join(([] if x_min is None else ["value >= {x_min:Float64}"])
                              + ([] if x_max is None else ["value <= {x_max:Float64}"]))
        return (f" AND (run_id, step) IN (SELECT run_id, step FROM {points} FINAL "  # noqa: S608
                f"WHERE {runs} AND metric = {{axis:String}} AND {bounds})")
    return "".join(([] if x_min is None else [f" AND {x} >= {{x_min:Float64}}"])
                   + ([] if x_max is None else [f" AND {x} <= {{x_max:Float64}}"]))


def _as_time(seconds: Any) -> Any:
    if seconds is None:
        return None
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=round(float(seconds) * 1e6))


def curve_rows(client: Any, database: str, run_ids: Sequence[str], metrics: Sequence[str], *, buckets: int,
               x: str | None, x_min: str | None = None, x_max: str | None = None
               ) -> list[tuple[str, str, str, bool, list[list[Any]]]]:
    """(run_id, metric, axis, full_resolution, rows of BUCKET_COLUMNS) per curve that has points in range."""
    ids, names = list(run_ids), list(metrics)
    out: list[tuple[str, str, str, bool, list[list[Any]]]] = []
    for axis, pairs in curve_axes(client, database, ids, names, x).items():
        low, high = _bound("x_min", x_min, axis), _bound("x_max", x_max, axis)
        if low is not None and high is not None and low > high:
            raise ValueError(f"x_min {x_min!r}: greater than x_max {x_max!r}")
        parameters: dict[str, Any] = {"runs": ids, "metrics": names, "axis": axis, "points": buckets,
                                      **({} if low is None else {"x_min": low}),
                                      **({} if high is None else {"x_max": high})}
        source, runs = f"{database}.metric_points", "run_id IN {runs:Array(String)}"
        condition = "metric IN {metrics:Array(String)}"
        if len(pairs) < len(ids) * len(names):  # some curves go by another axis (as curves.history selects them)
            condition += " AND concat(run_id, char(9), metric) IN {pairs:Array(String)}"
            parameters["pairs"] = [f"{run_id}\t{metric}" for run_id, metric in pairs]
        condition += _range_condition(axis, source, runs, low, high)
        axis_sql = None if axis == "step" else "{axis:String}"
        bucketed = bucketed_curve_sql(source, runs=runs, metrics=condition, buckets="{points:UInt32}", axis=axis_sql)
        found: dict[tuple[str, str], list[list[Any]]] = {}
        for row in client.query(f"SELECT run_id, metric, {', '.join(BUCKET_COLUMNS)} FROM ({bucketed}\n) "  # noqa: S608
                                "ORDER BY run_id, metric, bucket", parameters=parameters).result_rows:
            found.setdefault((row[0], row[1]), []).append(list(row[2:]))
        count = BUCKET_COLUMNS.index("count")
        # fewer points than buckets, yet two in one bucket (unevenly spaced x): every point instead
        sparse = [key for key, rows in found.items()
                  if sum(r[count] for r in rows) <= buckets and any(r[count] > 1 for r in rows)]
        if sparse:
            parameters["sparse"] = [f"{run_id}\t{metric}" for run_id, metric in sparse]
            only_sparse = " AND concat(run_id, char(9), metric) IN {sparse:Array(String)}"
            every = points_with_x_sql(source, runs=runs, axis=axis_sql, metrics=condition + only_sparse)
            for key in sparse:
                found[key] = []
            for run_id, metric, step_x, value in client.query(
                    f"SELECT run_id, metric, px, pv FROM ({every}\n) ORDER BY run_id, metric, px, ps",  # noqa: S608
                    parameters=parameters).result_rows:
                finite = value if math.isfinite(value) else None
                found[(run_id, metric)].append([step_x, step_x, finite, finite, value, 1, int(math.isnan(value)),
                                                int(value == math.inf), int(value == -math.inf)])
        for (run_id, metric), rows in sorted(found.items()):
            if axis == "time":
                rows = [[_as_time(r[0]), _as_time(r[1]), *r[2:]] for r in rows]
            full = all(r[count] == 1 for r in rows)
            out.append((run_id, metric, axis, full, rows))
    return out


@router.get("/api/curves", summary="curves of runs, bucketed with min/max/last (spikes kept), on any x-axis")
def curves(server: Server, runs: Runs,
           metric: Annotated[list[str], Query(min_length=1, description="metric name (repeatable)")],
           x: Annotated[str | None, Query(description="step, time, relative or a logged metric (default: the "
                                                      "metric's declared step_metric, else step)")] = None,
           buckets: Annotated[int, Query(ge=1, le=MAX_BUCKETS, description=f"buckets per curve (1-{MAX_BUCKETS})")]
           = 1000,
           x_min: Annotated[str | None, Query(description="only x >= this (a time: epoch seconds or ISO-8601)")] = None,
           x_max: Annotated[str | None, Query(description="only x <= this")] = None,
           fmt: FormatQuery = Format.json) -> Response:
    resolved = resolve(server.client, server.database, runs)
    names = dict(resolved)
    found = curve_rows(server.client, server.database, list(names), metric, buckets=buckets, x=x or None,
                       x_min=x_min, x_max=x_max)
    if fmt is Format.arrow:
        rows = [[run_id, metric_name, axis, *row] for run_id, metric_name, axis, _full, curve in found for row in curve]
        return table_response(queries.Table(["run_id", "metric", "axis", *BUCKET_COLUMNS], rows), fmt)
    listed = []
    for run_id, metric_name, axis, full, curve in found:
        entry: dict[str, Any] = {"run": run_id, "name": names[run_id], "metric": metric_name, "axis": axis,
                                 "resolution": "full" if full else "buckets",
                                 "points": sum(row[BUCKET_COLUMNS.index("count")] for row in curve)}
        for i, column in enumerate(BUCKET_COLUMNS):
            entry[column] = [row[i] for row in curve]
        listed.append(entry)
    return json_response({"x": x or None, "buckets": buckets, "curves": listed})
