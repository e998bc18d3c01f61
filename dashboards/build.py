"""Grafana dashboards as code (grafanalib): Runs, GPU fleet & cost, Drift (grafana-clickhouse-datasource)
and Pipeline (the consumer's Prometheus metrics). `runstream dashboards build --out DIR` writes them.

Every ClickHouse panel is a `Query` spec: its SQL (with the data source's macros and the dashboard's
variables) and the columns it must return; tests/test_dashboards.py expands both and runs each query
against chDB, so a panel whose query breaks fails the suite.
"""

# ruff: noqa: S608 - this module builds SQL from its own templates; database names are checked identifiers

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import attr
    import grafanalib  # type: ignore[import-untyped, unused-ignore]  # noqa: F401 - names the missing extra once
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError("building dashboards needs grafanalib: pip install 'runstream[dashboards]'") from error

from runstream.analysis.curves import bucketed_curve_sql
from runstream.analysis.group_curves import group_curve_sql
from runstream.analysis.histograms import heatmap_sql
from runstream.monitoring import cost, drift
from runstream.monitoring.finite_values import finite_max_sql, finite_min_sql
from runstream.monitoring.metric_direction import goal_sql
from runstream.monitoring.run_status import DEFAULT_STALL_AFTER_S, run_status_sql
from runstream.schemas.catalogue import BUILTIN_AXES

CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "${datasource}"}
PROMETHEUS = {"type": "prometheus", "uid": "${prometheus}"}
DB = "${database}"  # the dashboards' database variable (default: runstream)
TABLE, TIME_SERIES = 1, 0  # grafana-clickhouse-datasource result formats


@dataclass(frozen=True)
class Query:
    title: str
    sql: str
    columns: tuple[str, ...]
    panel: str = "timeseries"  # timeseries | table | heatmap | buckets (a heatmap of given buckets) | barchart | stat
    #                           | curves (a trend panel over x, one series per `series` value)
    unit: str = ""
    width: int = 12


@dataclass(frozen=True)
class Variable:
    name: str
    sql: str
    multi: bool = True


@dataclass(frozen=True)
class PromQuery:
    title: str
    expr: str
    legend: str
    unit: str = ""


@attr.s
class ClickHouseTarget:
    """A grafana-clickhouse-datasource SQL query (grafanalib has no target of its own for it)."""

    rawSql: str = attr.ib()  # noqa: N815 - Grafana's field name
    refId: str = attr.ib(default="A")  # noqa: N815
    format: int = attr.ib(default=TIME_SERIES)

    def to_json_data(self) -> dict[str, Any]:
        return {"refId": self.refId, "datasource": CLICKHOUSE, "rawSql": self.rawSql, "format": self.format,
                "queryType": "sql", "editorType": "sql", "editorMode": "code"}


def _in(column: str, variable: str) -> str:
    return f"{column} IN (${{{variable}:singlequote}})"


_RUNS_FILTER = f"SELECT run_id, run_name, project FROM {DB}.runs FINAL WHERE {_in('project', 'project')} " \
               f"AND {_in('run_id', 'run')}"
_STATUS = f"(SELECT run_id, status FROM {DB}.run_finishes FINAL)"
# The selected runs that are forks: their parent and the step they branch off at.
_FORKS = f"SELECT run_name, assumeNotNull(fork_from) AS parent, assumeNotNull(fork_step) AS at_step " \
         f"FROM {DB}.runs FINAL WHERE {_in('project', 'project')} AND {_in('run_id', 'run')} AND fork_from IS NOT NULL"

