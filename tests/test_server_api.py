"""`runstream server`'s HTTP API against a real server process: runs logged through the SDK (NaN and ±Inf
among the values) and loaded with `runstream ingest` into a chDB folder of the module's own, then one
`runstream server --port 0` subprocess on that folder for the module.

Every route's answer is compared with the direct call of the analysis/monitoring function it serves, made
on the same folder by a subprocess BEFORE the server starts (the engine admits one process per folder), and
with what was logged (counts and sums, with and without FINAL). Bad requests get their 4xx and a message
naming the field; the server keeps answering. A second, short-lived server checks the 0.0.0.0 warning and
the clean SIGTERM exit (exit 0, discovery file removed).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from server_process import clean_environment, running_server

import runstream
from runstream.server import wire
from runstream.server.discovery import SERVER_FILE

pytestmark = pytest.mark.integration

STEPS = 60
#: loss of run "a": spikes the downsampling must keep (NaN and ±Inf are counted, never ranked)
SPIKES = {5: math.inf, 6: math.nan, 7: -math.inf}
RUNS = {"a": (0.1, "sgd"), "b": (0.01, "adam"), "c": (0.001, "adam")}


def loss_of(name: str, step: int) -> float:
    lr = RUNS[name][0]
    if name == "a" and step in SPIKES:
        return SPIKES[step]
    return lr / (step + 1) + (0.5 if step == 30 else 0.0)  # a one-step spike up at step 30


def acc_of(step: int) -> float:
    return step / STEPS


def _log(spool: Path) -> None:
    for name, (lr, opt) in RUNS.items():
        run = runstream.init("api", name, params={"lr": lr, "opt": opt}, spool=str(spool), sample_interval=0)
        for step in range(STEPS):
            run.log({"loss": loss_of(name, step), "acc": acc_of(step)}, step=step)
        if name == "b":
            start_us = time.time_ns() // 1000 - 60_000_000
            run.log_gpu_samples([{"time_us": start_us + k * 10_000_000, "gpu_index": 0, "gpu_uuid": "GPU-0",
                                  "gpu_model": "H100", "utilization_pct": 40.0 + k, "memory_used_bytes": 10**9 * k,
                                  "memory_total_bytes": 80 * 10**9} for k in range(6)], host="node-1")
        run.finish("ok")


# The direct calls, made in a process of their own on the folder before the server holds it.
DIRECT = """
import datetime as dt, json, sys
from runstream.analysis import curves, queries
from runstream.analysis.importance import importance
from runstream.analysis.reproduce import reproduce
from runstream.monitoring import cost, drift
from runstream.server.api_tables import browser_json

client, db = queries.open_database(sys.argv[1])
ids = {name: run_id for run_id, name in client.query(f"SELECT run_id, run_name FROM {db}.runs FINAL").result_rows}
def table(t):
    return {"columns": t.columns, "rows": t.rows, "left_out": t.left_out}
