"""GPU cost: the YAML price table in ClickHouse, cost/idle cost/energy per run, project, user and day,
and budgets with burn rate and projected month-end spend, checked against numpy on the same samples."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runstream.consumer import ClickHouseSink, connect, ingest_spool
from runstream.consumer.migrations import migrate
from runstream.monitoring import cost
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings

pytestmark = pytest.mark.integration

T0 = dt.datetime(2025, 3, 15, 10, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2025, 3, 15, 11, 0, tzinfo=dt.UTC)
PRICES = """
idle_utilization_pct: 10
prices:
  - {gpu_model: H100, usd_per_gpu_hour: 2.49}
  - {gpu_model: H100, cluster: eu-1, tier: spot, usd_per_gpu_hour: 1.10}
  - {gpu_model: A100, usd_per_gpu_hour: 1.50}
budgets:
  - {project: vision, usd_per_month: 100}
  - {project: empty, usd_per_month: 10}
"""


def _samples(model: str, gpus: int, seconds: int, util: np.ndarray[Any, Any], power: float) -> list[dict[str, Any]]:
    start = int(T0.timestamp()) * 1_000_000
    return [{"time_us": start + i * 10_000_000, "gpu_index": g, "gpu_uuid": f"GPU-{model}-{g}", "gpu_model": model,
             "utilization_pct": float(util[i]), "power_w": power}
            for g in range(gpus) for i in range(seconds // 10)]


def _expected(util: np.ndarray[Any, Any], gpus: int, power: float, price: float | None) -> dict[str, float]:
    dt_s = np.r_[0, np.full(len(util) - 1, 10.0)]  # each sample stands for the time since the previous one
    gpu_s, idle_s = gpus * dt_s.sum(), gpus * dt_s[util < 10].sum()
    return {"gpu_hours": gpu_s / 3600, "idle_gpu_hours": idle_s / 3600, "energy_kwh": gpus * power * dt_s.sum() / 3.6e6,
            "cost_usd": gpu_s / 3600 * (price or 0), "idle_cost_usd": idle_s / 3600 * (price or 0)}


@pytest.fixture
def fleet(tmp_path: Path, clickhouse_dsn: str) -> dict[str, Any]:
    spool = tmp_path / "spool"
    settings = ProducerSettings.resolve(spool=str(spool), sample_interval_s=0)
    util_a = np.r_[np.full(180, 90.0), np.full(180, 5.0)]  # an hour: busy, then idle for 30 minutes
    util_b = np.full(180, 50.0)
    util_c = np.full(60, 0.0)
    runs = {}
    for name, project, tags, model, gpus, util, power in (
        ("a", "vision", {"cluster": "eu-1", "pricing_tier": "spot"}, "H100", 2, util_a, 300.0),
        ("b", "nlp", {}, "A100", 1, util_b, 200.0),
        ("c", "nlp", {}, "T4", 1, util_c, 50.0),
    ):
        with Run(project=project, name=name, tags=tags, settings=settings) as run:
            run.log_gpu_samples(_samples(model, gpus, len(util) * 10, util, power), host="node-1")
        runs[name] = run.run_id
    client, db = connect(clickhouse_dsn)
    migrate(client, db)
    assert not ingest_spool(spool, ClickHouseSink(clickhouse_dsn, client=client, database=db)).rejected
    prices = tmp_path / "prices.yaml"
    prices.write_text(PRICES)
    older = cost.parse_price_table({"prices": [{"gpu_model": "H100", "usd_per_gpu_hour": 99}]})
    cost.store_price_table(client, db, older, now=NOW - dt.timedelta(days=1))  # replaced by the next load
    cost.store_price_table(client, db, cost.load_price_file(prices), now=NOW)
    expected = {
        runs["a"]: _expected(util_a, 2, 300.0, 1.10),  # the cluster+tier price beats the model's default
        runs["b"]: _expected(util_b, 1, 200.0, 1.50),
        runs["c"]: _expected(util_c, 1, 50.0, None),  # no price for T4: counted as unpriced
    }
    return {"client": client, "db": db, "runs": runs, "expected": expected}


def test_cost_per_run_project_user_and_day(fleet: dict[str, Any]) -> None:
    client, db, runs, expected = fleet["client"], fleet["db"], fleet["runs"], fleet["expected"]
    window = {"start": T0 - dt.timedelta(hours=1), "end": NOW}
    by_run = {row["run_id"]: row for row in cost.cost_by(client, db, "run_id", **window)}
    for run_id, want in expected.items():
        for key, value in want.items():
            assert by_run[run_id][key] == pytest.approx(value), (run_id, key)
    assert by_run[runs["c"]]["unpriced_gpu_hours"] == pytest.approx(expected[runs["c"]]["gpu_hours"])
    assert by_run[runs["a"]]["idle_cost_usd"] == pytest.approx(0.5 * 2 * 1.10, rel=0.01)  # ~half an hour on 2 GPUs
    by_project = {row["project"]: row for row in cost.cost_by(client, db, "project", **window)}
    assert by_project["nlp"]["cost_usd"] == pytest.approx(expected[runs["b"]]["cost_usd"])
    total = sum(w["cost_usd"] for w in expected.values())
    (day,) = cost.cost_by(client, db, "day", **window)
    assert day["day"] == T0.date() and day["cost_usd"] == pytest.approx(total)
    assert sum(row["cost_usd"] for row in cost.cost_by(client, db, "user", **window)) == pytest.approx(total)


def test_budget_burn_rate_and_projection(fleet: dict[str, Any]) -> None:
    rows = {row["project"]: row for row in cost.budget_status(fleet["client"], fleet["db"], now=NOW)}
    spent = fleet["expected"][fleet["runs"]["a"]]
    vision = rows["vision"]
    assert vision["month_to_date_usd"] == pytest.approx(spent["cost_usd"])
    assert vision["burn_rate_usd_per_hour"] == pytest.approx(spent["cost_usd"] / 24)
    hours_left = (dt.datetime(2025, 4, 1, tzinfo=dt.UTC) - NOW).total_seconds() / 3600
    projected = spent["cost_usd"] + spent["cost_usd"] / 24 * hours_left
    assert vision["projected_month_end_usd"] == pytest.approx(projected)
    assert vision["budget_usd"] == 100 and vision["budget_usage_ratio"] == pytest.approx(projected / 100)
    assert vision["idle_cost_usd_per_hour"] == pytest.approx(spent["idle_cost_usd"])
    assert rows["nlp"]["budget_usd"] is None and rows["nlp"]["budget_usage_ratio"] is None
    assert rows["empty"]["month_to_date_usd"] == 0 and rows["empty"]["budget_usage_ratio"] == 0


def test_price_file_errors_name_the_entry() -> None:
    with pytest.raises(ValueError, match=r"prices\[0\]: usd_per_gpu_hour"):
        cost.parse_price_table({"prices": [{"gpu_model": "H100", "usd_per_gpu_hour": "cheap"}]})
    with pytest.raises(ValueError, match="unknown key"):
        cost.parse_price_table({"price": []})
    with pytest.raises(ValueError, match="listed twice"):
        cost.parse_price_table({"prices": [{"gpu_model": "H100", "usd_per_gpu_hour": 1}] * 2})