RUNS_VARIABLES = (
    Variable("project", f"SELECT DISTINCT project FROM {DB}.runs ORDER BY project"),
    Variable("run", f"SELECT run_name AS __text, run_id AS __value FROM {DB}.runs FINAL "
                    f"WHERE {_in('project', 'project')} ORDER BY started_at DESC LIMIT 200"),
    Variable("metric", f"SELECT DISTINCT metric FROM {DB}.metric_points WHERE {_in('run_id', 'run')} ORDER BY metric"),
    # the group-aggregate panel's group (init(group=...)) and metric: one of each
    Variable("group", f"SELECT DISTINCT run_group FROM {DB}.runs FINAL WHERE {_in('project', 'project')} "
                      "AND run_group != '' ORDER BY run_group", multi=False),
    Variable("group_metric", f"SELECT DISTINCT metric FROM {DB}.metric_points WHERE run_id IN (SELECT run_id FROM "
                             f"{DB}.runs FINAL WHERE {_in('run_group', 'group')}) ORDER BY metric", multi=False),
    # the x-axis of "Metric curves by x_axis" (runstream.analysis.curves): a built-in axis or any metric
    # logged by the selected runs (run.log(..., axes={"tokens": n})); and its buckets per curve
    Variable("x_axis", f"SELECT axis FROM (SELECT arrayJoin({list(BUILTIN_AXES)}) AS axis, "
                       f"indexOf({list(BUILTIN_AXES)}, axis) AS o UNION ALL SELECT DISTINCT metric, 9 "
                       f"FROM {DB}.metric_points WHERE {_in('run_id', 'run')}) ORDER BY o, axis", multi=False),
    Variable("curve_points", "SELECT arrayJoin([1000, 200, 500, 2000, 5000]) AS points", multi=False),
    # the histogram heatmap's metric (Run.log_histogram): one
    Variable("histogram", f"SELECT DISTINCT metric FROM {DB}.metric_histograms WHERE {_in('run_id', 'run')} "
                          "ORDER BY metric", multi=False),
)

RUNS = (
    # Per Grafana interval and series the min and max of the finite values (a one-step spike is the min or
    # max of its interval, so no zoom hides it), the last value and the count of NaN/±Inf points (marked,
    # not dropped: runstream.analysis.curves). With a marker series per selected fork: the parent's point
    # at the fork step, where the fork's curve branches off (`runstream lineage RUN` prints the tree).
    Query("Metric curves, overlaid", f"""
SELECT time, series, min, max, last, points, non_finite FROM (
SELECT $__timeInterval(p.time) AS time, concat(r.run_name, ' ', p.metric) AS series,
       {finite_min_sql('p.value')} AS min, {finite_max_sql('p.value')} AS max,
       argMax(p.value, (p.time, p.step)) AS last, count() AS points, countIf(NOT isFinite(p.value)) AS non_finite
FROM {DB}.metric_points AS p FINAL
INNER JOIN ({_RUNS_FILTER}) AS r ON p.run_id = r.run_id
WHERE $__timeFilter(p.time) AND {_in('p.metric', 'metric')}
GROUP BY time, series
UNION ALL
SELECT p.time AS time, concat(k.run_name, ' forks off at step ', toString(p.step), ' (', p.metric, ')') AS series,
       p.value AS min, p.value AS max, p.value AS last, toUInt64(1) AS points,
       toUInt64(NOT isFinite(p.value)) AS non_finite
FROM {DB}.metric_points AS p FINAL
INNER JOIN ({_FORKS}) AS k ON p.run_id = k.parent AND p.step = k.at_step
WHERE $__timeFilter(p.time) AND {_in('p.metric', 'metric')}
)
ORDER BY time""", ("time", "series", "min", "max", "last", "points", "non_finite"), "curves_time", width=24),
    # The same buckets as `runstream curve --points N --x AXIS` and Client.metric_history (one SQL:
    # runstream.analysis.curves `bucketed_curve_sql`), against the x_axis variable, curve_points buckets per curve.
    Query("Metric curves by x_axis: min, max, last per bucket", f"""
SELECT c.x AS x, concat(r.run_name, ' ', c.metric) AS series, c.min AS min, c.max AS max, c.last AS last,
       c.count AS points, c.nan_count + c.pos_inf_count + c.neg_inf_count AS non_finite
FROM ({bucketed_curve_sql(f'{DB}.metric_points', runs=f"run_id IN (SELECT run_id FROM ({_RUNS_FILTER}))",
                          metrics=_in('metric', 'metric'), buckets='${curve_points}', axis='${x_axis:singlequote}')}
) AS c
INNER JOIN ({_RUNS_FILTER}) AS r ON c.run_id = r.run_id
ORDER BY series, x""", ("x", "series", "min", "max", "last", "points", "non_finite"), "curves", width=24),
    # Ranked by the best finite value (the declared goal, else min for loss-like names, else max:
    # runstream.monitoring.metric_direction); final as logged, NaN/±Inf
    # included; runs without a finite value are left out (runstream.monitoring.finite_values).
    Query("Leaderboard", f"""
SELECT r.run_name AS run, p.metric AS metric, argMax(p.value, p.step) AS final,
       {finite_min_sql('p.value')} AS min_value, {finite_max_sql('p.value')} AS max_value,
       if({goal_sql(f'{DB}.metric_goals', 'p.metric')} = 'min', min_value, max_value) AS best,
       max(p.step) AS last_step, ifNull(any(f.status), 'running') AS status
FROM {DB}.metric_points AS p FINAL
INNER JOIN ({_RUNS_FILTER}) AS r ON p.run_id = r.run_id
LEFT JOIN {_STATUS} AS f ON p.run_id = f.run_id
WHERE {_in('p.metric', 'metric')}
GROUP BY run, metric
HAVING best IS NOT NULL
ORDER BY metric, if({goal_sql(f'{DB}.metric_goals', 'metric')} = 'min', best, -best), run
SETTINGS join_use_nulls = 1""", ("run", "metric", "final", "min_value", "max_value", "best", "last_step", "status"),
          "table"),
    Query("Params of the selected runs", f"""
SELECT r.run_name AS run, p.key AS param, p.value_string AS value
FROM {DB}.run_params AS p FINAL
INNER JOIN ({_RUNS_FILTER}) AS r ON p.run_id = r.run_id
ORDER BY param, run""", ("run", "param", "value"), "table"),
    # The honest status (runstream.monitoring.run_status: running, stalled, lost, ok, failed, killed) as of
    # the query, stalled after the default 15 min (the server-side setting is not Grafana's).
    Query("Run status over time", f"""
SELECT $__timeInterval(started_at) AS time, status, count() AS runs
FROM ({run_status_sql(DB, 'toUnixTimestamp64Micro(now64(6))', str(DEFAULT_STALL_AFTER_S))})
WHERE $__timeFilter(started_at) AND {_in('project', 'project')}
GROUP BY time, status
ORDER BY time""", ("time", "status", "runs"), "barchart"),
    # The same SQL as `runstream curve --group` (runstream.analysis.group_curves): finite values only
    # (its count per step: `runstream curve --group G`). A trend panel: the x axis is the step, not time.
    Query("Group aggregate: mean per step, min-max band", f"""
SELECT step, mean, min, max
FROM ({group_curve_sql(DB, group_condition=_in('run_group', 'group'), project_condition=_in('project', 'project'),
                       metric_condition=_in('metric', 'group_metric'))})
ORDER BY step""", ("step", "mean", "min", "max"), "trend", width=24),
    # The selected runs' histograms of one metric over time, re-binned onto common buckets
    # (runstream.analysis.histograms `heatmap_sql`; `runstream histograms RUN` lists them exactly).
    Query("Histogram over time", heatmap_sql(
        DB, where=f"{_in('run_id', 'run')} AND metric = '${{histogram}}' AND $__timeFilter(time)",
        time_bucket="$__timeInterval(time)"), ("time", "bucket", "count"), "buckets", width=24),
)


