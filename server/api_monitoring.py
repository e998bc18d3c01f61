"""The fleet routes of the HTTP API: GPU use per run (/api/gpu), GPU cost (/api/cost) and model drift
(/api/drift), from the monitor's own queries (runstream.monitoring cost, drift, gpu_hours): the web UI shows
the numbers `runstream cost` and `runstream drift` print and the Prometheus gauges carry.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from runstream.analysis import queries
from runstream.monitoring import cost as cost_queries
from runstream.monitoring import drift as drift_queries
from runstream.server.api_curves import MAX_BUCKETS
from runstream.server.api_tables import json_response, resolve
from runstream.server.state import Server

router = APIRouter()

Runs = Annotated[list[str], Query(alias="run", min_length=1, description="run id or unique name (repeatable)")]

# Each run's GPU samples cut into N buckets of its own time range (as curves are): the mean utilisation of its
# GPUs and the fullest GPU's memory per bucket. Only the checked database name is pasted in.
_GPU_SERIES = """
SELECT run_id, bucket, min(time) AS time, avg(utilization_pct) AS utilization_pct,
       max(memory_used_bytes) AS memory_used_bytes, max(memory_total_bytes) AS memory_total_bytes,
       avg(power_w) AS power_w, uniqExact(host, gpu_index) AS gpus, count() AS samples
FROM (
    SELECT run_id, time, host, gpu_index, utilization_pct, memory_used_bytes, memory_total_bytes, power_w,
           if(hi > lo, least(toUInt64({buckets:UInt32}) - 1, toUInt64(floor((us - lo) / (hi - lo) * {buckets:UInt32}))),
              0) AS bucket
    FROM (
        SELECT *, toUnixTimestamp64Micro(time) AS us,
               min(us) OVER (PARTITION BY run_id) AS lo, max(us) OVER (PARTITION BY run_id) AS hi
        FROM {db}.gpu_samples FINAL WHERE has({ids:Array(String)}, run_id)
    )
)
GROUP BY run_id, bucket
ORDER BY run_id, bucket
"""

_SERIES_COLUMNS = ("time", "utilization_pct", "memory_used_bytes", "memory_total_bytes", "power_w", "gpus", "samples")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@router.get("/api/gpu", summary="per run: GPU utilisation and memory over time (bucketed), GPU-hours and cost")
def gpu(server: Server, runs: Runs,
        buckets: Annotated[int, Query(ge=1, le=MAX_BUCKETS, description=f"buckets per run (1-{MAX_BUCKETS})")] = 500
        ) -> Response:
    resolved = resolve(server.client, server.database, runs)
    ids = [run_id for run_id, _ in resolved]
    series: dict[str, dict[str, list[Any]]] = {run_id: {c: [] for c in _SERIES_COLUMNS} for run_id in ids}
    for row in server.client.query(_GPU_SERIES.replace("{db}", server.database),
                                   parameters={"ids": ids, "buckets": buckets}).result_rows:
        for column, value in zip(_SERIES_COLUMNS, row[2:], strict=True):
            series[row[0]][column].append(value)
    hours = queries.gpu_hours(server.client, server.database, ids)
    priced_runs = cost_queries.cost_by(server.client, server.database, "run_id", start=_EPOCH,
                                       end=dt.datetime.now(dt.UTC))
    costs = {row["run_id"]: row for row in priced_runs if row["run_id"] in series}
    listed = []
    for run_id, name in resolved:
        priced = costs.get(run_id, {})
        listed.append({"run": run_id, "name": name, "gpu_hours": hours.get(run_id, 0.0),
                       "cost_usd": priced.get("cost_usd", 0.0), "idle_cost_usd": priced.get("idle_cost_usd", 0.0),
                       "idle_gpu_hours": priced.get("idle_gpu_hours", 0.0),
                       "unpriced_gpu_hours": priced.get("unpriced_gpu_hours", 0.0),
                       "energy_kwh": priced.get("energy_kwh", 0.0), "series": series[run_id]})
    return json_response({"runs": listed})


def _time(field: str, text: str | None, default: dt.datetime) -> dt.datetime:
    if not text:
        return default
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{field}: expected an ISO-8601 time such as 2026-01-31T00:00:00Z, got {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@router.get("/api/cost", summary="GPU-hours, idle time, energy and cost by run, project, user or day; budgets")
def cost(server: Server, project: str | None = None,
         since: Annotated[str | None, Query(description="ISO-8601 start (default: 30 days ago)")] = None,
         until: Annotated[str | None, Query(description="ISO-8601 end (default: now)")] = None,
         by: Annotated[str, Query(pattern="^(run_id|project|user|day)$", description="run_id, project, user or day")]
         = "project") -> Response:
    end = _time("until", until, dt.datetime.now(dt.UTC))
    start = _time("since", since, end - dt.timedelta(days=30))
    if start >= end:
        raise ValueError(f"since {since!r}: not before until {end.isoformat()}")
    if project and by not in ("run_id", "project"):
        raise ValueError(f"project {project!r}: cost by {by} cannot be narrowed to a project "
                         "(use by=run_id or by=project)")
    rows = cost_queries.cost_by(server.client, server.database, by, start=start, end=end)
    budgets = cost_queries.budget_status(server.client, server.database, now=end)
    if project:
        queries.check_project(server.client, server.database, project)
        if by == "project":
            rows = [row for row in rows if row["project"] == project]
        else:
            ids = {run_id for (run_id,) in server.client.query(
                f"SELECT run_id FROM {server.database}.runs FINAL WHERE project = {{project:String}}",  # noqa: S608
                parameters={"project": project}).result_rows}
            rows = [row for row in rows if row["run_id"] in ids]
        budgets = [row for row in budgets if row["project"] == project]
    return json_response({"by": by, "since": start, "until": end, "rows": rows, "budgets": budgets})


@router.get("/api/drift", summary="drift (PSI, KS) per model, version, feature and window; live performance")
def drift(server: Server, model: str | None = None, feature: str | None = None,
          hours: Annotated[float, Query(gt=0, le=24 * 366, description="over the last HOURS hours")] = 24.0,
          window: Annotated[int, Query(ge=0, le=366 * 86400, description="window seconds (0: one window)")] = 3600
          ) -> Response:
    end = dt.datetime.now(dt.UTC)
    start = end - dt.timedelta(hours=hours)
    scores = drift_queries.drift_scores(server.client, server.database, start=start, end=end, window_s=window)
    performance = drift_queries.performance(server.client, server.database, start=start, end=end, window_s=window)
    scores = [row for row in scores
              if (not model or row["model"] == model) and (not feature or row["feature"] == feature)]
    performance = [row for row in performance if not model or row["model"] == model]
    return json_response({"since": start, "until": end, "window_s": window, "scores": scores,
                          "performance": performance})
