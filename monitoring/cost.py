"""GPU cost in ClickHouse SQL: a price table from YAML, cost and idle cost per run/project/user/day,
energy from power samples, and per-project budgets with burn rate and projected month-end spend.

Each GPU sample stands for the time since the previous sample of the same GPU in the same run,
by the one definition of GPU-hours (`runstream.monitoring.gpu_hours`: gaps longer than `MAX_GAP_S`
count as not held), so a run's GPU-seconds are those of the comparison table and `gpu_usage_by_run`.
A sample whose utilisation is below the price table's `idle_utilization_pct` is idle time: paid
for, not used. Energy is power x time.

A run's price is the most specific row of the latest price table for its GPU model (or `*`), its
cluster and its pricing tier (the run's tags `cluster` and `pricing_tier`; an empty cluster or tier
in the table matches any).

The price file (YAML):

    idle_utilization_pct: 10          # optional, default 10
    prices:
      - {gpu_model: "NVIDIA H100 80GB HBM3", usd_per_gpu_hour: 2.49}
      - {gpu_model: "NVIDIA H100 80GB HBM3", cluster: eu-1, tier: spot, usd_per_gpu_hour: 1.10}
      - {gpu_model: "*", usd_per_gpu_hour: 1.00}   # anything not listed
    budgets:
      - {project: vision, usd_per_month: 5000}
"""

# ruff: noqa: S608 - this module builds SQL from its own templates; database names are checked identifiers

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runstream.monitoring.drift import Literal, TimeRange
from runstream.monitoring.gpu_hours import SAMPLE_WINDOW_SQL, sample_held_seconds_sql
from runstream.monitoring.run_status import run_status_sql, status_parameters

DEFAULT_IDLE_UTILIZATION_PCT = 10.0


@dataclass(frozen=True)
class Price:
    gpu_model: str
    usd_per_gpu_hour: float
    cluster: str = ""
    tier: str = ""


@dataclass(frozen=True)
class PriceTable:
    prices: tuple[Price, ...]
    budgets: dict[str, float]
    idle_utilization_pct: float = DEFAULT_IDLE_UTILIZATION_PCT