def _cost(bucket: str) -> str:
    return cost.cost_sql(DB, drift.GrafanaMacros(), bucket=bucket)


COST_VARIABLES = (Variable("project", f"SELECT DISTINCT project FROM {DB}.runs ORDER BY project"),)

COST = (
    Query("GPU utilisation by host / GPU", f"""
SELECT $__timeInterval(time) AS time, concat(host, '/', toString(gpu_index)) AS gpu,
       avg(utilization_pct) AS utilization_pct
FROM {DB}.gpu_samples FINAL
WHERE $__timeFilter(time)
GROUP BY time, gpu ORDER BY time""", ("time", "gpu", "utilization_pct"), "heatmap", "percent"),
    Query("GPU memory by host / GPU", f"""
SELECT $__timeInterval(time) AS time, concat(host, '/', toString(gpu_index)) AS gpu,
       max(memory_used_bytes) / max(memory_total_bytes) * 100 AS memory_used_pct
FROM {DB}.gpu_samples FINAL
WHERE $__timeFilter(time)
GROUP BY time, gpu ORDER BY time""", ("time", "gpu", "memory_used_pct"), "heatmap", "percent"),
    Query("GPU cost by project per day", f"""
SELECT toDateTime(bucket) AS time, project, sum(cost_usd) AS cost_usd
FROM ({_cost('toDate(time)')})
WHERE {_in('project', 'project')}
GROUP BY time, project ORDER BY time""", ("time", "project", "cost_usd"), "barchart", "currencyUSD"),
    Query("GPU-hours, cost and idle cost by project", f"""
SELECT project, sum(gpu_seconds) / 3600 AS gpu_hours, sum(cost_usd) AS cost_usd,
       sum(idle_seconds) / 3600 AS idle_gpu_hours, sum(idle_cost_usd) AS idle_cost_usd, sum(energy_kwh) AS energy_kwh
FROM ({_cost('toDate(time)')})
WHERE {_in('project', 'project')}
GROUP BY project ORDER BY cost_usd DESC""",
          ("project", "gpu_hours", "cost_usd", "idle_gpu_hours", "idle_cost_usd", "energy_kwh"), "table"),
    Query("Cost by user", f"""
SELECT user, sum(gpu_seconds) / 3600 AS gpu_hours, sum(cost_usd) AS cost_usd, sum(idle_cost_usd) AS idle_cost_usd
FROM ({_cost('toDate(time)')})
WHERE {_in('project', 'project')}
GROUP BY user ORDER BY cost_usd DESC""", ("user", "gpu_hours", "cost_usd", "idle_cost_usd"), "table"),
    Query("Most expensive runs", f"""
SELECT r.run_name AS run, c.project AS project, sum(c.gpu_seconds) / 3600 AS gpu_hours, sum(c.cost_usd) AS cost_usd,
       sum(c.idle_cost_usd) AS idle_cost_usd, any(c.usd_per_gpu_hour) AS usd_per_gpu_hour
FROM ({_cost('toDate(time)')}) AS c
LEFT JOIN (SELECT run_id, run_name FROM {DB}.runs FINAL) AS r ON c.run_id = r.run_id
WHERE {_in('c.project', 'project')}
GROUP BY run, project ORDER BY cost_usd DESC LIMIT 20""",
          ("run", "project", "gpu_hours", "cost_usd", "idle_cost_usd", "usd_per_gpu_hour"), "table"),
    Query("Idle GPU-hours (utilisation below the threshold)", f"""
SELECT $__timeInterval(time) AS time, project, sum(idle_seconds) / 3600 AS idle_gpu_hours
FROM ({_cost('$__timeInterval(time)')})
WHERE {_in('project', 'project')}
GROUP BY time, project ORDER BY time""".replace("$__timeInterval(time) AS time,", "bucket AS time,", 1),
          ("time", "project", "idle_gpu_hours"), "barchart"),
    Query("Energy (kWh) per day", f"""
SELECT toDateTime(bucket) AS time, sum(energy_kwh) AS energy_kwh
FROM ({_cost('toDate(time)')})
GROUP BY time ORDER BY time""", ("time", "energy_kwh"), "barchart", "kwatth"),
)

