"""How far each rank of a distributed run is from its peers: the one definition of a rank's skew and of
the straggler, in SQL, for the views (`runstream ranks`, `runstream stragglers`, `Client.stragglers`) and
for the exporter's gauge that the straggler alert reads.

The points of every rank of a run (`init(log_all_ranks=True)`): rank 0's are the run's own curve in
`metric_points` (its node is the run's host, `runs.host`), the other ranks' are in `rank_metric_points`;
both are read with FINAL, so a redelivered batch or a step logged again counts once. Only runs that
logged from a rank other than 0 take part: a run logged from rank 0 alone has no peers.

- A rank's median is the median (exact, numpy's linear interpolation) of its finite values of the
  metric (runstream.monitoring.finite_values: NaN and ±Inf are left out, as rankings leave them out).
- The run's median is the median of its ranks' medians; a rank's ratio is its median / the run's
  median (NULL when the run's median is not positive).
- The straggler of a run is the rank with the highest median (ties to the lower rank): the metric is a
  time per step (`step_time`, seconds, logged by the training loop as `run.log({"step_time": dt})`), so
  higher is slower. A throughput metric (samples/s) is inverted before it is logged for this purpose.

The alert (`RunstreamRankStraggler`, runstream.dashboards.alerts) fires when a rank's ratio stays above
`STRAGGLER_RATIO` for `STRAGGLER_FOR`; the exporter's ratio is over the points each rank logged in the
trailing `RANK_WINDOW_S` seconds, so a finished run's series disappear and a recovered rank's ratio falls.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from runstream.monitoring.finite_values import finite_sql

#: The metric a rank's step time is logged as, in seconds (the straggler views' and the alert's default).
STEP_TIME_METRIC = "step_time"
#: A rank whose median step time is more than this times its run's median is a straggler (the alert's threshold).
STRAGGLER_RATIO = 1.5
#: How long the ratio must stay above STRAGGLER_RATIO before the alert fires.
STRAGGLER_FOR = "10m"
#: The exporter's ratio is over the points each rank logged in this trailing window (seconds).
RANK_WINDOW_S = 120

# Templates over {metric_points}, {rank_metric_points} and {runs} (filled in by
# runstream.consumer.migrations.create_view_sql for a view, or by `_in_database` for a direct query);
# ClickHouse query parameters are doubled braces: {{metric:String}}, {{project:String}}.
_PROJECT = "({{project:String}} = '' OR project = {{project:String}})"


def rank_points_sql(condition: str = "", *, by_project: bool = True) -> str:
    """(run_id, rank, node, step, value, time) of every rank of the runs that logged from a rank other than 0,
    for metric {{metric:String}} (in project {{project:String}}, '' = all, when `by_project`); `condition` is
    more SQL over run_id/time (module text only). Rank 0's node is '' here (it is `runs.host`: joined later)."""
    extra = f" AND {condition}" if condition else ""
    if by_project:
        extra += f" AND run_id IN (SELECT run_id FROM {{runs}} FINAL WHERE {_PROJECT})"  # noqa: S608 - module text
    ranked_runs = (f"SELECT DISTINCT run_id FROM {{rank_metric_points}} "  # noqa: S608 - module text
                   f"WHERE metric = {{{{metric:String}}}}{extra}")
    return (
        f"SELECT run_id, toUInt32(0) AS rank, '' AS node, step, value, time\n"  # noqa: S608 - module text
        f"    FROM {{metric_points}} FINAL\n"
        f"    WHERE metric = {{{{metric:String}}}}{extra} AND run_id IN ({ranked_runs})\n"
        f"    UNION ALL\n"
        f"    SELECT run_id, rank, toString(node) AS node, step, value, time\n"
        f"    FROM {{rank_metric_points}} FINAL\n"
        f"    WHERE metric = {{{{metric:String}}}}{extra}"
    )


def rank_skew_sql(condition: str = "") -> str:
    """One row per (run, rank): run_id, run_name, project, rank, node, median, run_median, ratio, ranks
    (the run's ranks with a finite value), steps (the rank's finite values), ordered by run and rank."""
    return f"""
SELECT m.run_id AS run_id, r.run_name AS run_name, r.project AS project, m.rank AS rank,
       if(m.rank = 0, toString(r.host), m.node) AS node, m.median AS median, m.run_median AS run_median,
       if(m.run_median > 0, m.median / m.run_median, NULL) AS ratio, m.ranks AS ranks, m.steps AS steps
FROM (
    SELECT run_id, rank, node, median, steps,
           quantileExactInclusive(0.5)(median) OVER (PARTITION BY run_id) AS run_median,
           count() OVER (PARTITION BY run_id) AS ranks
    FROM (
        SELECT run_id, rank, argMax(node, time) AS node, quantileExactInclusive(0.5)(value) AS median,
               count() AS steps
        FROM (
    {rank_points_sql(condition)}
        )
        WHERE {finite_sql("value")}
        GROUP BY run_id, rank
    )
) AS m
INNER JOIN (SELECT run_id, run_name, project, host FROM {{runs}} FINAL) AS r ON r.run_id = m.run_id
ORDER BY run_id, rank
"""  # noqa: S608 - the module's own text; values travel as parameters


def stragglers_sql() -> str:
    """One row per run: its straggler (the rank with the highest median; ties to the lower rank) with the
    columns of `rank_skew_sql`, the most skewed run first."""
    return f"""
SELECT run_id, run_name, project, rank, node, median, run_median, ratio, ranks, steps
FROM ({rank_skew_sql()})
ORDER BY run_id, median DESC, rank
LIMIT 1 BY run_id
"""  # noqa: S608 - the module's own text


def _in_database(template: str, database: str) -> str:
    """A template of this module as a statement over `database`'s tables (query parameters single-braced)."""
    return template.format(metric_points=f"{database}.metric_points",
                           rank_metric_points=f"{database}.rank_metric_points", runs=f"{database}.runs")


def recent_rank_skew(client: Any, database: str, *, now: dt.datetime, window_s: float = RANK_WINDOW_S,
                     metric: str = STEP_TIME_METRIC) -> list[dict[str, Any]]:
    """The `rank_skew_sql` rows over the points logged in the `window_s` seconds before `now` (the exporter's)."""
    since = now.astimezone(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=window_s)
    sql = _in_database(rank_skew_sql("time >= {{since:DateTime64(6)}}"), database)
    result = client.query(sql, parameters={"metric": metric, "project": "", "since": since})
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def rank_skew_families(client: Any, database: str, *, now: dt.datetime, window_s: float = RANK_WINDOW_S) -> list[Any]:
    """The exporter's gauge: per (run, rank) of the runs logging every rank, the rank's median step time
    over the trailing window / the median of its run's ranks (`RunstreamRankStraggler` reads it)."""
    from prometheus_client.core import GaugeMetricFamily

    ratio = GaugeMetricFamily(
        "runstream_rank_step_time_ratio",
        f"A rank's median {STEP_TIME_METRIC} over the trailing {RANK_WINDOW_S} s / the median of its run's ranks "
        "(runs logged with log_all_ranks)", labels=["project", "run_id", "run_name", "rank", "node"])
    for row in recent_rank_skew(client, database, now=now, window_s=window_s):
        if row["ratio"] is not None and row["ranks"] > 1:
            ratio.add_metric([row["project"], row["run_id"], row["run_name"], str(row["rank"]), row["node"]],
                             float(row["ratio"]))
    return [ratio]
