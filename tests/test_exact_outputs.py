"""Every output format gives back exactly what was logged: a seeded random workload, parsed back.

The workload holds what breaks formatting: unicode and very long names, NaN, ±Inf, -0.0, the
smallest denormal, 1e308, values a 4-digit display would round, bools, None, ints and text params,
out-of-order and gapped steps, failed runs and a run whose process died (never finished). Each
CSV and JSON answer of `runs`, `compare`, `reproduce` and `query` is parsed back (Python's csv +
float(); strict JSON with the documented "NaN"/"Infinity"/"-Infinity" strings) and compared bit for
bit (repr) with the values logged; the Client's pandas and Arrow answers keep NaN apart from null.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from databases import fresh_database_dsn
from logged_runs import log_run

import runstream
from runstream.analysis.reproduce import nest
from runstream.cli import main
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.output import ROUNDED_NOTE

pytestmark = pytest.mark.integration

NAN, INF = float("nan"), float("inf")
SPECIAL = [NAN, INF, -INF, -0.0, 0.0, 5e-324, 1e308, -1e308, 2.2250738585072014e-308, 0.1 + 0.2,
           0.6148955013383612, 123456789.123456789, -1.5e-7]
PROJECT = "exact-Ω"
LONG = "very_long_metric_" + "λ" * 200
METRICS = ["loss", "损失", "точность/val", LONG, "acc"]
UNFINISHED = 2  # this many runs die without finishing


@dataclass
class Spec:
    name: str
    params: dict[str, Any]
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    status: str | None = "ok"  # None: the process died, the run never finished

    def final(self, metric: str) -> float | None:
        points = self.metrics.get(metric)
        return max(points)[1] if points else None


def _value(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(SPECIAL)
    if roll < 0.6:
        return rng.uniform(-1, 1) * 10 ** rng.randint(-12, 12)
    return rng.random()


def workload(seed: int = 20261202) -> list[Spec]:
    rng = random.Random(seed)
    specs = []
    for i in range(9):
        name = rng.choice(["run", "прогон", "実行", "run,with \"quotes\""]) + f"-{i}"
        params: dict[str, Any] = {
            "lr": rng.random() ** 3,
            "batch_size": rng.choice([16, 32, 64, -3, 2**62]),
            "amp": rng.random() < 0.5,
            "optimizer.name": rng.choice(["adamw", "sgd", "Адам", "", "a,b \"c\"\nd"]),
            "特殊": rng.choice(SPECIAL),
            "p" * 240: rng.choice(SPECIAL),
            "big": 2**70,
            "whole": 3.0,
        }
        if i % 3 == 0:
            params["maybe"] = None  # logged as None
        elif i % 3 == 1:
            params["maybe"] = rng.choice([1.5, "x"])
        # i % 3 == 2: never logged
        spec = Spec(name, params, status=rng.choice(["ok", "failed"]))
        for metric in METRICS:
            if rng.random() < 0.2 and i > 1:
                continue  # this run never logged this metric
            steps = rng.sample(range(0, 400), rng.randint(1, 40))  # gapped, and logged in this (random) order
            spec.metrics[metric] = [(step, _value(rng)) for step in steps]
        specs.append(spec)
    # Finals that must survive: NaN at the last step of run 0, never logged by run 2 (never-logged is
    # null, NaN is NaN), -0.0, the smallest denormal and ±Inf as finals.
    specs[0].metrics["acc"].append((10_000, NAN))
    specs[1].metrics["acc"].append((10_000, -0.0))
    specs[1].metrics["loss"].append((10_000, 5e-324))
    specs[2].metrics.pop("acc", None)
    specs[2].metrics["loss"].append((10_000, INF))
    specs[3].metrics[LONG] = [*specs[3].metrics.get(LONG, []), (10_000, -INF)]
    specs[4].params["batch_size"] = 2**62
    for spec in specs[-UNFINISHED:]:
        spec.status = None
    return specs


SPECS = workload()
BY_NAME = {spec.name: spec for spec in SPECS}

def log_workload(spool: Path) -> None:
    for spec in SPECS:
        log_run(spool, PROJECT, spec.name, spec.params, spec.metrics, spec.status)


@pytest.fixture(scope="module")
def dsn(clickhouse_base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    dsn = fresh_database_dsn(clickhouse_base)
    spool = tmp_path_factory.mktemp("exact-spool")
    log_workload(spool)
    sink = ClickHouseSink(dsn)
    report = ingest_spool(spool, sink)
    assert not report.rejected, report.rejected
    assert report.points == sum(len(p) for s in SPECS for p in s.metrics.values()), "every point stored"
    return dsn


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- parsing back ------------------------------------------------------------------------------

def _no_bare_constants(name: str) -> Any:
    raise AssertionError(f"bare {name} in JSON output: not RFC 8259")


def strict_json(text: str) -> Any:
    """Parse as RFC 8259 JSON: Python's json would otherwise accept NaN/Infinity silently."""
    return json.loads(text, parse_constant=_no_bare_constants)