_MODEL = "f.model = '${model}' AND f.version IN (${version:singlequote})"

DRIFT_VARIABLES = (
    Variable("model", f"SELECT DISTINCT model FROM {DB}.drift_references ORDER BY model", multi=False),
    Variable("version", f"SELECT DISTINCT version FROM {DB}.drift_references WHERE model = '${{model}}' "
                        "ORDER BY version"),
    Variable("feature", f"SELECT DISTINCT feature FROM {DB}.drift_references WHERE model = '${{model}}' "
                        "ORDER BY feature"),
)

DRIFT = (
    Query(f"PSI per feature (alert above {drift.PSI_ALERT_THRESHOLD})", f"""
SELECT window_start AS time, concat(feature, ' v', version) AS series, psi
FROM ({drift.psi_sql(DB, drift.GrafanaMacros(), _MODEL)})
WHERE {_in('feature', 'feature')}
ORDER BY time""", ("time", "series", "psi"), width=24),
    Query("Kolmogorov-Smirnov distance per numeric feature", f"""
SELECT window_start AS time, concat(feature, ' v', version) AS series, ks
FROM ({drift.ks_sql(DB, drift.GrafanaMacros(), _MODEL)})
WHERE {_in('feature', 'feature')}
ORDER BY time""", ("time", "series", "ks")),
    Query("Prediction distribution vs reference", f"""
SELECT bin, reference_share, live_share
FROM ({drift.distribution_sql(DB, drift.GrafanaMacros(), _MODEL, 'prediction')})""",
          ("bin", "reference_share", "live_share"), "barchart", "percentunit"),
    Query("Live accuracy vs training baseline", f"""
SELECT window_start AS time, value AS live, baseline
FROM ({drift.performance_sql(DB, drift.GrafanaMacros(), _MODEL)})
WHERE metric = 'accuracy'
ORDER BY time""", ("time", "live", "baseline"), unit="percentunit"),
)

