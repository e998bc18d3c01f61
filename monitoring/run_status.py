"""The run status everyone sees, defined once: running, stalled, lost, ok, failed, killed.

`run_summary.status` knows only what was logged: a run that ended says so (ok, failed, killed), any
other says `running`, even when its process died unseen (SIGKILL, the OOM killer, a node gone) or
hangs in a collective. The SDK's heartbeats (producer/heartbeat.py, stored as the last heartbeat per
run in `run_heartbeats`) tell those apart, and since the answer depends on the time of asking it is
computed at read time, here, by every reader: the run list and filter (`runstream runs`,
analysis/queries.py), the Client, the monitor's gauges and the cost report.

For the latest attempt of the run (`run_summary.attempt`; a resumed run's earlier attempt's end or
heartbeats do not count):

- its `run_finished` is stored: that status (ok, failed, killed; `run_summary.status`, which counts
  the latest attempt's end only);
- else its last heartbeat is older than `LOST_AFTER_INTERVALS` heartbeat intervals: `lost`;
- else its step has not advanced for `stall_after_s` (since the attempt started when it logged no
  step yet): `stalled`;
- else (heartbeats arrive, or none were ever sent: heartbeats off, an SDK without them): `running`.

Times compare the heartbeat's own time (the training host's clock) with `now` (the reader's), in
µs since the epoch: a clock skew of a few seconds is far below any interval. `now` and `stall_after_s`
are query parameters, so tests inject the time instead of sleeping for it.
"""

# ruff: noqa: S608 - SQL from this module's own text; the database name is a checked identifier

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from runstream.consumer.run_summary import RUN_SUMMARY
from runstream.schemas.catalogue import RUN_END_STATUSES

#: The statuses a reader shows; the first three for a run whose latest attempt has not ended, the others
#: are the ends a run_finished event records.
STATUSES = ("running", "stalled", "lost", *RUN_END_STATUSES)
#: A run is lost when no heartbeat arrived for this many of its own intervals.
LOST_AFTER_INTERVALS = 3
#: The default of the server-side setting `[monitor] stall_after_s` (monitoring/settings.py), for readers
#: without settings (the Grafana dashboards).
DEFAULT_STALL_AFTER_S = 15 * 60.0

#: The parameters `run_status_sql` reads by default (see `status_parameters`).
NOW_PARAMETER = "{status_now_us:Int64}"
STALL_PARAMETER = "{status_stall_after_s:Float64}"


def status_parameters(now: dt.datetime | None = None, stall_after_s: float | None = None) -> dict[str, Any]:
    """The query parameters of NOW_PARAMETER and STALL_PARAMETER: `now` defaults to the current time,
    `stall_after_s` to the server-side setting (`[monitor] stall_after_s`, RUNSTREAM_STALL_AFTER)."""
    if stall_after_s is None:
        from runstream.monitoring.settings import ExporterSettings

        stall_after_s = ExporterSettings.load({}).stall_after_s
    stall = stall_after_s
    if isinstance(stall, bool) or not isinstance(stall, int | float) or not 0 < stall < math.inf:
        raise ValueError(f"stall_after_s: expected a positive number of seconds, got {stall!r}")
    when = now or dt.datetime.now(dt.UTC)
    if when.tzinfo is None:
        raise ValueError(f"now: expected a timezone-aware datetime, got the naive {when.isoformat()}")
    return {"status_now_us": int(when.timestamp() * 1_000_000), "status_stall_after_s": float(stall)}


def _us(column: str) -> str:
    return f"toUnixTimestamp64Micro({column})"


def status_expression(now_us_sql: str = NOW_PARAMETER, stall_after_s_sql: str = STALL_PARAMETER) -> str:
    """The status of a row of `run_summary` (alias s) joined with its last heartbeat (h) as `run_status_sql`
    joins them; `now_us_sql` is µs since the epoch (Int64), `stall_after_s_sql` seconds. The summary's own
    status is already the latest attempt's end (`running` until that attempt finishes: consumer/run_summary.py)."""
    return f"""multiIf(
        s.status != 'running', toString(s.status),
        ifNull(h.beating, 0) = 0 OR h.attempt < s.attempt, 'running',
        ({now_us_sql} - {_us('h.time')}) > {LOST_AFTER_INTERVALS} * h.interval_s * 1e6, 'lost',
        ({now_us_sql} - {_us('ifNull(h.last_step_at, s.started_at)')}) > {stall_after_s_sql} * 1e6, 'stalled',
        'running')"""