JSON_CONSTANTS = {"NaN": NAN, "Infinity": INF, "-Infinity": -INF}


def same(got: Any, want: Any) -> bool:
    """Equal, with the type, NaN equal to NaN and -0.0 apart from 0.0 (repr tells them apart)."""
    return type(got) is type(want) and repr(got) == repr(want)


def from_json(value: Any, want: Any) -> Any:
    """A JSON value read back as the type logged: "NaN"/"Infinity"/"-Infinity" strings for floats."""
    if isinstance(want, float) and isinstance(value, str):
        assert value in JSON_CONSTANTS, f"unexpected text {value!r} for a float"
        return JSON_CONSTANTS[value]
    if isinstance(want, float) and isinstance(value, int) and not isinstance(value, bool):
        raise AssertionError(f"float {want!r} came back as the int {value}")
    return value


def from_csv(cell: str, want: Any) -> Any:
    """A CSV cell read back as the type logged, the way docs/sql.md says to."""
    if want is None:
        assert cell == "", f"None must be an empty field, got {cell!r}"
        return None
    if isinstance(want, bool):
        assert cell in ("true", "false"), cell
        return cell == "true"
    if isinstance(want, int):
        return int(cell)
    if isinstance(want, float):
        return float(cell)
    return cell


def logged_param(value: Any) -> Any:
    """A param as the database gives it back: ints beyond an Avro long were logged as text."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return str(value)
    return value


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# --- runs --------------------------------------------------------------------------------------

def test_runs_csv_and_json_give_back_every_logged_value(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out_csv, _ = cli(capsys, "runs", "--project", PROJECT, "--format", "csv", "--clickhouse", dsn)
    assert code == 0
    code, out_json, _ = cli(capsys, "runs", "--project", PROJECT, "--format", "json", "--clickhouse", dsn)
    assert code == 0
    csv_rows = {row["name"]: row for row in read_csv(out_csv)}
    json_rows = {row["name"]: row for row in strict_json(out_json)}
    assert set(csv_rows) == set(json_rows) == set(BY_NAME)
    checked = 0
    for name, spec in BY_NAME.items():
        for key in {k for s in SPECS for k in s.params}:
            want = logged_param(spec.params.get(key))  # absent reads as None, as documented
            assert same(from_csv(csv_rows[name][f"params.{key}"], want), want if want is not None else None), \
                (name, key, csv_rows[name][f"params.{key}"], want)
            assert same(from_json(json_rows[name][f"params.{key}"], want), want), (name, key, want)
            checked += 1
        for metric in METRICS:
            want = spec.final(metric)
            assert same(from_csv(csv_rows[name][f"metrics.{metric}"], want), want), (name, metric, want)
            assert same(from_json(json_rows[name][f"metrics.{metric}"], want), want), (name, metric, want)
            checked += 1
        assert json_rows[name]["status"] == (spec.status or "running")
        assert csv_rows[name]["status"] == (spec.status or "running")
    assert checked == len(SPECS) * (len({k for s in SPECS for k in s.params}) + len(METRICS))


def test_table_rounds_and_says_so(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "runs", "--project", PROJECT, "--clickhouse", dsn)
    assert code == 0
    assert "0.6148955013383612" not in out and out.splitlines()[-1] == f"({ROUNDED_NOTE})"


# --- compare -----------------------------------------------------------------------------------

def _differs(values: list[Any]) -> str:
    return "*" if len({repr(v) for v in values}) > 1 else ""


def test_compare_csv_and_json_give_back_every_logged_value(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    names = list(BY_NAME)
    _, out_csv, _ = cli(capsys, "compare", *names, "--format", "csv", "--clickhouse", dsn)
    _, out_json, _ = cli(capsys, "compare", *names, "--format", "json", "--clickhouse", dsn)
    csv_rows = {row["field"]: row for row in read_csv(out_csv)}
    json_rows = {row["field"]: row for row in strict_json(out_json)}
    for key in {k for s in SPECS for k in s.params}:
        wants = [logged_param(BY_NAME[n].params.get(key)) for n in names]
        for name, want in zip(names, wants, strict=True):
            assert same(from_csv(csv_rows[f"params.{key}"][name], want), want), (name, key, want)
            assert same(from_json(json_rows[f"params.{key}"][name], want), want), (name, key, want)
        assert json_rows[f"params.{key}"]["differs"] == csv_rows[f"params.{key}"]["differs"] == _differs(wants)
    for metric in METRICS:
        for name in names:
            want = BY_NAME[name].final(metric)
            assert same(from_csv(csv_rows[f"{metric} final"][name], want), want), (name, metric, want)
            assert same(from_json(json_rows[f"{metric} final"][name], want), want), (name, metric, want)


def test_compare_treats_none_and_absent_params_alike(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    logged_none = next(s.name for s in SPECS if "maybe" in s.params and s.params["maybe"] is None)
    absent = next(s.name for s in SPECS if "maybe" not in s.params)
    _, out, _ = cli(capsys, "compare", logged_none, absent, "--format", "json", "--clickhouse", dsn)
    row = next(r for r in strict_json(out) if r["field"] == "params.maybe")
    assert row[logged_none] is None and row[absent] is None and row["differs"] == ""
    _, table, _ = cli(capsys, "compare", logged_none, absent, "--clickhouse", dsn)
    line = next(t for t in table.splitlines() if t.startswith("params.maybe"))
    assert line.split() == ["params.maybe"], "None and absent both show as an empty cell, unmarked"


# --- reproduce ---------------------------------------------------------------------------------

def test_reproduce_json_and_config_out_are_strict_and_exact(dsn: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    for spec in SPECS:
        config = tmp_path / f"{uuid.uuid4().hex}.json"
        code, out, _ = cli(capsys, "reproduce", spec.name, "--format", "json", "--config-out", str(config),
                           "--clickhouse", dsn)
        assert code == 0
        want = nest({k: logged_param(v) for k, v in spec.params.items()})
        for shown in (strict_json(out)["config"], strict_json(config.read_text(encoding="utf-8"))):
            flat_got, flat_want = _flatten(shown), _flatten(want)
            assert flat_got.keys() == flat_want.keys()
            for key, value in flat_want.items():
                assert same(from_json(flat_got[key], value), value), (spec.name, key, value, flat_got[key])
        _, out_csv, _ = cli(capsys, "reproduce", spec.name, "--format", "csv", "--clickhouse", dsn)
        row = next(r for r in read_csv(out_csv) if r["field"] == "config")
        flat_csv = _flatten(strict_json(row["value"]))
        assert all(same(from_json(flat_csv[k], v), v) for k, v in _flatten(want).items())


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}\x00"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --- query -------------------------------------------------------------------------------------

FINALS_SQL = ("SELECT r.run_name AS name, m.metric AS metric, m.final AS final FROM runs AS r FINAL "
              "JOIN (SELECT run_id, metric, argMax(value, step) AS final FROM metric_points FINAL "
              "GROUP BY run_id, metric) AS m USING run_id ORDER BY name, metric")


def test_query_csv_and_json_give_back_every_logged_value(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    wants = {(s.name, m): s.final(m) for s in SPECS for m in s.metrics}
    _, out_csv, _ = cli(capsys, "query", FINALS_SQL, "--format", "csv", "--clickhouse", dsn)
    _, out_json, _ = cli(capsys, "query", FINALS_SQL, "--format", "json", "--clickhouse", dsn)
    got_csv = {(r["name"], r["metric"]): float(r["final"]) for r in read_csv(out_csv)}
    got_json = {(r["name"], r["metric"]): from_json(r["final"], 0.0) for r in strict_json(out_json)}
    assert got_csv.keys() == got_json.keys() == wants.keys()
    for key, want in wants.items():
        assert same(got_csv[key], want) and same(got_json[key], want), (key, want, got_csv[key], got_json[key])
    sums_sql = "SELECT count() AS n, sum(isNaN(value)) AS nans, sum(isInfinite(value)) AS infs FROM metric_points"
    for final in ("", " FINAL"):
        _, out, _ = cli(capsys, "query", sums_sql.replace("metric_points", f"metric_points{final}"),
                        "--format", "json", "--clickhouse", dsn)
        points = [v for s in SPECS for p in s.metrics.values() for _, v in p]
        assert strict_json(out) == [{"n": len(points), "nans": sum(math.isnan(v) for v in points),
                                     "infs": sum(math.isinf(v) for v in points)}]


def test_query_sql_error_is_one_line_with_code(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "query", "SELEC 1", "--clickhouse", dsn)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("runstream query: error: ClickHouse: ") and "Code: 62" in err and "Syntax error" in err


# --- filters on non-ASCII names ----------------------------------------------------------------

def test_non_ascii_filter_name_suggests_backquotes(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "runs", "--project", PROJECT, "--where", "metrics.损失 > 0", "--clickhouse", dsn)
    # stderr is not a terminal here, so no progress is drawn: the error is the only line
    errors = err.splitlines()
    assert code == 2 and out == "" and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("runstream runs: error: filter: ") and "metrics.`损失`" in errors[0]
    code, out, _ = cli(capsys, "runs", "--project", PROJECT, "--where", "metrics.`损失` > 0", "--format", "json",
                       "--clickhouse", dsn)
    assert code == 0
    want = sorted(s.name for s in SPECS if (f := s.final("损失")) is not None and not math.isnan(f) and f > 0)
    assert sorted(row["name"] for row in strict_json(out)) == want
    helped = subprocess.run([sys.executable, "-m", "runstream.cli", "runs", "--help"], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert "backquotes" in helped and "metrics.`损失`" in helped


# --- Client: pandas and Arrow ------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(dsn: str) -> Iterator[runstream.Client]:
    yield runstream.Client(dsn)


def test_client_arrow_and_pandas_keep_nan_apart_from_null(client: runstream.Client) -> None:
    arrow = client.runs(PROJECT, output="arrow")
    frame = client.runs(PROJECT)
    names = arrow.column("name").to_pylist()
    assert names == list(frame["name"])
    for metric in METRICS:
        column = f"metrics.{metric}"
        got_arrow = dict(zip(names, arrow.column(column).to_pylist(), strict=True))
        nulls = dict(zip(names, frame[column].isna().tolist(), strict=True))
        values = dict(zip(names, frame[column].tolist(), strict=True))
        for name, spec in BY_NAME.items():
            want = spec.final(metric)
            if want is None:
                assert got_arrow[name] is None and nulls[name], (name, metric)
            else:
                assert same(got_arrow[name], want), (name, metric, got_arrow[name], want)
                assert not nulls[name] and same(float(values[name]), want), (name, metric, values[name], want)
    acc = arrow.column("metrics.acc")
    assert acc.null_count >= 1 and any(v is not None and math.isnan(v) for v in acc.to_pylist())
    for key in ("lr", "特殊", "p" * 240):
        got = dict(zip(names, arrow.column(f"params.{key}").to_pylist(), strict=True))
        assert all(same(got[n], s.params[key]) for n, s in BY_NAME.items()), key