PIPELINE = (
    PromQuery("Events stored per second", "sum by (event_type) (rate(runstream_consumer_events_total[5m]))",
              "{{event_type}}", "ops"),
    PromQuery("Metric points per second", "sum(rate(runstream_consumer_metric_points_total[5m]))", "points/s", "ops"),
    PromQuery("Consumer lag (messages)", "sum by (topic) (runstream_consumer_lag)", "{{topic}}"),
    PromQuery("Dead letters (per 5 minutes)", "sum by (reason) (increase(runstream_consumer_dead_letters_total[5m]))",
              "{{reason}}"),
    PromQuery("Insert latency p99", "histogram_quantile(0.99, sum by (le) "
              "(rate(runstream_consumer_insert_seconds_bucket[5m])))", "p99", "s"),
    PromQuery("Seconds since the last commit", "time() - runstream_consumer_last_commit_timestamp_seconds",
              "{{instance}}", "s"),
)

DASHBOARDS: dict[str, tuple[str, tuple[Variable, ...], tuple[Query, ...]]] = {
    "runstream-runs": ("runstream · Runs", RUNS_VARIABLES, RUNS),
    "runstream-gpu-cost": ("runstream · GPU fleet & cost", COST_VARIABLES, COST),
    "runstream-drift": ("runstream · Drift", DRIFT_VARIABLES, DRIFT),
}


def _panel(query: Query, x: int, y: int) -> Any:
    from grafanalib import core  # type: ignore[import-untyped, unused-ignore]

    tabular = query.panel in ("table", "barchart", "trend", "curves")  # a trend panel's x is a number, not time
    target = ClickHouseTarget(query.sql.strip(), format=TABLE if tabular else TIME_SERIES)
    grid = core.GridPos(h=8, w=query.width, x=x, y=y)
    common: dict[str, Any] = {"title": query.title, "dataSource": CLICKHOUSE, "targets": [target], "gridPos": grid}
    if query.panel == "table":
        return core.Table(**common, unit=query.unit or "short")
    if query.panel == "heatmap":
        return core.Heatmap(**common)
    if query.panel == "buckets":  # one series per bucket, named by its bound: drawn as they are, not re-bucketed
        return core.Heatmap(**common, dataFormat="tsbuckets", hideZeroBuckets=True)
    if query.panel == "barchart":
        return core.BarChart(**common) if hasattr(core, "BarChart") else core.TimeSeries(**common, drawStyle="bars")
    if query.panel == "trend":
        return _trend(common, query.columns, query.unit)
    if query.panel in ("curves", "curves_time"):
        return _curves(common, query.panel == "curves", query.unit)
    return core.TimeSeries(**common, unit=query.unit or "short")


def _trend(common: dict[str, Any], columns: tuple[str, ...], unit: str) -> Any:
    """A Grafana trend panel (x: the first column, a number such as the step) of (x, mean, min, max):
    the mean as a line, min and max as the edges of a filled band."""
    from grafanalib import core  # type: ignore[import-untyped, unused-ignore]

    def field(name: str, *properties: tuple[str, Any]) -> dict[str, Any]:
        return {"matcher": {"id": "byName", "options": name},
                "properties": [{"id": key, "value": value} for key, value in properties]}

    x, mean, low, high = columns
    overrides = [field(high, ("custom.fillBelowTo", low), ("custom.fillOpacity", 20), ("custom.lineWidth", 0)),
                 field(low, ("custom.lineWidth", 0)), field(mean, ("custom.lineWidth", 2))]

    class Trend(core.TimeSeries):  # type: ignore[misc]  # grafanalib has no trend panel; its attrs fields inherited
        def to_json_data(self) -> dict[str, Any]:
            data: dict[str, Any] = super().to_json_data()
            data["type"] = "trend"
            data["options"]["xField"] = x
            return data

    return Trend(**common, unit=unit or "short", overrides=overrides)