def parse_price_table(data: Any, source: str = "price table") -> PriceTable:
    """Check the YAML's structure, naming the entry and the key of anything wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping with 'prices' (and optionally 'budgets'), got {data!r}")
    unknown = sorted(set(data) - {"prices", "budgets", "idle_utilization_pct", "currency"})
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}")
    if data.get("currency", "USD") != "USD":
        raise ValueError(f"{source}: currency: only USD is supported, got {data['currency']!r}")
    prices = []
    for i, entry in enumerate(data.get("prices") or []):
        where = f"{source}: prices[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping, got {entry!r}")
        bad = sorted(set(entry) - {"gpu_model", "usd_per_gpu_hour", "cluster", "tier"})
        if bad:
            raise ValueError(f"{where}: unknown key(s) {', '.join(bad)}")
        model, price = entry.get("gpu_model"), entry.get("usd_per_gpu_hour")
        if not isinstance(model, str) or not model:
            raise ValueError(f"{where}: gpu_model: expected a non-empty string, got {model!r}")
        if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
            raise ValueError(f"{where}: usd_per_gpu_hour: expected a number >= 0, got {price!r}")
        prices.append(Price(model, float(price), str(entry.get("cluster") or ""), str(entry.get("tier") or "")))
    keys = [(p.gpu_model, p.cluster, p.tier) for p in prices]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"{source}: prices listed twice for (gpu_model, cluster, tier) {duplicates[0]}")
    budgets: dict[str, float] = {}
    for i, entry in enumerate(data.get("budgets") or []):
        where = f"{source}: budgets[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"project", "usd_per_month"}:
            raise ValueError(f"{where}: expected {{project, usd_per_month}}, got {entry!r}")
        amount = entry["usd_per_month"]
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount <= 0:
            raise ValueError(f"{where}: usd_per_month: expected a positive number, got {amount!r}")
        budgets[str(entry["project"])] = float(amount)
    idle = data.get("idle_utilization_pct", DEFAULT_IDLE_UTILIZATION_PCT)
    if isinstance(idle, bool) or not isinstance(idle, int | float) or not 0 <= idle <= 100:
        raise ValueError(f"{source}: idle_utilization_pct: expected a percentage 0-100, got {idle!r}")
    return PriceTable(tuple(prices), budgets, float(idle))


def load_price_file(path: Path) -> PriceTable:
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]
    except ImportError as error:  # pragma: no cover - PyYAML ships with the [dashboards] extra
        raise ImportError("reading price tables needs PyYAML: pip install 'runstream[dashboards]'") from error
    with open(path, encoding="utf-8") as handle:
        return parse_price_table(yaml.safe_load(handle), str(path))


def store_price_table(client: Any, db: str, table: PriceTable, *, now: dt.datetime | None = None) -> None:
    """Insert the table as the latest load (`current_gpu_prices` / `current_budgets` show only it)."""
    loaded_at = now or dt.datetime.now(dt.UTC)
    rows = [[loaded_at, p.gpu_model, p.cluster, p.tier, p.usd_per_gpu_hour, table.idle_utilization_pct]
            for p in table.prices]
    if not rows:  # an empty load still records the idle threshold and replaces the previous prices
        rows = [[loaded_at, "", "", "", 0.0, table.idle_utilization_pct]]
    client.insert(f"{db}.gpu_prices", rows, column_names=[
        "loaded_at", "gpu_model", "cluster", "tier", "usd_per_gpu_hour", "idle_utilization_pct"])
    budgets = [[loaded_at, project, amount] for project, amount in table.budgets.items()] or [[loaded_at, "", 0.0]]
    client.insert(f"{db}.project_budgets", budgets, column_names=["loaded_at", "project", "usd_per_month"])


def cost_sql(db: str, time_range: TimeRange, bucket: str | None = None) -> str:
    """One row per (run, GPU model, bucket): run_id, project, user, gpu_model, bucket, gpu_seconds, idle_seconds,
    energy_kwh, usd_per_gpu_hour (NULL when unpriced), cost_usd, idle_cost_usd.

    `bucket` is an SQL expression of `time` (default: the time range's own bucket)."""
    bucket_sql = bucket or time_range.bucket("time")
    matches = ("(p.price_model = u.gpu_model OR p.price_model = '*') AND p.price_cluster IN ('', u.cluster) "
               "AND p.price_tier IN ('', u.tier) AND p.price_model != ''")
    return f"""
SELECT u.run_id AS run_id, any(u.project) AS project, any(u.user) AS user, u.gpu_model AS gpu_model,
       u.bucket AS bucket, any(u.gpu_seconds) AS gpu_seconds, any(u.idle_seconds) AS idle_seconds,
       any(u.energy_kwh) AS energy_kwh,
       if(countIf({matches}) > 0, argMaxIf(p.price, p.specificity, {matches}), NULL) AS usd_per_gpu_hour,
       gpu_seconds / 3600 * ifNull(usd_per_gpu_hour, 0) AS cost_usd,
       idle_seconds / 3600 * ifNull(usd_per_gpu_hour, 0) AS idle_cost_usd
FROM (
    SELECT i.run_id AS run_id, ifNull(r.project, '') AS project, ifNull(r.user, '') AS user,
           r.cluster AS cluster, r.tier AS tier, i.gpu_model AS gpu_model, i.bucket AS bucket,
           sum(i.dt_s) AS gpu_seconds, sumIf(i.dt_s, i.utilization_pct < {_idle_threshold(db)}) AS idle_seconds,
           sum(i.dt_s * ifNull(i.power_w, 0)) / 3.6e6 AS energy_kwh
    FROM (
        SELECT run_id, gpu_model, utilization_pct, power_w, {bucket_sql} AS bucket,
               {sample_held_seconds_sql("w")} AS dt_s
        FROM {db}.gpu_samples FINAL
        WHERE {time_range.filter('time')}
        WINDOW w AS ({SAMPLE_WINDOW_SQL})
    ) AS i
    LEFT JOIN (SELECT run_id, project, user, tags['cluster'] AS cluster, tags['pricing_tier'] AS tier
               FROM {db}.runs FINAL) AS r ON i.run_id = r.run_id
    GROUP BY run_id, project, user, cluster, tier, gpu_model, bucket
) AS u
CROSS JOIN (
    SELECT gpu_model AS price_model, cluster AS price_cluster, tier AS price_tier, usd_per_gpu_hour AS price,
           (gpu_model != '*', cluster != '', tier != '') AS specificity
    FROM {db}.current_gpu_prices
    UNION ALL SELECT '', '', '', 0, (false, false, false)
) AS p
GROUP BY run_id, gpu_model, bucket
"""


def _idle_threshold(db: str) -> str:
    return (f"(SELECT ifNull(any(idle_utilization_pct), {DEFAULT_IDLE_UTILIZATION_PCT}) "
            f"FROM {db}.current_gpu_prices)")


def _rows(client: Any, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=parameters or {})
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _us(when: dt.datetime) -> int:
    return int(when.timestamp() * 1_000_000)


def cost_by(client: Any, db: str, key: str, *, start: dt.datetime, end: dt.datetime,
            stall_after_s: float | None = None) -> list[dict[str, Any]]:
    """Cost per `key` ('run_id', 'project', 'user' or 'day'): gpu_hours, idle_gpu_hours, energy_kwh,
    cost_usd, idle_cost_usd, unpriced_gpu_hours, and the part of gpu_hours spent by runs that are, at
    `end`, stalled or lost (runstream.monitoring.run_status: their GPUs were paid for while the run made
    no progress, or until it died unseen): stalled_gpu_hours, lost_gpu_hours. By run_id, each run's
    status too."""
    if key not in ("run_id", "project", "user", "day"):
        raise ValueError(f"cost by {key!r}: expected run_id, project, user or day")
    inner = cost_sql(db, Literal(_us(start), _us(end)), bucket="toDate(time)")
    group = "bucket" if key == "day" else key
    status = ", any(ifNull(st.status, '')) AS status" if key == "run_id" else ""
    return _rows(client, f"""
SELECT c.{group} AS {key}, sum(gpu_seconds) / 3600 AS gpu_hours, sum(idle_seconds) / 3600 AS idle_gpu_hours,
       sum(energy_kwh) AS energy_kwh, sum(cost_usd) AS cost_usd, sum(idle_cost_usd) AS idle_cost_usd,
       sumIf(gpu_seconds, usd_per_gpu_hour IS NULL) / 3600 AS unpriced_gpu_hours,
       sumIf(gpu_seconds, st.status = 'stalled') / 3600 AS stalled_gpu_hours,
       sumIf(gpu_seconds, st.status = 'lost') / 3600 AS lost_gpu_hours{status}
FROM ({inner}) AS c
LEFT JOIN (SELECT run_id, status FROM ({run_status_sql(db)})) AS st ON st.run_id = c.run_id
GROUP BY {key} ORDER BY {key}""", status_parameters(end, stall_after_s))


def budget_status(client: Any, db: str, *, now: dt.datetime | None = None,
                  burn_window: dt.timedelta = dt.timedelta(hours=24),
                  idle_window: dt.timedelta = dt.timedelta(hours=1)) -> list[dict[str, Any]]:
    """Per project with spend or a budget: month_to_date_usd, burn_rate_usd_per_hour (spend over the
    trailing `burn_window`), projected_month_end_usd (month to date + burn rate x hours left),
    budget_usd (NULL when none), budget_usage_ratio (projected / budget), idle_cost_usd_per_hour
    (over the trailing `idle_window`)."""
    now = now or dt.datetime.now(dt.UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(now.year, now.month)[1]
    hours_left = (month_start + dt.timedelta(days=days) - now).total_seconds() / 3600
    start = min(month_start, now - burn_window, now - idle_window)
    inner = cost_sql(db, Literal(_us(start), _us(now)), bucket="toStartOfMinute(time)")
    burn_from, idle_from, month_from = (_us(now - burn_window), _us(now - idle_window), _us(month_start))
    return _rows(client, f"""
SELECT project, ifNull(s.month_to_date_usd, 0) AS month_to_date_usd,
       ifNull(s.burn_rate_usd_per_hour, 0) AS burn_rate_usd_per_hour,
       month_to_date_usd + burn_rate_usd_per_hour * {hours_left} AS projected_month_end_usd,
       b.usd_per_month AS budget_usd,
       if(budget_usd > 0, projected_month_end_usd / budget_usd, NULL) AS budget_usage_ratio,
       ifNull(s.idle_cost_usd_per_hour, 0) AS idle_cost_usd_per_hour
FROM (
    SELECT project,
           sumIf(cost_usd, bucket >= fromUnixTimestamp64Micro(toInt64({month_from}), 'UTC')) AS month_to_date_usd,
           sumIf(cost_usd, bucket >= fromUnixTimestamp64Micro(toInt64({burn_from}), 'UTC'))
               / {burn_window.total_seconds() / 3600} AS burn_rate_usd_per_hour,
           sumIf(idle_cost_usd, bucket >= fromUnixTimestamp64Micro(toInt64({idle_from}), 'UTC'))
               / {idle_window.total_seconds() / 3600} AS idle_cost_usd_per_hour
    FROM ({inner}) WHERE project != '' GROUP BY project
) AS s
FULL OUTER JOIN (SELECT project, usd_per_month FROM {db}.current_budgets WHERE project != '') AS b USING (project)
ORDER BY project
SETTINGS join_use_nulls = 1""")
