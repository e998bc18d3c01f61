"""`runstream export` round trip: runs logged through the SDK to a spool and ingested, exported as Parquet,
CSV and JSON Lines, read back with pyarrow / json, and compared exactly with what was logged.

The workload has NaN, +Inf, -Inf, -0.0, the smallest denormal and a step logged again (FINAL keeps its
latest value); a filter keeps only the matching runs; progress reaches stderr only when asked; and a
2,000,000-point run is written block by block (the writer sees many blocks and Arrow never holds the
whole table).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from databases import fresh_database_dsn

import runstream
from runstream.analysis import export as export_module
from runstream.analysis.export import read_csv
from runstream.analysis.filters import FilterError
from runstream.cli import main
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.consumer.batch import Batch
from runstream.consumer.dsn import connect

pytestmark = pytest.mark.integration

NAN, INF = float("nan"), float("inf")
SPECIALS = [NAN, INF, -INF, -0.0, 5e-324, 1e308, 0.1 + 0.2, -1.5]
RELOGGED_STEP = 7
RELOGGED_VALUE = 0.123456789
BIG_POINTS = 2_000_000


def _loss(seed: int) -> list[tuple[int, float]]:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(40).tolist()
    values[: len(SPECIALS)] = SPECIALS
    values[RELOGGED_STEP] = INF  # overwritten by the later log of the same step
    return list(enumerate(values))


#: name -> (project, params, {metric: [(step, value)]} in logging order, status)
RUNS: dict[str, tuple[str, dict[str, Any], dict[str, list[tuple[int, float]]], str]] = {
    "alpha": ("vision", {"lr": 0.01, "batch": 32, "opt": {"name": "adamw"}, "note": ""},
              {"loss": _loss(1), "acc": [(s, s / 40) for s in range(40)]}, "ok"),
    "beta": ("vision", {"lr": 0.001, "batch": 64, "opt": {"name": "sgd"}, "note": "x,\"y\""},
             {"loss": _loss(2)}, "failed"),
    "gamma": ("audio", {"lr": 0.1}, {"loss": [(0, 1.0), (1, 0.5)]}, "ok"),
    "delta": ("dist", {"lr": 0.5}, {"loss": [(0, 2.0), (1, 1.0)]}, "ok"),  # + other ranks, histograms, goals
}
#: delta's other tables, written as the consumer writes their events (tests/metric_events.py's way)
RANK_POINTS = [(1, "node-b", "loss", 0, 2.5), (1, "node-b", "loss", 1, NAN), (2, "node-c", "loss", 0, -INF),
               (2, "node-c", "loss", 1, 1.25)]
HISTOGRAM = {"metric": "grad/norm", "step": 3, "rank": 0, "node": "node-a", "edges": [0.0, 0.5, 1.0, 4.0],
             "counts": [3, 0, 7], "nan_count": 2, "neg_inf_count": 1, "pos_inf_count": 0}
DEFINITIONS = [{"metric": "loss", "goal": "min", "summary": ["min", "last"], "step_metric": None},
               {"metric": "acc", "goal": "max", "summary": [], "step_metric": "epoch"}]


def _log(spool: Path, name: str) -> None:
    project, params, metrics, status = RUNS[name]
    run = runstream.init(project, name, params=params, spool=str(spool), sample_interval=0)
    for metric, points in metrics.items():
        for step, value in points:
            run.log({metric: value}, step=step)
    logged_at = time.time_ns() // 1000
    while time.time_ns() // 1000 <= logged_at:  # the re-log must carry a later microsecond: it wins in FINAL
        pass
    if name in ("alpha", "beta"):
        run.log({"loss": RELOGGED_VALUE}, step=RELOGGED_STEP)
    run.finish(status)


def expected_points(name: str) -> dict[tuple[str, int], float]:
    """What FINAL keeps: the last value logged for each (metric, step)."""
    kept: dict[tuple[str, int], float] = {}
    for metric, points in RUNS[name][2].items():
        for step, value in points:
            kept[metric, step] = value
    if name in ("alpha", "beta"):
        kept["loss", RELOGGED_STEP] = RELOGGED_VALUE
    return kept


@pytest.fixture(scope="module")
def dsn(clickhouse_base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    dsn = fresh_database_dsn(clickhouse_base, "export")
    spool = tmp_path_factory.mktemp("export-spool")
    for name in RUNS:
        _log(spool, name)
    sink = ClickHouseSink(dsn)
    report = ingest_spool(spool, sink)
    assert not report.rejected, report.rejected
    client, database = connect(dsn, create_database=False)
    delta = run_ids((client, database))["delta"]
    client.close()
    now_us = time.time_ns() // 1000
    batch = Batch()
    for number, (rank, node, metric, step, value) in enumerate(RANK_POINTS):
        batch.add("rank_metric_steps", {
            "event_id": f"r{number}", "run_id": delta, "timestamp_us": now_us, "attempt": 1, "rank": rank,
            "node": node, "metric_names": [metric], "metric_index": [0], "steps": [step], "values": [value],
            "times_us": [now_us + number]}, now_us=now_us)
    batch.add("metric_histogram", {"event_id": "h", "run_id": delta, "timestamp_us": now_us, "attempt": 1,
                                   "time_us": now_us, **HISTOGRAM}, now_us=now_us)
    batch.add("metric_definitions", {"event_id": "d", "run_id": delta, "timestamp_us": now_us, "attempt": 1,
                                     "definitions": DEFINITIONS}, now_us=now_us)
    sink.write(batch)
    return dsn


@pytest.fixture(autouse=True)
def _no_progress_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNSTREAM_PROGRESS", raising=False)


def run_ids(db: tuple[Any, str]) -> dict[str, str]:
    client, database = db
    rows = client.query(f"SELECT run_name, run_id FROM {database}.runs FINAL").result_rows
    return {name: run_id for name, run_id in rows}


def read_back(path: Path, fmt: str) -> pa.Table:
    """An exported file as Arrow, each format through its documented reader."""
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "csv":
        return read_csv(path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row in rows:  # the documented spelling: "NaN", "Infinity", "-Infinity" -> float()
        for key in ("value", "value_number"):
            if isinstance(row.get(key), str):
                row[key] = float(row[key])
    return pa.Table.from_pylist(rows)


def same_floats(got: list[float], want: list[float]) -> bool:
    """Bit-exact up to NaN payloads: NaN where NaN, -0.0 where -0.0, every other value equal."""
    a, b = np.array(got, dtype=np.float64), np.array(want, dtype=np.float64)
    return bool(np.array_equal(a, b, equal_nan=True) and np.array_equal(np.signbit(a), np.signbit(b)))


def same_table(a: pa.Table, b: pa.Table) -> bool:
    """Equal schemas and values, NaN equal to NaN (Arrow's own `equals` holds NaN unequal to itself)."""
    if a.schema != b.schema:
        return False
    return all(same_floats(a[name].to_pylist(), b[name].to_pylist()) if pa.types.is_floating(a.schema.field(name).type)
               else a[name].equals(b[name]) for name in a.column_names)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_reads_back_exactly_what_was_logged(dsn: str, db: tuple[Any, str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = cli(capsys, "export", "--project", "vision", "--format", fmt, "--out", str(out),
                               "--clickhouse", dsn)
    assert code == 0, stderr
    assert stderr == ""  # stderr is not a terminal and progress was not asked for
    ids = run_ids(db)
    names = {run_id: name for name, run_id in ids.items()}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.{fmt}" for t in ("runs", "params", "points"))

    runs = read_back(out / f"runs.{fmt}", fmt).to_pylist()
    assert sorted(r["name"] for r in runs) == ["alpha", "beta"]
    for row in runs:
        project, params, _metrics, status = RUNS[row["name"]]
        assert (row["project"], row["status"], row["params.lr"], row["params.batch"], row["params.opt.name"]) == (
            project, status, params["lr"], params["batch"], params["opt"]["name"])

    params = read_back(out / f"params.{fmt}", fmt).to_pylist()
    got_params = {(names[p["run_id"]], p["key"]): (p["value_number"] if p["value_type"] != "string"
                                                   else p["value_string"]) for p in params}
    want_params = {("alpha", "lr"): 0.01, ("alpha", "batch"): 32, ("alpha", "opt.name"): "adamw",
                   ("alpha", "note"): "", ("beta", "lr"): 0.001, ("beta", "batch"): 64,
                   ("beta", "opt.name"): "sgd", ("beta", "note"): "x,\"y\""}
    assert got_params == want_params

    points = read_back(out / f"points.{fmt}", fmt)
    assert points.column_names == ["run_id", "metric", "step", "value", "time", "attempt"]
    rows = points.to_pylist()
    got = {(names[r["run_id"]], r["metric"], r["step"]): r["value"] for r in rows}
    want = {(name, metric, step): value for name in ("alpha", "beta")
            for (metric, step), value in expected_points(name).items()}
    assert sorted(got) == sorted(want)
    keys = sorted(want)
    assert same_floats([got[k] for k in keys], [want[k] for k in keys])
    assert got["alpha", "loss", RELOGGED_STEP] == RELOGGED_VALUE
    # ... and the same counts as ClickHouse's own FINAL answer
    client, database = db
    final = client.query(f"SELECT count(), sum(isNaN(value)), sum(isInfinite(value)) FROM {database}.metric_points "
                         "FINAL WHERE run_id IN {ids:Array(String)}",
                         parameters={"ids": [ids["alpha"], ids["beta"]]}).result_rows[0]
    values = np.array([r["value"] for r in rows])
    assert final == (len(rows), int(np.isnan(values).sum()), int(np.isinf(values).sum()))
    # exact times: the ones ClickHouse stores, microseconds and UTC
    times = [r["time"] for r in rows]
    assert all(t.tzinfo is not None and t.utcoffset().total_seconds() == 0 for t in times) if fmt != "jsonl" else \
        all(t.endswith("+00:00") for t in times)
    assert "total" in stdout and f"runs.{fmt}" not in stdout and "2 runs exported" in stdout


def test_client_returns_the_same_as_arrow(dsn: str, db: tuple[Any, str], tmp_path: Path) -> None:
    with runstream.Client(dsn) as rs:
        summary = rs.export(tmp_path / "out", project="vision", format="parquet")
        table = rs.points_arrow(project="vision")
        alpha = rs.points_arrow(["alpha"], metrics=["loss"])
        runs = rs.runs(project="vision", output="arrow")
    assert same_table(table, pq.read_table(tmp_path / "out" / "points.parquet"))
    assert same_table(runs, pq.read_table(tmp_path / "out" / "runs.parquet"))
    assert summary.runs == 2 and {f.table for f in summary.files} == {"runs", "params", "points"}
    assert summary.rows == sum(f.rows for f in summary.files) == 2 + 8 + table.num_rows
    assert alpha.num_rows == 40 and set(alpha.column("metric").to_pylist()) == {"loss"}
    want = expected_points("alpha")
    assert same_floats(alpha.column("value").to_pylist(), [want["loss", s] for s in range(40)])


def test_where_exports_only_the_matching_runs_partitioned_by_run(dsn: str, db: tuple[Any, str], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, stderr = cli(capsys, "export", "--where", "params.lr < 0.05", "--format", "csv", "--out", str(out),
                          "--partition-by", "run", "--clickhouse", dsn)
    assert code == 0, stderr
    ids = run_ids(db)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(f"run_id={ids[name]}" for name in ("alpha", "beta"))  # gamma's lr is 0.1
    assert read_csv(out / "runs.csv").column("name").to_pylist() == ["alpha", "beta"]
    for name in ("alpha", "beta"):
        points = read_csv(out / f"run_id={ids[name]}" / "points.csv")
        assert set(points.column("run_id").to_pylist()) == {ids[name]}
        want = expected_points(name)
        got = {(m, s): v for m, s, v in zip(points.column("metric").to_pylist(), points.column("step").to_pylist(),
                                             points.column("value").to_pylist(), strict=True)}
        assert sorted(got) == sorted(want)
        assert same_floats([got[k] for k in sorted(want)], [want[k] for k in sorted(want)])


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_other_ranks_histograms_and_definitions_are_exported(dsn: str, db: tuple[Any, str], tmp_path: Path,
                                                             fmt: str) -> None:
    client, database = db
    summary = export_module.export(client, database, tmp_path / "out", project="dist", fmt=fmt, partition_by="run")
    delta = run_ids(db)["delta"]
    folder = tmp_path / "out" / f"run_id={delta}"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{t}.{fmt}" for t in ("params", "points", "rank_points", "histograms", "definitions"))
    assert {f.table: f.rows for f in summary.files} == {"runs": 1, "params": 1, "points": 2, "rank_points": 4,
                                                        "histograms": 1, "definitions": 2}
    ranks = read_back(folder / f"rank_points.{fmt}", fmt).to_pylist()
    got = [(r["rank"], r["node"], r["metric"], r["step"], r["value"]) for r in ranks]
    assert [g[:4] for g in got] == [p[:4] for p in sorted(RANK_POINTS, key=lambda p: (p[3], p[0]))]
    assert same_floats([g[4] for g in got], [p[4] for p in sorted(RANK_POINTS, key=lambda p: (p[3], p[0]))])
    [histogram] = read_back(folder / f"histograms.{fmt}", fmt).to_pylist()
    assert {k: histogram[k] for k in HISTOGRAM} == HISTOGRAM
    definitions = read_back(folder / f"definitions.{fmt}", fmt).to_pylist()
    assert [(d["metric"], d["goal"], d["summary"], d["step_metric"]) for d in definitions] == [
        ("acc", "max", [], "epoch"), ("loss", "min", ["min", "last"], "")]


def test_refusals_name_what_is_wrong_and_write_nothing(dsn: str, db: tuple[Any, str], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    client, database = db
    out = tmp_path / "out"
    with pytest.raises(FilterError, match=r"filter 'params\.lr <<< 1'"):
        export_module.export(client, database, out, where="params.lr <<< 1")
    with pytest.raises(ValueError, match=r"format: expected one of parquet, csv, jsonl, got 'xlsx'"):
        export_module.export(client, database, out, fmt="xlsx")
    with pytest.raises(ValueError, match=r"partition_by: expected run"):
        export_module.export(client, database, out, partition_by="metric")
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, _, stderr = cli(capsys, "export", "--out", str(out), "--clickhouse", dsn)
    assert code == 2 and "exists and is not empty; pass --overwrite" in stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    code, _, stderr = cli(capsys, "export", "--out", str(out), "--overwrite", "--project", "audio",
                          "--clickhouse", dsn)
    assert code == 0, stderr
    code, _, stderr = cli(capsys, "export", "--out", str(out), "--overwrite", "--project", "vision",
                          "--partition-by", "run", "--clickhouse", dsn)
    assert code == 0, stderr
    ids = run_ids(db)
    assert (out / "mine.txt").read_text() == "keep me"  # never ours to remove
    assert not (out / "points.parquet").exists()  # the earlier export's files were replaced, not mixed in
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(
        f"run_id={ids[n]}" for n in ("alpha", "beta"))


def test_progress_goes_to_stderr_only_when_asked(dsn: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    quiet = cli(capsys, "export", "--project", "vision", "--out", str(tmp_path / "a"), "--clickhouse", dsn)
    shown = cli(capsys, "export", "--project", "vision", "--out", str(tmp_path / "b"), "--progress",
                "--clickhouse", dsn)
    assert quiet[0] == shown[0] == 0
    assert quiet[2] == ""
    assert "runstream export" in shown[2] and "rows" in shown[2]
    assert quiet[1].replace(str((tmp_path / "a").resolve()), "OUT") == shown[1].replace(
        str((tmp_path / "b").resolve()), "OUT")  # stdout is the same with and without progress


def test_a_two_million_point_run_is_written_block_by_block(clickhouse_base: str, tmp_path: Path) -> None:
    dsn = fresh_database_dsn(clickhouse_base, "export_big")
    spool = tmp_path / "spool"
    with runstream.init("big", "huge", params={"lr": 0.1}, spool=str(spool), sample_interval=0) as run:
        run.log({"warmup": 1.0}, step=0)
        run_id = run.run_id
    ingest_spool(spool, ClickHouseSink(dsn))
    client, database = connect(dsn, create_database=False)
    # 2M more points of the run, as the consumer would store them (one INSERT through ClickHouse itself:
    # logging them one by one through the SDK would take most of this test's time for nothing it tests)
    client.command(f"INSERT INTO {database}.metric_points (run_id, metric, step, value, time, attempt, project) "
                   f"SELECT '{run_id}', 'loss', number, if(number % 100000 = 7, nan, number / 3), "
                   f"toDateTime64(1700000000, 6, 'UTC') + toIntervalMicrosecond(number), 1, 'big' "
                   f"FROM numbers({BIG_POINTS})")
    seen: list[int] = []
    summary = export_module.export(client, database, tmp_path / "out", project="big",
                                   on_batch=lambda table, batch: seen.append(batch.num_rows)
                                   if table == "points" else None)
    client.close()
    table = pq.read_table(tmp_path / "out" / "points.parquet")
    assert table.num_rows == sum(seen) == BIG_POINTS + 1
    assert len(seen) >= 10 and max(seen) <= 100_000  # ClickHouse blocks, not one result
    whole = table.nbytes
    print(f"export of {table.num_rows} points: {len(seen)} blocks, peak Arrow memory {summary.peak_arrow_bytes} B, "
          f"the whole table {whole} B")
    assert summary.peak_arrow_bytes < whole / 3, (summary.peak_arrow_bytes, whole)
    loss = table.filter(pa.compute.equal(table.column("metric"), "loss"))
    steps = np.arange(BIG_POINTS)
    want = steps / 3
    want[steps % 100_000 == 7] = np.nan
    assert np.array_equal(loss.column("step").to_numpy(), steps)
    assert np.array_equal(loss.column("value").to_numpy(), want, equal_nan=True)
    assert math.isclose(float(np.nansum(loss.column("value").to_numpy())), float(np.nansum(want)), rel_tol=0)
    assert pq.ParquetFile(tmp_path / "out" / "points.parquet").metadata.num_row_groups >= 2