def _curves(common: dict[str, Any], by_x: bool, unit: str) -> Any:
    """Curves as buckets (x or time, series, min, max, last, points, non_finite): last as the line, min and
    max as thin lines around it, the non-finite count as points on a right axis, the bucket's point count in
    the tooltip only. By x: a trend panel (x is a
    number), the long rows split into one frame per series (Grafana's partitionByValues)."""
    from grafanalib import core  # type: ignore[import-untyped, unused-ignore]

    def fields(pattern: str, *properties: tuple[str, Any]) -> dict[str, Any]:
        return {"matcher": {"id": "byRegexp", "options": pattern},
                "properties": [{"id": key, "value": value} for key, value in properties]}

    overrides = [fields("^(min|max).*", ("custom.lineWidth", 1), ("custom.fillOpacity", 10)),
                 fields("^last.*", ("custom.lineWidth", 2)),
                 fields("^non_finite.*", ("custom.drawStyle", "points"), ("custom.axisPlacement", "right"),
                        ("custom.pointSize", 6), ("unit", "none")),
                 fields("^points.*", ("custom.hideFrom", {"viz": True, "legend": True, "tooltip": False}))]
    transformations = [{"id": "partitionByValues", "options": {"fields": ["series"]}}] if by_x else []

    class Curves(core.TimeSeries):  # type: ignore[misc]  # grafanalib has no trend panel; its attrs fields inherited
        def to_json_data(self) -> dict[str, Any]:
            data: dict[str, Any] = super().to_json_data()
            if by_x:
                data["type"] = "trend"
                data["options"]["xField"] = "x"
            return data

    return Curves(**common, unit=unit or "short", overrides=overrides, transformations=transformations)


def _template(variable: Variable) -> Any:
    from grafanalib import core  # type: ignore[import-untyped, unused-ignore]

    return core.Template(name=variable.name, query=variable.sql, dataSource=CLICKHOUSE, type="query",
                         includeAll=variable.multi, multi=variable.multi, refresh=2,
                         default="$__all" if variable.multi else None)


def _base_templates() -> list[Any]:
    from grafanalib import core  # type: ignore[import-untyped, unused-ignore]

    return [
        core.Template(name="datasource", query="grafana-clickhouse-datasource", type="datasource",
                      label="ClickHouse", default="runstream-clickhouse"),
        core.Template(name="database", query="runstream", type="constant", default="runstream", hide=2),
    ]


def _layout(queries: tuple[Any, ...], make: Any) -> list[Any]:
    panels, x, y = [], 0, 0
    for query in queries:
        width = getattr(query, "width", 12)
        if x + width > 24:
            x, y = 0, y + 8
        panels.append(make(query, x, y))
        x += width
    return panels


def dashboards() -> dict[str, Any]:
    """uid -> grafanalib Dashboard."""
    from grafanalib import core  # type: ignore[import-untyped, unused-ignore]

    built = {}
    for uid, (title, variables, queries) in DASHBOARDS.items():
        built[uid] = core.Dashboard(
            title=title, uid=uid, tags=["runstream"], timezone="utc", refresh="1m",
            time=core.Time("now-24h", "now"),
            templating=core.Templating(_base_templates() + [_template(v) for v in variables]),
            panels=_layout(queries, _panel),
        ).auto_panel_ids()

    def prom_panel(query: PromQuery, x: int, y: int) -> Any:
        return core.TimeSeries(title=query.title, dataSource=PROMETHEUS, unit=query.unit or "short",
                               targets=[core.Target(expr=query.expr, legendFormat=query.legend, refId="A",
                                                    datasource=PROMETHEUS)],
                               gridPos=core.GridPos(h=8, w=12, x=x, y=y))

    built["runstream-pipeline"] = core.Dashboard(
        title="runstream · Pipeline", uid="runstream-pipeline", tags=["runstream"], timezone="utc", refresh="30s",
        time=core.Time("now-6h", "now"),
        templating=core.Templating([core.Template(name="prometheus", query="prometheus", type="datasource",
                                                  label="Prometheus", default="prometheus")]),
        panels=_layout(PIPELINE, prom_panel),
    ).auto_panel_ids()
    return built


def to_json(obj: Any) -> dict[str, Any]:
    from grafanalib._gen import DashboardEncoder  # type: ignore[import-untyped, unused-ignore]

    data: dict[str, Any] = json.loads(json.dumps(obj.to_json_data(), cls=DashboardEncoder))
    return data


def build(out: Path, *, prometheus_rules: bool = True) -> list[Path]:
    """Write every dashboard as `<uid>.json`, and the Grafana and Prometheus alert rules, under `out`."""
    from runstream.dashboards import alerts

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for uid, dashboard in dashboards().items():
        path = out / f"{uid}.json"
        path.write_text(json.dumps(to_json(dashboard), indent=2, sort_keys=True) + "\n")
        written.append(path)
    group = to_json(alerts.grafana_alert_group())
    rules = out / "grafana-alert-rules.json"
    rules.write_text(json.dumps({"apiVersion": 1, "groups": [{"orgId": 1, **group}]}, indent=2) + "\n")
    written.append(rules)
    if prometheus_rules:
        path = out / "runstream-alerts.yml"
        path.write_text(alerts.render_prometheus_rules())
        written.append(path)
    return written
