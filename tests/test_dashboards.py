"""Dashboards without a Grafana server: the JSON has the shape of Grafana's dashboard model, and every
ClickHouse panel's SQL, with the data source's macros and the dashboard variables expanded, runs in
chDB loaded with demo data and returns the columns the panel expects, non-empty. The pipeline
dashboard's PromQL is checked by promtool. A panel whose query breaks fails here."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import runstream
from runstream.consumer import ClickHouseSink, connect, ingest_spool
from runstream.consumer.migrations import migrate
from runstream.dashboards import build, cost
from runstream.demo import fleet, simulate_run
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings

INTERVAL_S = 60


def expand(sql: str, db: str, variables: dict[str, list[str]], start: dt.datetime, end: dt.datetime) -> str:
    """What Grafana and grafana-clickhouse-datasource send for this panel."""
    frm, to = int(start.timestamp()), int(end.timestamp())
    sql = sql.replace("${database}", db)
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)",
                 lambda m: f"{m[1]} >= toDateTime({frm}) AND {m[1]} <= toDateTime({to})", sql)
    sql = re.sub(r"\$__timeInterval\(([^)]+)\)",
                 lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {INTERVAL_S} second)", sql)
    for name, values in variables.items():
        quoted = ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
        sql = sql.replace(f"${{{name}:singlequote}}", quoted).replace(f"${{{name}}}", values[0] if values else "")
    assert "$" not in sql, f"unexpanded macro or variable in: {sql[:300]}"
    return sql


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory, clickhouse_base: str) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("dash")
    spool = tmp / "spool"
    settings = ProducerSettings(spool=spool, sample_interval_s=0)
    for sim in fleet(3):
        simulate_run(sim, "demo", 120, settings)
    rng = np.random.default_rng(5)
    with Run(project="demo", settings=settings) as run:
        run.log_reference({"x": rng.normal(0, 1, 1000), "country": list(rng.choice(["de", "fr"], 1000))},
                          model="churn", version="1", predictions=list(rng.choice(["stay", "leave"], 1000)),
                          baseline_metrics={"accuracy": 0.9})
    monitor = runstream.monitor("churn", "1", sample_rate=1.0, spool=str(spool))
    now_us = time.time_ns() // 1000
    for i, x in enumerate(rng.normal(0.8, 1, 600)):
        monitor.log({"x": float(x), "country": str(rng.choice(["de", "fr", "it"]))}, prediction="stay",
                    label=str(rng.choice(["stay", "leave"])), time_us=now_us - 1_800_000_000 + i * 3_000_000)
    monitor.close()
    dsn = f"{clickhouse_base}?database=dash_{int(time.time() * 1000)}" if clickhouse_base.startswith("chdb:") \
        else f"{clickhouse_base}/dash_{int(time.time() * 1000)}"
    client, db = connect(dsn)
    migrate(client, db)
    assert not ingest_spool(spool, ClickHouseSink(dsn, client=client, database=db)).rejected
    cost.store_price_table(client, db, cost.parse_price_table(
        {"prices": [{"gpu_model": "NVIDIA H100 80GB HBM3", "usd_per_gpu_hour": 2.49}],
         "budgets": [{"project": "demo", "usd_per_month": 1000}]}))
    return {"client": client, "db": db}


def _variables(client: Any, db: str, variables: tuple[build.Variable, ...], start: dt.datetime,
               end: dt.datetime) -> dict[str, list[str]]:
    """Run each variable's query in order, as Grafana does, and select all of its values."""
    values: dict[str, list[str]] = {}
    for variable in variables:
        result = client.query(expand(variable.sql, db, values, start, end))
        column = result.column_names.index("__value") if "__value" in result.column_names else 0
        values[variable.name] = [str(row[column]) for row in result.result_rows]
        assert values[variable.name], f"variable {variable.name} has no values"
        if not variable.multi:
            values[variable.name] = values[variable.name][:1]
    return values


PANELS = [(uid, query) for uid, (_, _, queries) in build.DASHBOARDS.items() for query in queries]


@pytest.mark.integration
@pytest.mark.parametrize(("uid", "query"), PANELS, ids=[f"{uid}:{q.title}" for uid, q in PANELS])
def test_every_panel_query_runs_in_clickhouse_and_returns_its_columns(demo_db: dict[str, Any], uid: str,
                                                                     query: build.Query) -> None:
    client, db = demo_db["client"], demo_db["db"]
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    start = end - dt.timedelta(hours=24)
    variables = _variables(client, db, build.DASHBOARDS[uid][1], start, end)
    result = client.query(expand(query.sql, db, variables, start, end))
    assert tuple(result.column_names) == query.columns
    assert result.result_rows, f"{query.title}: no rows although the demo has data"


def test_dashboards_have_the_shape_of_grafanas_dashboard_model(tmp_path: Path) -> None:
    written = build.build(tmp_path)
    uids = set()
    for path in written:
        if not path.name.startswith("runstream-") or path.suffix != ".json":
            continue
        data = json.loads(path.read_text())
        for key, kind in (("uid", str), ("title", str), ("panels", list), ("templating", dict), ("time", dict),
                          ("schemaVersion", int), ("tags", list)):
            assert isinstance(data.get(key), kind), f"{path.name}: {key}"
        uids.add(data["uid"])
        ids = [panel["id"] for panel in data["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in data["panels"]:
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            assert panel["type"] in {"timeseries", "table", "heatmap", "barchart"}, panel["type"]
            for target in panel["targets"]:
                assert target["refId"] and target["datasource"]["type"] in {"grafana-clickhouse-datasource",
                                                                             "prometheus"}
                assert target.get("rawSql") or target.get("expr")
        for variable in data["templating"]["list"]:
            assert variable["name"] and variable["type"] in {"query", "datasource", "constant"}
    assert uids == {"runstream-runs", "runstream-gpu-cost", "runstream-drift", "runstream-pipeline"}
    rules = json.loads((tmp_path / "grafana-alert-rules.json").read_text())
    assert rules["apiVersion"] == 1 and rules["groups"][0]["rules"]


def test_pipeline_promql_is_valid(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: apt-get install -y prometheus", pytrace=False)
    rules = {"groups": [{"name": "pipeline-panels", "rules": [
        {"record": f"panel:{i}", "expr": query.expr} for i, query in enumerate(build.PIPELINE)]}]}
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_provisioning_points_at_the_built_dashboards() -> None:
    root = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
    datasources = yaml.safe_load((root / "provisioning" / "datasources" / "runstream.yml").read_text())
    types = {d["type"] for d in datasources["datasources"]}
    assert {"grafana-clickhouse-datasource", "prometheus"} <= types
    providers = yaml.safe_load((root / "provisioning" / "dashboards" / "runstream.yml").read_text())
    assert providers["providers"][0]["options"]["path"]
