"""Dashboards without a Grafana server: the JSON has the shape of Grafana's dashboard model, and every
ClickHouse panel's SQL, with the data source's macros and the dashboard variables expanded, runs in
chDB loaded with demo data and returns the columns the panel expects, non-empty. The pipeline
dashboard's PromQL is checked by promtool. A panel whose query breaks fails here."""

from __future__ import annotations

import datetime as dt
import enum
import json
import shutil
import subprocess
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from databases import fresh_database_dsn

from runstream.consumer import connect
from runstream.dashboards import build, preview


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory, clickhouse_base: str) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("dash")
    dsn = fresh_database_dsn(clickhouse_base, "dash")
    client, db = connect(dsn)
    preview.load_demo(client, db, dsn, tmp / "spool")
    return {"client": client, "db": db}


PANELS = [(uid, query) for uid, (_, _, queries) in build.DASHBOARDS.items() for query in queries]


@pytest.mark.integration
@pytest.mark.parametrize(("uid", "query"), PANELS, ids=[f"{uid}:{q.title}" for uid, q in PANELS])
def test_every_panel_query_runs_in_clickhouse_and_returns_its_columns(demo_db: dict[str, Any], uid: str,
                                                                     query: build.Query) -> None:
    client, db = demo_db["client"], demo_db["db"]
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    start = end - dt.timedelta(hours=24)
    variables = preview.variable_values(client, db, build.DASHBOARDS[uid][1], start, end)
    assert all(variables.values()), f"a variable has no values: {variables}"
    result = client.query(preview.expand(query.sql, db, variables, start, end))
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
            assert panel["type"] in {"timeseries", "table", "heatmap", "barchart", "trend"}, panel["type"]
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


# Keys grafanalib still writes from Grafana's pre-schema (angular) era. Grafana's dashboard model has no field
# for them; its schema migrations drop them on load. Any other key the model does not know fails the test.
GRAFANALIB_LEGACY_KEYS = {
    "__inputs", "hideControls", "rows", "sharedCrosshair",  # dashboard
    "editable", "error", "hideTimeOverride",  # every panel
    "color", "columns", "fontSize", "mappings",  # old table panel
    "cards", "dataFormat", "heatmap", "hideZeroBuckets", "highlightCards", "legend", "reverseYBuckets",  # old heatmap
    "tooltip", "xAxis", "yAxis",
    "useTags", "tags",  # variables (current.tags)
    "query", "target", "metric", "step",  # old Prometheus target fields (expr is the model's)
}


def _without_nulls(value: Any) -> Any:
    """grafanalib writes `null` for unset optional fields; the model (and Grafana) read them as absent."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _type_errors(value: Any, hint: Any, path: str) -> list[str]:
    """Check a decoded grafana-foundation-sdk object against the type hints generated from Grafana's schema."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is object:
        return []
    if origin in (typing.Union, types.UnionType):
        members = [h for h in args if h is not type(None)]
        if value is None and len(members) < len(args):
            return []
        errors: list[str] = []
        for member in members:
            found = _type_errors(value, member, path)
            if not found:
                return []
            errors = errors or found
        return errors
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if origin in (list, dict):
        if not isinstance(value, origin):
            return [f"{path}: expected a {origin.__name__}, got {value!r:.60}"]
        items = enumerate(value) if origin is list else value.items()
        return [e for key, item in items for e in _type_errors(item, args[-1], f"{path}[{key!r}]")]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return [] if value in {m.value for m in hint} else [f"{path}: {value!r} is not a {hint.__name__}"]
    if hint in (int, float):
        ok = isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected {hint.__name__}, got {value!r:.60}"]
    if isinstance(hint, type):
        if not isinstance(value, hint):
            return [f"{path}: expected {hint.__name__}, got {value!r:.60}"]
        if not type(value).__module__.startswith("grafana_foundation_sdk.models"):
            return []
        return [e for name, field in typing.get_type_hints(type(value)).items()
                for e in _type_errors(getattr(value, name), field, f"{path}.{name}")]
    return [f"{path}: unsupported type hint {hint!r}"]


def _unknown_keys(ours: Any, model: Any, path: str) -> list[str]:
    """Keys of our JSON that do not survive a round trip through the model: fields Grafana does not know."""
    if isinstance(ours, dict) and isinstance(model, dict):
        return [e for key, value in ours.items()
                for e in ([] if key in GRAFANALIB_LEGACY_KEYS else
                          [f"{path}.{key}"] if key not in model else _unknown_keys(value, model[key], f"{path}.{key}"))]
    if isinstance(ours, list) and isinstance(model, list) and len(ours) == len(model):
        pairs = enumerate(zip(ours, model, strict=True))
        return [e for i, (a, b) in pairs for e in _unknown_keys(a, b, f"{path}[{i}]")]
    if isinstance(ours, list) and ours == [] and path.endswith(".options"):
        return []  # grafanalib's old heatmap writes `options: []`; Grafana's heatmap migration replaces it
    return [] if type(ours) is type(model) or {type(ours), type(model)} <= {int, float} else \
        [f"{path}: {ours!r:.60} became {model!r:.60}"]


def test_dashboards_validate_against_grafanas_dashboard_model(tmp_path: Path) -> None:
    """Decode each dashboard with grafana-foundation-sdk (Python types generated from Grafana's CUE schemas, panel
    options and Prometheus queries included), type-check every field, and fail on keys the model does not know."""
    try:
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.cog.plugins import register_default_plugins
        from grafana_foundation_sdk.models.dashboard import Dashboard, DataTransformerConfig, Panel
    except ImportError:
        pytest.fail("grafana-foundation-sdk is not installed: pip install 'runstream[dev]'", pytrace=False)
    register_default_plugins()  # decode panel options/fieldConfig and Prometheus targets into their own types
    checked = 0
    for path in build.build(tmp_path, prometheus_rules=False):
        if not path.name.startswith("runstream-"):
            continue
        data = _without_nulls(json.loads(path.read_text()))
        model = Dashboard.from_json(data)
        for panel in model.panels or []:  # the SDK's Panel.from_json leaves transformations as dicts: decode them
            if isinstance(panel, Panel) and panel.transformations:
                panel.transformations = [DataTransformerConfig.from_json(t) for t in panel.transformations]
        assert not _type_errors(model, Dashboard, path.stem), _type_errors(model, Dashboard, path.stem)
        assert all(isinstance(p, Panel) for p in model.panels or []), path.name
        round_trip = json.loads(json.dumps(model, cls=JSONEncoder))
        unknown = _unknown_keys(data, round_trip, path.stem)
        assert not unknown, f"fields not in Grafana's dashboard model: {unknown}"
        checked += 1
    assert checked == 4


@pytest.mark.integration
def test_previews_draw_every_clickhouse_dashboard_from_rows(demo_db: dict[str, Any], tmp_path: Path) -> None:
    drawn = preview.previews(demo_db["client"], demo_db["db"], tmp_path)
    assert set(drawn) == set(build.DASHBOARDS) and not set(drawn) & set(preview.NOT_PREVIEWABLE)
    for uid, results in drawn.items():
        png = tmp_path / f"{uid}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert 20_000 < png.stat().st_size < 300_000, f"{png.name}: {png.stat().st_size} bytes"
        assert len(results) == len(build.DASHBOARDS[uid][2])
        empty = [r.query.title for r in results if not r.rows]
        assert not empty, f"{uid}: panels drawn without rows: {empty}"