now = dt.datetime.now(dt.UTC)
out = {
    "ids": ids,
    "runs": table(queries.runs(client, db, project="api")),
    "runs_filtered": table(queries.runs(client, db, project="api", where="params.lr < 0.05", sort="-params.lr")),
    "compare": table(queries.compare(client, db, [ids["a"], ids["b"]])),
    "best": table(queries.leaderboard(client, db, "api", "loss", None, 10)),
    "importance": table(importance(client, db, "api", "loss")),
    "history": table(curves.history(client, db, [ids["a"], ids["b"]], ["loss"], points=7)),
    "history_acc": table(curves.history(client, db, [ids["a"]], ["loss"], points=5, x="acc")),
    "gpu_hours": queries.gpu_hours(client, db, list(ids.values())),
    "cost": cost.cost_by(client, db, "run_id", start=dt.datetime(1970, 1, 1, tzinfo=dt.UTC), end=now),
    "drift": drift.drift_scores(client, db, start=now - dt.timedelta(hours=24), end=now, window_s=3600),
    "reproduce": reproduce(client, db, ids["a"]),
}
print(json.dumps(browser_json(out)))
"""


@dataclass
class Served:
    url: str
    process: subprocess.Popen[str]
    direct: dict[str, Any]
    ids: dict[str, str]
    output: list[str]  # what it printed, stdout and stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("server-api")
    spool, dsn = root / "spool", f"chdb://{root / 'data'}"
    spool.mkdir()
    _log(spool)
    subprocess.run([sys.executable, "-m", "runstream.cli", "ingest", str(spool), "--clickhouse", dsn], check=True,
                   capture_output=True, text=True, env=clean_environment(), timeout=120)
    done = subprocess.run([sys.executable, "-c", DIRECT, dsn], capture_output=True, text=True, env=clean_environment(),
                          timeout=120)
    assert done.returncode == 0, done.stderr
    direct = json.loads(done.stdout)
    with running_server("--no-spool", "--clickhouse", dsn, "--metrics-interval", "0.5") as server:
        yield Served(server.url, server.process, direct, direct["ids"], server.output)
    assert server.process.returncode == 0, "".join(server.output)


def fetch(url: str, body: dict[str, Any] | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of GET url, or of POST url with the JSON `body`; only http:// URLs."""
    assert url.startswith("http://"), url
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - http:// only, checked above
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def call(served: Served, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(status, JSON answer) of GET path, or of POST path with `body`."""
    status, _kind, answer = fetch(served.url + path, body)
    return status, json.loads(answer)


def ok(served: Served, path: str, body: dict[str, Any] | None = None) -> Any:
    status, answer = call(served, path, body)
    assert status == 200, (path, answer)
    return answer


def q(**params: Any) -> str:
    return urllib.parse.urlencode(params, doseq=True)


def logged_loss(name: str) -> list[float]:
    return [loss_of(name, step) for step in range(STEPS)]


def as_json_float(value: float) -> Any:
    return "NaN" if math.isnan(value) else "Infinity" if value == math.inf else "-Infinity" if value == -math.inf \
        else value


def test_run_routes_equal_the_direct_calls(served: Served) -> None:
    d, ids = served.direct, served.ids
    health = ok(served, "/api/health")
    assert health["status"] == "ok" and health["pid"] == served.process.pid and health["database"] == "runstream"
    assert ok(served, "/api/projects")["projects"][0] | {"last_started": None} == \
        {"project": "api", "runs": 3, "last_started": None}
    runs = ok(served, "/api/runs?" + q(project="api"))
    assert runs == {"columns": d["runs"]["columns"], "rows": d["runs"]["rows"]}
    filtered = ok(served, "/api/runs?" + q(project="api", where="params.lr < 0.05", sort="-params.lr"))
    assert filtered == {"columns": d["runs_filtered"]["columns"], "rows": d["runs_filtered"]["rows"]}
    assert [row[1] for row in filtered["rows"]] == ["b", "c"]  # the filter and the sort, as logged
    chosen = ok(served, "/api/runs?" + q(project="api", columns="name,params.lr,metrics.loss,params.missing"))
    assert chosen["columns"] == ["name", "params.lr", "metrics.loss", "params.missing"]
    assert chosen["rows"] == [[name, RUNS[name][0], as_json_float(logged_loss(name)[-1]), None] for name in RUNS]
    compare = ok(served, "/api/compare?" + q(run=[ids["a"], "b"]))
    assert compare == {"columns": d["compare"]["columns"], "rows": d["compare"]["rows"]}
    best = ok(served, "/api/best?" + q(project="api", metric="loss"))
    assert (best["columns"], best["rows"], best["left_out"]) == \
        (d["best"]["columns"], d["best"]["rows"], d["best"]["left_out"])
    # best loss: the finite minimum logged (the -Inf and NaN of run a never rank)
    assert {row[2]: row[4] for row in best["rows"]} == \
        {name: min(v for v in logged_loss(name) if math.isfinite(v)) for name in RUNS}
    importance = ok(served, "/api/importance?" + q(project="api", metric="loss"))
    assert (importance["columns"], importance["rows"]) == (d["importance"]["columns"], d["importance"]["rows"])
    assert "not causation" in importance["note"]
    one = ok(served, f"/api/runs/{ids['a']}")
    for key in ("run_id", "name", "project", "config", "tags", "hardware", "launch"):
        assert one[key] == d["reproduce"][key], key
    assert one["summary"]["params.lr"] == 0.1 and one["summary"]["loss final"] == as_json_float(loss_of("a", 59))
    assert one["status"] == "ok"
    listed = ok(served, "/api/metrics?" + q(run=["a", "b"]))
    assert [(m["name"], m["runs"], m["goal"]) for m in listed["metrics"]] == [("acc", 2, "max"), ("loss", 2, "min")]
    assert listed["axes"] == ["step", "time", "relative", "acc", "loss"]


def test_curves_equal_the_direct_history_and_the_logged_points(served: Served) -> None:
    d, ids = served.direct, served.ids
    answer = ok(served, "/api/curves?" + q(run=["a", "b"], metric="loss", buckets=7))
    assert answer["x"] is None and answer["buckets"] == 7
    columns = d["history"]["columns"]
    for curve in answer["curves"]:
        rows = [row for row in d["history"]["rows"] if row[0] == curve["run"] and row[1] == curve["metric"]]
        for i, column in enumerate(columns[3:], start=3):
            assert curve[column] == [row[i] for row in rows], (curve["run"], column)
        assert curve["resolution"] == "buckets" and curve["points"] == STEPS
    a = next(curve for curve in answer["curves"] if curve["run"] == ids["a"])
    # spikes kept: NaN and ±Inf counted, the +0.5 step among the maxima
    assert (sum(a["nan_count"]), sum(a["pos_inf_count"]), sum(a["neg_inf_count"])) == (1, 1, 1)
    assert max(a["max"]) == max(v for v in logged_loss("a") if math.isfinite(v))
    on_acc = ok(served, "/api/curves?" + q(run="a", metric="loss", x="acc", buckets=5))["curves"][0]
    rows = d["history_acc"]["rows"]
    assert on_acc["axis"] == "acc" and on_acc["x"] == [row[3] for row in rows]
    assert on_acc["max"] == [row[6] for row in rows]
    # a zoom: every point of the range, exactly as logged (fewer points than buckets: full resolution)
    zoom = ok(served, "/api/curves?" + q(run="a", metric="loss", buckets=1000, x_min=2, x_max=31))["curves"][0]
    assert zoom["resolution"] == "full" and zoom["x"] == [float(step) for step in range(2, 32)]
    assert zoom["last"] == [as_json_float(loss_of("a", step)) for step in range(2, 32)]
    # the same zoom on the acc axis (a metric logged at the same steps) picks the same points
    by_acc = ok(served, "/api/curves?" + q(run="a", metric="loss", x="acc", x_min=acc_of(2), x_max=acc_of(31)))
    assert by_acc["curves"][0]["last"] == zoom["last"]
    live = ok(served, "/api/curves?" + q(run="a", metric="loss", x="relative", x_min=0, buckets=3))["curves"][0]
    assert live["points"] == STEPS
    # the run's points fall in its relative-time range as the SQL cuts it in 3 (a pause in the logging can
    # leave a bucket empty, and an empty bucket is not sent): the same cut of the points' own x, at full resolution
    every = ok(served, "/api/curves?" + q(run="a", metric="loss", x="relative", x_min=0, buckets=1000))["curves"][0]
    assert every["resolution"] == "full" and len(every["x"]) == STEPS
    lo, hi = min(every["x"]), max(every["x"])
    cut = Counter(min(2, math.floor((x - lo) / (hi - lo) * 3)) if hi > lo else 0 for x in every["x"])
    assert live["count"] == [cut[bucket] for bucket in sorted(cut)]
    timed = ok(served, "/api/curves?" + q(run="b", metric="loss", x="time", buckets=4))["curves"][0]
    assert timed["x"][0].endswith("+00:00") and timed["points"] == STEPS
    later = ok(served, "/api/curves?" + q(run="b", metric="loss", x="time", x_min=timed["x"][2]))["curves"][0]
    assert later["x"][0] == timed["x"][2] and 0 < later["points"] < STEPS and later["resolution"] == "full"
    assert later["points"] == sum(timed["count"][2:])  # the buckets from there on hold the same points


def test_fleet_routes_equal_the_direct_calls(served: Served) -> None:
    d, ids = served.direct, served.ids
    gpu = ok(served, "/api/gpu?" + q(run=["a", "b"], buckets=3))["runs"]
    assert {run["run"]: run["gpu_hours"] for run in gpu} == {ids["a"]: 0.0, ids["b"]: d["gpu_hours"][ids["b"]]}
    assert d["gpu_hours"][ids["b"]] == pytest.approx(50 / 3600)  # six samples 10 s apart
    series = next(run for run in gpu if run["run"] == ids["b"])["series"]
    assert sum(series["samples"]) == 6 and series["memory_total_bytes"] == [80 * 10**9] * 3
    costs = ok(served, "/api/cost?" + q(by="run_id", since="1970-01-01T00:00:00Z"))
    assert {row["run_id"]: row["gpu_hours"] for row in costs["rows"]} == \
        {row["run_id"]: row["gpu_hours"] for row in d["cost"]}
    assert ok(served, "/api/cost?" + q(project="api"))["rows"][0]["project"] == "api"
    assert ok(served, "/api/drift")["scores"] == d["drift"]


def test_sql_answers_as_logged_in_json_and_arrow(served: Served) -> None:
    finite = [v for name in RUNS for v in logged_loss(name) if math.isfinite(v)]
    for final in ("", "FINAL"):
        sql = (f"SELECT count(), sumIf(value, isFinite(value)) FROM metric_points {final} "  # noqa: S608
               "WHERE metric = {m:String}")
        status, body = call(served, "/api/sql", {"sql": sql, "parameters": wire.encode_parameters({"m": "loss"})})
        assert status == 200, body
        _columns, _types, rows = wire.decode_result(json.dumps(body).encode())
        assert rows[0][0] == 3 * STEPS and rows[0][1] == pytest.approx(math.fsum(finite), rel=1e-12)
    spikes = {"sql": "SELECT step, value FROM metric_points FINAL WHERE run_id = {r:String} AND metric = 'loss' "
              "AND NOT isFinite(value) ORDER BY step", "parameters": {"r": served.ids["a"]}}
    _c, _t, rows = wire.decode_result(json.dumps(ok(served, "/api/sql", spikes)).encode())
    assert [(s, repr(v)) for s, v in rows] == [(s, repr(SPIKES[s])) for s in sorted(SPIKES)]
    status, kind, body = fetch(served.url + "/api/sql?format=arrow", spikes)
    assert (status, kind) == (200, "application/vnd.apache.arrow.stream")
    table = pa.ipc.open_stream(body).read_all()
    assert [(s, repr(v)) for s, v in zip(table["step"].to_pylist(), table["value"].to_pylist(), strict=True)] == \
        [(s, repr(v)) for s, v in rows]
    runs = pa.ipc.open_stream(fetch(served.url + "/api/runs?project=api&format=arrow")[2]).read_all()
    assert runs.column_names == served.direct["runs"]["columns"] and runs["name"].to_pylist() == list(RUNS)


def test_bad_requests_get_4xx_and_the_server_keeps_answering(served: Served) -> None:
    count = {"sql": "SELECT count() FROM metric_points"}
    before = ok(served, "/api/sql", count)["rows"]
    cases = [
        ("/api/runs?" + q(where="params.lr <"), None, 400, "filter 'params.lr <'"),
        ("/api/runs?" + q(where="params.lrr < 1"), None, 400, "lrr"),
        ("/api/runs?" + q(columns="name,bogus"), None, 400, "columns: unknown column 'bogus'"),
        ("/api/runs/no-such-run", None, 404, "run 'no-such-run'"),
        ("/api/compare?" + q(run=["a", "nope"]), None, 404, "run 'nope'"),
        ("/api/runs?" + q(limit=10**9), None, 422, "limit '1000000000'"),
        ("/api/curves?" + q(run="a", metric="loss", buckets=0), None, 422, "buckets '0'"),
        ("/api/curves?" + q(run="a", metric="loss", buckets=20001), None, 422, "buckets '20001'"),
        ("/api/curves?" + q(run="a", metric="loss", x="nosuch"), None, 400, "x 'nosuch'"),
        ("/api/curves?" + q(run="a", metric="loss", x_min="abc"), None, 400, "x_min: expected a number"),
        ("/api/best?" + q(project="api", metric="loss", mode="median"), None, 422, "mode 'median'"),
        ("/api/best?" + q(project="nope", metric="loss"), None, 400, "project 'nope'"),
        ("/api/sql", {"sql": "INSERT INTO metric_points (run_id) VALUES ('x')"}, 403, "read-only"),
        ("/api/sql", {"sql": "DROP TABLE metric_points"}, 403, "read-only"),
        ("/api/sql", {"sql": "CREATE TABLE t (a Int8) ENGINE = Memory"}, 403, "read-only"),
        ("/api/sql", {"sql": "SELECT * FROM file('/etc/hostname', 'LineAsString')"}, 403, "file()"),
        ("/api/sql", {"sql": "SELECT 1 INTO OUTFILE 'x.txt'"}, 403, "INTO OUTFILE"),
        ("/api/sql", {"sql": "SELEC 1"}, 400, "Syntax error"),
        ("/api/sql", {"sql": "SELECT * FROM no_such_table"}, 400, "no_such_table"),
        ("/api/sql", {"sql": ""}, 422, "sql"),
    ]
    for path, body, status, text in cases:
        got, answer = call(served, path, body)
        assert (got, text in answer.get("error", "")) == (status, True), (path, body, got, answer)
    assert ok(served, "/api/sql", count)["rows"] == before
    assert ok(served, "/api/health")["status"] == "ok"
    assert served.process.poll() is None
    # the default host: loopback, reached there, and nothing to warn about
    assert served.url.startswith("http://127.0.0.1:") and "WARNING" not in "".join(served.output)


def test_metrics_serves_the_monitor_gauges(served: Served) -> None:
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:  # the exporter refreshes every 0.5 s (--metrics-interval)
        text = fetch(served.url + "/metrics")[2].decode()
        if 'runstream_runs{project="api",status="ok"} 3.0' in text:
            break
        time.sleep(0.1)
    assert 'runstream_runs{project="api",status="ok"} 3.0' in text, text[:2000]
    assert "runstream_monitor_last_refresh_timestamp_seconds" in text


def test_all_interfaces_warn_and_sigterm_exits_cleanly(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    with running_server("--no-spool", "--clickhouse", f"chdb://{folder}", "--host", "0.0.0.0") as server:  # noqa: S104
        assert server.url.startswith("http://127.0.0.1:")  # reached on loopback, bound everywhere
        record = json.loads((folder / SERVER_FILE).read_text())
        assert record["url"] == server.url and record["pid"] == server.process.pid
        assert json.loads(fetch(server.url + "/api/health")[2])["pid"] == server.process.pid
    warning = "".join(server.output)
    assert server.process.returncode == 0, warning
    assert "WARNING" in warning and "NO authentication" in warning and "listening on 0.0.0.0" in warning  # noqa: S104
    assert not (folder / SERVER_FILE).exists()


def test_help_explains_every_option() -> None:
    done = subprocess.run([sys.executable, "-m", "runstream.cli", "server", "--help"], capture_output=True, text=True,
                          env=clean_environment(), timeout=60, check=True)
    text = " ".join(done.stdout.split())
    for option in ("--clickhouse", "--spool", "--no-spool", "--kafka", "--kafka-option", "--topic-prefix", "--group",
                   "--host", "--port", "--open", "--metrics-interval", "RUNSTREAM_SERVER_HOST", "no authentication",
                   "127.0.0.1", "0: any free port"):
        assert option in text, option