def run_status_sql(db: str, now_us_sql: str = NOW_PARAMETER, stall_after_s_sql: str = STALL_PARAMETER,
                   where: str = "1", heartbeat_where: str = "1") -> str:
    """Every column of `run_summary FINAL` (rows matching `where`), `status` replaced by the honest one,
    plus the heartbeat's view of the run: last_heartbeat_at, heartbeat_interval_s, step_advanced_at,
    steps_per_s (NULL without a heartbeat of the latest attempt) and stalled_s (seconds since the step
    last advanced; NULL unless the status is stalled). A drop-in for `{db}.run_summary FINAL` in a FROM.

    Cost, measured in chDB at 100,000 runs each with a heartbeat: the run list of one project takes
    ~20 ms instead of ~5 ms (the heartbeats' hash join); restricting the join to open runs with an
    `IN (SELECT ... run_summary FINAL)` measured slower (~28 ms), for a second scan of the summary."""
    beating = "(ifNull(h.beating, 0) = 1 AND h.attempt >= s.attempt)"
    status = status_expression(now_us_sql, stall_after_s_sql)
    # Named one by one: `s.*` next to joined tables with the same names would come out qualified.
    columns = ", ".join(f"{status} AS status" if name == "status" else f"s.{name} AS {name}"
                        for name in RUN_SUMMARY.column_names)
    return f"""
SELECT {columns},
       if({beating}, h.time, NULL) AS last_heartbeat_at,
       if({beating}, h.interval_s, NULL) AS heartbeat_interval_s,
       if({beating}, ifNull(h.last_step_at, s.started_at), NULL) AS step_advanced_at,
       if({beating}, h.steps_per_s, NULL) AS steps_per_s,
       if({status} = 'stalled', ({now_us_sql} - {_us('ifNull(h.last_step_at, s.started_at)')}) / 1e6, NULL)
           AS stalled_s
FROM (SELECT * FROM {db}.run_summary FINAL WHERE {where}) AS s
LEFT JOIN (
    SELECT run_id, attempt, time, interval_s, last_step_at, steps_per_s, toUInt8(1) AS beating
    FROM {db}.run_heartbeats FINAL
    WHERE {heartbeat_where}
) AS h ON h.run_id = s.run_id"""


def run_statuses(client: Any, db: str, *, now: dt.datetime | None = None, stall_after_s: float | None = None,
                 project: str | None = None) -> list[dict[str, Any]]:
    """One dict per run (of `project`): run_id, run_name, project, status, attempt, last_heartbeat_at,
    step_advanced_at, steps_per_s, stalled_s, archived; ordered by project, started_at, run_id."""
    parameters = {**status_parameters(now, stall_after_s), "project": project or ""}
    where = "({project:String} = '' OR project = {project:String})"
    result = client.query(f"""
SELECT run_id, run_name, project, status, attempt, last_heartbeat_at, step_advanced_at, steps_per_s, stalled_s,
       archived
FROM ({run_status_sql(db, where=where)})
ORDER BY project, started_at, run_id""", parameters=parameters)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def honest_statuses(client: Any, db: str, run_ids: list[str], *, now: dt.datetime | None = None,
                    stall_after_s: float | None = None) -> dict[str, str]:
    """The status of those of `run_ids` that sent a heartbeat, as `run_status_sql` decides it: for readers
    that list, rank or compare runs from `run_summary` (whose status says `running` for a lost or stalled
    run) and need the honest one only for its running runs. A run without a heartbeat is left out: its
    summary status stands, as in `status_expression`. The join costs ~10 ms even for a few runs (chDB,
    measured), so it runs only when some of the runs have a heartbeat (a keyed lookup, ~1 ms)."""
    if not run_ids:
        return {}
    beating = client.query(f"SELECT DISTINCT run_id FROM {db}.run_heartbeats WHERE has({{ids:Array(String)}}, run_id)",
                           parameters={"ids": sorted(set(run_ids))}).result_rows
    run_ids = [run_id for (run_id,) in beating]
    if not run_ids:
        return {}
    # Only the columns the status reads, on both sides of the join: 2-3x cheaper than run_status_sql's rows.
    among = "has({ids:Array(String)}, run_id)"
    sql = f"""
SELECT s.run_id, {status_expression()} AS status
FROM (SELECT run_id, status, attempt, started_at FROM {db}.run_summary FINAL WHERE {among}) AS s
LEFT JOIN (
    SELECT run_id, attempt, time, interval_s, last_step_at, toUInt8(1) AS beating
    FROM {db}.run_heartbeats FINAL WHERE {among}
) AS h ON h.run_id = s.run_id"""
    result = client.query(sql, parameters={**status_parameters(now, stall_after_s), "ids": sorted(set(run_ids))})
    return {str(run_id): str(status) for run_id, status in result.result_rows}


def attempt_gpus(client: Any, db: str, run_ids: list[str]) -> dict[str, int]:
    """GPUs (distinct host and GPU index) each run's latest attempt sampled: the GPUs a lost run held."""
    if not run_ids:
        return {}
    result = client.query(f"""
SELECT g.run_id, uniqExact(g.host, g.gpu_index)
FROM (SELECT run_id, host, gpu_index, time FROM {db}.gpu_samples FINAL WHERE has({{ids:Array(String)}}, run_id)) AS g
INNER JOIN (SELECT run_id, started_at FROM {db}.run_summary FINAL WHERE has({{ids:Array(String)}}, run_id)) AS r
    ON r.run_id = g.run_id
WHERE g.time >= r.started_at
GROUP BY g.run_id""", parameters={"ids": sorted(set(run_ids))})
    return {run_id: int(count) for run_id, count in result.result_rows}
